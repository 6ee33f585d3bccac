"""The package as a stranger installs it: the wheel, in a fresh venv, with nothing of the checkout.

The fresh venv sees the course's dependencies through a ``.pth`` line naming this venv's
site-packages (a plain path line: the checkout's editable fpnlab, installed there through a
``.pth`` of its own, stays invisible), so pip installs the wheel and finds every declared
dependency satisfied without downloading torch again.
"""
from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

from autograder import grade as G
from autograder import sandbox
from fpnlab.reference import reference_image_size, reference_shapes
from grading import toy

from conftest import requires
from freshvenv import FreshVenv, build_wheel, run

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, wheel) -> Path:
    """A new venv with the wheel installed, grader extra included; returns its bin/."""
    venv = FreshVenv(tmp_path_factory.mktemp("venv"))
    assert venv.imports("fpnlab").returncode != 0, "the checkout's fpnlab leaked into the fresh venv"
    venv.pip_install(f"{wheel}[grader]")
    return venv.bin


def test_the_wheel_holds_the_released_lessons_and_no_solutions(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    released = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "lessons").glob("*/*.ipynb"))
    assert released and sorted(n.removeprefix("fpnlab/_course/") for n in names
                               if n.startswith("fpnlab/_course/lessons/")) == released
    assert not [n for n in names if "solutions" in n.split("/")]
    grading = {"autograder/grade.py", "autograder/sandbox.py", "autograder/warmkernel.py",
               "autograder/judge.py", "autograder/nbgrader_config.py",
               "autograder/grading/nbgrader_config.py"}
    assert grading <= set(names)
    assert not [n for n in names if n.startswith("fpnlab/") and
                n.rsplit("/", 1)[-1] in ("grade.py", "sandbox.py", "warmkernel.py")]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "Requires-Dist: torch" in meta and 'extra == "grader"' in meta


def test_fpnlab_shapes_and_trace_from_the_wheel(fresh, tmp_path):
    h, w = reference_image_size()
    shapes = json.loads(run([str(fresh / "fpnlab"), "shapes", "--height", str(h), "--width", str(w),
                             "--json"], cwd=tmp_path).stdout)
    assert {k: tuple(v) for k, v in shapes.items()} == {k: tuple(v) for k, v in reference_shapes().items()
                                                        if k in shapes}
    assert "P7" in shapes
    trace = run([str(fresh / "fpnlab"), "trace", "--device", "cpu", "--diff"], cwd=tmp_path)
    assert "fpnlab/" not in trace.stderr
    where = run([str(fresh / "python"), "-c", "import fpnlab, autograder; print(fpnlab.__file__, autograder.__file__)"],
                cwd=tmp_path).stdout
    assert str(ROOT) not in where and "site-packages" in where


@requires(sandbox.bwrap_available() is not None, "needs bubblewrap")
def test_fpnlab_grade_on_the_toy_course_from_the_wheel(fresh, tmp_path):
    source = toy.make_course(tmp_path / "source")
    subs = tmp_path / "subs"
    toy.write_submission(subs, "ada", toy.with_answer(toy.SOLUTION))
    toy.write_submission(subs, "bob", toy.with_answer(toy.WRONG_VALUES))
    out = tmp_path / "out"
    # The dependencies' own commands (nbgrader runs `alembic`) sit beside them, in this venv's
    # bin/, as they would sit in the fresh venv's bin/ had pip installed them there.
    env = dict(os.environ, PATH=os.pathsep.join([str(fresh), str(Path(sys.executable).parent),
                                                 os.environ.get("PATH", "")]))
    proc = run([str(fresh / "fpnlab"), "grade", toy.LESSON, str(subs), "--out", str(out),
                "--source", str(source), "--no-progress"], cwd=tmp_path, env=env)
    rows = {sid: row for (sid, _), row in G.read_grades(out / "grades.csv").items()}
    points = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"]
              for c in toy.source_notebook().cells if c.metadata.get("nbgrader", {}).get("grade")}
    assert rows["ada"].score == sum(points.values()), proc.stderr[-3000:]
    # wrong values: the value cell's points lost, the shape cell's kept
    assert rows["bob"].score == points["pad-to-shapes"], proc.stderr[-3000:]
    assert "the judge took" in proc.stdout + proc.stderr
