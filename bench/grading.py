"""Grading figures: one student's whole course, a class of one stage with 1 and 2 workers and on
a 2-worker Dask LocalCluster, and plain `nbgrader autograde` on the same class."""
from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autograder.roundtrip import Course
from autograder.release import assignments

ROOT = Path(__file__).resolve().parent.parent
CLASS_LESSON = "01-preprocessing"


JUDGE = re.compile(r"the judge took ([0-9.]+) s")
LAST_JUDGE_S: list = []        # the judge's seconds of each _grade call, in order


def _grade(lesson: str, submissions: Path, out: Path, workers: int, cold: bool = False,
           scheduler: str = "") -> float:
    cmd = [sys.executable, "-m", "fpnlab.cli", "grade", lesson, str(submissions), "--out", str(out),
           "--workers", str(workers), "--no-progress"] + (["--cold-kernels"] if cold else []) \
        + (["--scheduler", scheduler] if scheduler else [])
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"fpnlab grade failed ({proc.returncode}): {proc.stderr[-2000:]}")
    found = JUDGE.search(proc.stdout + proc.stderr)
    LAST_JUDGE_S.append(float(found.group(1)) if found else float("nan"))
    return elapsed


def _student_folder(root: Path, student: str, lessons) -> None:
    for lesson in lessons:
        src = next((ROOT / "solutions" / lesson).glob("*.ipynb"))
        dest = root / student / lesson
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest / src.name)


def measure(repeat: int, class_size: int) -> dict:
    out: dict = {"class_lesson": CLASS_LESSON, "class_size": class_size}
    with tempfile.TemporaryDirectory(prefix="fpnlab-bench-") as tmp:
        tmp = Path(tmp)
        # 1. one student's whole course (7 notebooks, the solutions: every test runs)
        course = tmp / "course-subs"
        out["course_notebooks"] = len(assignments())
        _student_folder(course, "s000", assignments())
        # (warm and cold interleaved, so drift hits both alike; a fresh --out each time)
        runs, cold, judge = [], [], []
        for i in range(repeat):
            runs.append(_grade("all", course, tmp / f"course-out-{i}", workers=1))
            judge.append(LAST_JUDGE_S[-1])
            cold.append(_grade("all", course, tmp / f"course-cold-{i}", workers=1, cold=True))
        out["course_per_student_runs_s"], out["course_cold_runs_s"] = runs, cold
        out["course_per_student_s"] = statistics.median(runs)
        # The judge runs after each notebook, one request at a time: its share of a run is the
        # time it adds (the same runs, so the ratio is of one run's own figures).
        out["course_judge_runs_s"] = judge
        out["judge_added"] = statistics.median(r / (r - j) for r, j in zip(runs, judge))
        out["course_cold_kernels_s"] = statistics.median(cold)
        out["course_2_workers_s"] = _grade("all", course, tmp / "course-out-w2", workers=2)
        print(f"  whole course, one student: the judge took {statistics.median(judge):.1f} s of "
              f"each run ({out['judge_added']:.3f}x the run without it)", flush=True)
        print(f"  whole course, one student: {out['course_per_student_s']:.1f} s warm, "
              f"{out['course_cold_kernels_s']:.1f} s cold kernels, "
              f"{out['course_2_workers_s']:.1f} s warm with 2 workers", flush=True)

        # 2. a class of one stage, 1 and 2 workers, one run each (minutes per run)
        klass = tmp / "class-subs"
        for i in range(class_size):
            _student_folder(klass, f"s{i:03d}", [CLASS_LESSON])
        t1 = _grade(CLASS_LESSON, klass, tmp / "class-out-1", workers=1)
        print(f"  class of {class_size}, 1 worker: {t1:.1f} s", flush=True)
        t2 = _grade(CLASS_LESSON, klass, tmp / "class-out-2", workers=2)
        print(f"  class of {class_size}, 2 workers: {t2:.1f} s", flush=True)
        # The same class through Dask: `--scheduler local:2` starts a LocalCluster of 2 worker
        # processes (its start-up counts), sends the course and the notebooks as data, merges
        # each chunk's returned files: the overhead of going through Dask, next to t2.
        td = _grade(CLASS_LESSON, klass, tmp / "class-out-dask", workers=2, scheduler="local:2")
        print(f"  class of {class_size}, 2-worker Dask LocalCluster: {td:.1f} s "
              f"({td / t2:.3f}x --workers 2)", flush=True)

        # 3. plain nbgrader on the same class (no sandbox, no feedback, one process)
        plain = Course(tmp / "plain")
        plain.generate(CLASS_LESSON)
        name = plain.notebook_name(CLASS_LESSON)
        for i in range(class_size):
            dest = plain.path / "submitted" / f"s{i:03d}" / CLASS_LESSON
            dest.mkdir(parents=True)
            shutil.copy(next((ROOT / "solutions" / CLASS_LESSON).glob("*.ipynb")), dest / name)
        from autograder.release import nbgrader
        t = time.perf_counter()
        nbgrader(["autograde", CLASS_LESSON, "--force", "--create", "--student=*"], plain.path)
        tn = time.perf_counter() - t
        print(f"  class of {class_size}, plain nbgrader autograde: {tn:.1f} s", flush=True)
    out.update({"class_1_worker_s": t1, "class_2_workers_s": t2, "class_plain_nbgrader_s": tn,
                "speedup_2_workers": t1 / t2, "ratio_vs_nbgrader": t2 / tn,
                "ratio_1_worker_vs_nbgrader": t1 / tn,
                "class_dask_local_2_s": td, "ratio_dask_vs_workers_2": td / t2})
    # On paper (autograder/README.md): 1,000 learners x 9 lessons, each learner one chunk of 9
    # notebooks. One worker grades a learner's 7 lessons in course_per_student_s, so a notebook
    # costs t = course_per_student_s / 7 of a worker, and N workers take 1000 x 9 x t x r / N,
    # r the Dask overhead measured above.
    per_notebook = out["course_per_student_s"] / out["course_notebooks"]
    out["paper_per_notebook_s"] = per_notebook
    out["paper_1000x9_worker_h"] = 1000 * 9 * per_notebook * (td / t2) / 3600
    return out
