"""Bench sections that need the course's own code: the learner-style model, grading, the shape
explorer's reaction, the report."""
from __future__ import annotations

from pathlib import Path

from .timing import Target, at_least, at_most, fmt_seconds, median, timed

ROOT = Path(__file__).resolve().parent.parent


def learner_model(cfg=None, device="cpu"):
    """The learner-style model: the stage-6 solution's builder assembling the solutions' own
    ResNet (stage 3), FPN (stage 4) and LastLevelP6P7 (stage 5), loaded from solutions/."""
    from fpnlab.answers import learner_backbone
    from fpnlab.config import default_cfg

    return learner_backbone(cfg or default_cfg(), ROOT / "solutions")


def shapes(repeat: int) -> dict:
    """Shape checking: the learner-style model on the meta device vs a real CPU forward."""
    import torch

    from fpnlab.reference import reference_shapes
    from fpnlab.tracing import trace_model

    out = {}
    _, _, h, w = reference_shapes()["padded"]
    with torch.device("meta"):
        meta = learner_model().eval()
    cpu = learner_model().eval()
    for name, (hh, ww) in {"480x576": (h, w), "1333x1333": (1344, 1344)}.items():
        xm = torch.empty(1, 3, hh, ww, device="meta")
        xc = torch.randn(1, 3, hh, ww)
        meta_runs = timed(lambda: trace_model(meta, xm), max(repeat, 5), warmup=1)
        cpu_runs = timed(lambda: trace_model(cpu, xc), repeat, warmup=1)
        out[f"meta_{name}_s"], out[f"cpu_{name}_s"] = median(meta_runs), median(cpu_runs)
        out[f"ratio_cpu_over_meta_{name}"] = median(cpu_runs) / median(meta_runs)
        print(f"  {name}: meta {fmt_seconds(median(meta_runs))}, CPU {fmt_seconds(median(cpu_runs))}",
              flush=True)
    out["note"] = "1333x1333 is padded to 1344x1344 (size_divisible 32)"
    return out


def model(repeat: int) -> dict:
    """The learner-style model vs torchvision's BackboneWithFPN: same weights, same input, CPU."""
    import torch

    from fpnlab import oracle
    from fpnlab.reference import reference_shapes

    torch.manual_seed(0)
    mine = learner_model().eval()
    tv = oracle.randomize_frozen_bn(oracle.backbone()).eval()
    oracle.copy_weights(tv, mine)
    _, _, h, w = reference_shapes()["padded"]
    x = torch.randn(1, 3, h, w)
    with torch.inference_mode():
        a, b = list(mine(x)), list(oracle.fpn_outputs(tv(x)).values())
        max_diff = max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(a, b))

        mine_runs = []
        tv_runs = []
        for _ in range(repeat):                      # interleaved, so drift hits both alike
            mine_runs += timed(lambda: mine(x), 1, warmup=0)
            tv_runs += timed(lambda: tv(x), 1, warmup=0)
    return {"learner_s": median(mine_runs), "torchvision_s": median(tv_runs),
            "ratio": median(mine_runs) / median(tv_runs), "max_rel_diff": max_diff,
            "outputs_equal": max_diff < 1e-4, "runs": {"learner": mine_runs, "torchvision": tv_runs}}


EXPLORER_TIMINGS = ROOT / "test-artifacts" / "browser" / "explorer-timings.json"


