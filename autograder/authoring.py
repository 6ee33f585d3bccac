"""Build nbgrader cells with the right metadata, for maintainers writing solutions/ notebooks.

    nb = notebook([
        setup_cell(),
        md("## Exercise 1 ..."),
        solution("def resized_size(...):\\n    ### BEGIN SOLUTION\\n    ...\\n    ### END SOLUTION", "resize"),
        tests("check(...)\\n### BEGIN HIDDEN TESTS\\n...\\n### END HIDDEN TESTS", "resize-tests", points=2),
    ])
    nb.cells.append(summary_cell(nb))      # the last cell: the learner's points so far
    write(nb, "solutions/01-preprocessing/01-preprocessing.ipynb")

The .ipynb files under solutions/ are the source of truth; this module only saves typing.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

import fpnlab

KERNELSPEC = {"name": "fpnlab", "display_name": "Python 3 (fpnlab)", "language": "python"}

# Where fpnlab is missing, a hosted runtime (Colab) installs this release of it; anywhere else
# the cell says how to set up. FPNLAB_INSTALL replaces the pip spec (tests: a local wheel).
SETUP_SOURCE = f"""\
# Setup (locked): the course helpers, the device (CUDA when present) and a fixed seed.
try:
    import fpnlab
except ModuleNotFoundError:     # fpnlab is missing: a hosted runtime (Colab) installs this release
    import importlib, os, subprocess, sys
    release = "fpnlab=={fpnlab.__version__}"
    if not ("google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ
            or "COLAB_GPU" in os.environ):
        raise ModuleNotFoundError("fpnlab is not installed for this kernel: run `make lab` in the "
                                  f"course folder, or `pip install {{release}}`") from None
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    os.environ.get("FPNLAB_INSTALL", release)], check=True)
    importlib.invalidate_caches()
    import fpnlab
from fpnlab.device import notebook_setup
DEVICE = notebook_setup(seed=0)
fpnlab.judge.notebook_messages()   # an exercise not answered yet says so in one line"""

SUMMARY_HEAD = "# Your points so far (locked): the visible tests you ran in this kernel."
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?",
                    re.S | re.M)


def _meta(grade_id: str, *, grade=False, solution=False, locked=False, points=None, task=False):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": task}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def md(text: str, grade_id: str | None = None):
    """A markdown cell; locked when it has a grade_id."""
    cell = nbformat.v4.new_markdown_cell(text.strip("\n"))
    if grade_id:
        cell.metadata.update(_meta(grade_id, locked=True))
    return cell


def code(source: str):
    """A plain code cell the learner may edit and run (no grading)."""
    return nbformat.v4.new_code_cell(source.strip("\n"))


def locked(source: str, grade_id: str):
    """A read-only code cell (given code, demonstrations)."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    cell.metadata.update(_meta(grade_id, locked=True))
    return cell


def setup_cell():
    return locked(SETUP_SOURCE, "setup")


def visible_tests(nb) -> list[tuple[str, float]]:
    """``[(grade_id, points)]`` of the test cells a learner runs: graded cells with a
    ``run_test`` call outside their hidden region, in notebook order (nbgrader metadata)."""
    out = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("grade") and "run_test(" in HIDDEN.sub("", cell.source):
            out.append((meta["grade_id"], float(meta.get("points", 0) or 0)))
    return out


def summary_cell(nb):
    """A lesson's last cell: ``fpnlab.judge.summary`` with each visible test cell's grade id and
    points, read from ``nb``'s metadata (tests/test_messages.py checks it stays so)."""
    head = "fpnlab.judge.summary({"
    items = [f"{json.dumps(gid)}: {points:g}" for gid, points in visible_tests(nb)]
    lines = [head]
    for i, item in enumerate(items):
        item += "})" if i == len(items) - 1 else ","
        if len(lines[-1]) + 1 + len(item) > 96:
            lines[-1] = lines[-1].rstrip()
            lines.append(" " * len(head))
        lines[-1] += item if lines[-1].endswith(("{", " ")) else " " + item
    return locked("\n".join([SUMMARY_HEAD] + lines), "summary")


def solution(source: str, grade_id: str):
    """An autograded-answer cell: the ### BEGIN/END SOLUTION region goes inside the body."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    cell.metadata.update(_meta(grade_id, solution=True))
    return cell


def tests(source: str, grade_id: str, points: int):
    """A locked, autograded test cell worth ``points``."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    cell.metadata.update(_meta(grade_id, grade=True, locked=True, points=points))
    return cell


def notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """No outputs, no execution counts, no widget state: what solutions/ and lessons/ hold."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def write(nb: nbformat.NotebookNode, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.validate(nb)
    nbformat.write(strip(nb), str(path))
