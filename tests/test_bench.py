"""`make bench`'s arithmetic: which targets a set of figures meets (both sides), and the report."""
from bench import sections
from bench.timing import median, timed


def _figures(course_s, speedup, meta_s):
    return {
        "floor": {"median_s": 3.0},
        "notebooks": {f"0{i}": {"median_s": 4.0} for i in range(1, 8)},
        "grading": {"course_notebooks": 7, "course_per_student_s": course_s,
                    "course_cold_kernels_s": 50.0,
                    "speedup_2_workers": speedup, "ratio_vs_nbgrader": 0.7,
                    "ratio_1_worker_vs_nbgrader": 1.2},
        "shapes": {"ratio_cpu_over_meta_480x576": 0.5 / meta_s, "meta_1333x1333_s": meta_s},
        "model": {"learner_s": 0.5, "torchvision_s": 0.49, "ratio": 0.5 / 0.49,
                  "max_rel_diff": 0.0, "outputs_equal": True},
    }


def _met(figures):
    return {t.name: t.met for t in sections.targets(figures)}


def test_targets_met_and_missed():
    good = _met(_figures(course_s=30.0, speedup=1.8, meta_s=0.005))
    bad = _met(_figures(course_s=32.0, speedup=1.2, meta_s=0.3))
    course = "whole-course grading per student / (7 x floor)"     # 30 s <= 1.5 * 7 * 3 s
    assert good[course] and not _met(_figures(course_s=40.0, speedup=1.8, meta_s=0.005))[course]
    assert good["class of one stage: 1 worker / 2 workers"]
    assert not bad["class of one stage: 1 worker / 2 workers"]
    assert good["CPU forward / meta shape check at 480x576"] and good["meta shape check at 1333x1333"]
    assert not bad["CPU forward / meta shape check at 480x576"]
    assert not bad["meta shape check at 1333x1333"]
    assert good["fpnlab grade, 2 workers / plain nbgrader autograde"]
    assert not good["fpnlab grade, 1 worker / plain nbgrader autograde"]
    assert good["learner-style model / torchvision BackboneWithFPN (CPU)"]


def test_report_lists_every_target_and_the_single_floor_multiple():
    figures = _figures(course_s=30.0, speedup=1.8, meta_s=0.005)
    text = sections.report(figures, sections.targets(figures))
    assert "10.0x (warm)" in text and "16.7x (cold kernels)" in text
    for t in sections.targets(figures):
        assert t.name in text
    assert text.count(" NO") == 1 and text.count("yes") == len(sections.targets(figures)) - 1


def test_timed_and_median():
    calls = []
    runs = timed(lambda: calls.append(1), repeat=3, warmup=2)
    assert len(runs) == 3 and len(calls) == 5 and all(r >= 0 for r in runs)
    assert median([3.0, 1.0, 2.0]) == 2.0