def widgets(repeat: int) -> dict:
    """The shape explorer's reaction (issue #16), in this process: change -> updated table (a
    slider step: the observer's whole run; ``table_s`` with the model traced on the meta device
    for a new padded size, ``table_same_padded_s`` for a step that keeps it, as most steps of a
    drag do) and change -> redrawn picture (a number box: the picture thread's request to the
    Image widget set; a slider step: the same plus the settle time), at the trace's size, at
    1333x1333 and with the resize at 1333 (min_size = max_size); and the medians the browser
    test recorded in Chromium (input -> table, input -> picture), when its artifact is there."""
    import json
    import time

    from fpnlab import oracle
    from fpnlab import widgets as w
    from fpnlab.images import sample_image
    from fpnlab.reference import reference_image_size
    from fpnlab.shapes import REFERENCE

    photo = sample_image()
    big = REFERENCE.max_size
    cases = {"trace": (reference_image_size(), REFERENCE.min_size),
             f"{big}x{big}": ((big, big), REFERENCE.min_size),
             f"resized {big}x{big}": ((big, big), big)}
    n = max(repeat, 15)
    out: dict = {"settle_s": w.SETTLE_S, "runs": n}
    model = w.MetaModel(oracle.backbone)
    box = w.shape_explorer(model, image=photo)      # as the explorer notebook does
    box.settle()

    def step(value) -> float:
        t = time.perf_counter()
        box.sliders["width"].value = value          # the table: synchronous
        return time.perf_counter() - t

    for name, ((h, wd), min_size) in cases.items():
        box.controls["min_size"].value = min_size
        box.controls["height"].value = h
        box.controls["width"].value = wd
        box.settle()
        table, same, picture, slider_picture = [], [], [], []
        for i in range(n):
            value = wd - 2 - i % 2           # a new width every time, near the case's own
            model.forget()
            t = time.perf_counter()
            table.append(step(value))        # traced on the meta device
            box.settle()
            slider_picture.append(time.perf_counter() - t)     # + the settle time
            same.append(step(value + 1))     # remembered: the padded size is the same
            t = time.perf_counter()
            box.controls["width"].value = value + 2            # a box: drawn at once
            box.settle()
            picture.append(time.perf_counter() - t)
        out[name] = {"table_s": median(table), "table_same_padded_s": median(same),
                     "picture_s": median(picture), "slider_picture_s": median(slider_picture),
                     "runs": {"table": table, "table_same_padded": same, "picture": picture,
                              "slider_picture": slider_picture}}
        print(f"  {name}: table {fmt_seconds(median(table))} (same padded size "
              f"{fmt_seconds(median(same))}), picture {fmt_seconds(median(picture))} (after a "
              f"slider step, settle included: {fmt_seconds(median(slider_picture))})", flush=True)
    if EXPLORER_TIMINGS.exists():
        rec = json.loads(EXPLORER_TIMINGS.read_text())
        if rec.get("changes"):
            out["browser"] = {
                "file": str(EXPLORER_TIMINGS.relative_to(ROOT)),
                "recorded": time.strftime("%Y-%m-%d %H:%M:%S",
                                          time.localtime(EXPLORER_TIMINGS.stat().st_mtime)),
                "changes": len(rec["changes"]),
                "input_to_table_s": rec["median_input_to_table_s"],
                "input_to_picture_s": rec["median_input_to_picture_s"],
                "load_average": rec.get("load_average_before")}
            print(f"  Chromium ({out['browser']['changes']} changes, {out['browser']['recorded']}): "
                  f"input -> table {fmt_seconds(out['browser']['input_to_table_s'])}, "
                  f"input -> picture {fmt_seconds(out['browser']['input_to_picture_s'])}", flush=True)
    else:
        out["browser"] = {"skipped": f"no {EXPLORER_TIMINGS.relative_to(ROOT)}: run the browser "
                                     "test (pytest tests/test_browser.py -k shape_explorer)"}
    return out


def grading(repeat: int, class_size: int) -> dict:
    from .grading import measure
    return measure(repeat, class_size)


def targets(figures: dict) -> list:
    out = []
    fl = figures.get("floor", {}).get("median_s")
    g = figures.get("grading", {})
    if fl and g.get("course_per_student_s"):
        # The course is 7 notebooks, each graded in a kernel of its own: its floor is 7 floors.
        n = g.get("course_notebooks", 7)
        out.append(at_most(f"whole-course grading per student / ({n} x floor)",
                           g["course_per_student_s"] / (n * fl), 1.5, "x"))
    if g.get("judge_added"):
        out.append(at_most("whole course per student: with the judge / without",
                           g["judge_added"], 1.2, "x"))
    if g.get("speedup_2_workers"):
        out.append(at_least("class of one stage: 1 worker / 2 workers", g["speedup_2_workers"], 1.5, "x"))
    if g.get("ratio_1_worker_vs_nbgrader"):
        out.append(at_most("fpnlab grade, 1 worker / plain nbgrader autograde",
                           g["ratio_1_worker_vs_nbgrader"], 1.0, "x"))
    if g.get("ratio_vs_nbgrader"):
        out.append(at_most("fpnlab grade, 2 workers / plain nbgrader autograde",
                           g["ratio_vs_nbgrader"], 1.0, "x"))
    if g.get("ratio_dask_vs_workers_2"):
        out.append(at_most("class: 2-worker Dask LocalCluster / --workers 2",
                           g["ratio_dask_vs_workers_2"], 1.15, "x"))
    s = figures.get("shapes", {})
    if s.get("ratio_cpu_over_meta_480x576"):
        out.append(at_least("CPU forward / meta shape check at 480x576",
                            s["ratio_cpu_over_meta_480x576"], 20, "x"))
    if s.get("meta_1333x1333_s") is not None:
        out.append(at_most("meta shape check at 1333x1333", s["meta_1333x1333_s"], 0.2, " s"))
    wd = figures.get("widgets", {})
    for name, case in wd.items():
        if isinstance(case, dict) and "table_s" in case:
            out.append(at_most(f"explorer {name}: slider step -> table", case["table_s"], 0.05, " s"))
            out.append(at_most(f"explorer {name}: change -> picture", case["picture_s"], 0.3, " s"))
    b = wd.get("browser", {})
    if "input_to_table_s" in b:
        out.append(at_most("explorer in Chromium: input -> table (median)", b["input_to_table_s"],
                           0.05, " s"))
        out.append(at_most("explorer in Chromium: input -> picture (median)",
                           b["input_to_picture_s"], 0.3, " s"))
    m = figures.get("model", {})
    if m.get("ratio"):
        out.append(at_most("learner-style model / torchvision BackboneWithFPN (CPU)", m["ratio"], 1.10, "x"))
        out.append(Target("learner-style outputs equal torchvision's", m["max_rel_diff"], "< 1e-4",
                          bool(m["outputs_equal"])))
    return out


def report(figures: dict, targs: list) -> str:
    lines = ["", "figure                                              value"]
    fl = figures.get("floor", {})
    if fl:
        lines.append(f"floor: kernel start + import torch, torchvision   {fmt_seconds(fl['median_s'])}")
    for name, nb in figures.get("notebooks", {}).items():
        lines.append(f"solution notebook {name:<33}{fmt_seconds(nb['median_s'])}")
    g = figures.get("grading", {})
    for key, value in g.items():
        if isinstance(value, float):
            lines.append(f"grading {key:<43} {value:.3f}")
    if fl and g.get("course_per_student_s"):
        multiples = f"{g['course_per_student_s'] / fl['median_s']:.1f}x (warm)"
        if g.get("course_cold_kernels_s"):
            multiples += f", {g['course_cold_kernels_s'] / fl['median_s']:.1f}x (cold kernels)"
        lines.append(f"grading whole course / one floor                   {multiples}")
    if g.get("paper_1000x9_worker_h"):
        w = g["paper_1000x9_worker_h"]
        lines.append(f"on paper: 1,000 learners x 9 lessons, on N workers  {w:.1f} h / N "
                     f"(N=16: {w / 16:.2f} h, N=64: {w / 64:.2f} h)")
    for key, value in figures.get("shapes", {}).items():
        if isinstance(value, float):
            lines.append(f"shapes {key:<44} {fmt_seconds(value) if key.endswith('_s') else f'{value:.1f}x'}")
    m = figures.get("model", {})
    if m:
        lines.append(f"learner-style model forward (CPU, 480x576)        {fmt_seconds(m['learner_s'])}")
        lines.append(f"torchvision BackboneWithFPN forward                {fmt_seconds(m['torchvision_s'])}")
        lines.append(f"ratio learner / torchvision                        {m['ratio']:.3f}")
    for name, case in figures.get("widgets", {}).items():
        if isinstance(case, dict) and "table_s" in case:
            lines.append(f"explorer {name + ':':<42}table {fmt_seconds(case['table_s'])} "
                         f"({fmt_seconds(case['table_same_padded_s'])}), picture "
                         f"{fmt_seconds(case['picture_s'])} (slider: "
                         f"{fmt_seconds(case['slider_picture_s'])})")
    b = figures.get("widgets", {}).get("browser", {})
    if "input_to_table_s" in b:
        lines.append(f"explorer in Chromium, median of {b['changes']} changes:     table "
                     f"{fmt_seconds(b['input_to_table_s'])}, picture "
                     f"{fmt_seconds(b['input_to_picture_s'])}")
    elif "skipped" in b:
        lines.append(f"explorer in Chromium: skipped ({b['skipped']})")
    c = figures.get("cuda", {})
    if "skipped" in c:
        lines.append(f"CUDA: skipped ({c['skipped']})")
    elif c:
        for key, value in c["latency_s"].items():
            lines.append(f"CUDA {key:<45} {fmt_seconds(value)}  peak {c['peak_mem_mb'][key]:.0f} MB")
    lines += ["", "target                                              value      target     met"]
    for t in targs:
        lines.append(f"{t.name:<52}{t.value:<11.3f}{t.target:<11}{'yes' if t.met else 'NO'}")
    return "\n".join(lines)
