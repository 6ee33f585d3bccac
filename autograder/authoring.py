"""Build nbgrader cells with the right metadata, for maintainers writing solutions/ notebooks.

    nb = notebook([
        setup_cell(),
        md("## Exercise 1 ..."),
        solution("def resized_size(...):\\n    ### BEGIN SOLUTION\\n    ...\\n    ### END SOLUTION", "resize"),
        tests("check(...)\\n### BEGIN HIDDEN TESTS\\n...\\n### END HIDDEN TESTS", "resize-tests", points=2),
    ])
    write(nb, "solutions/01-preprocessing/01-preprocessing.ipynb")

The .ipynb files under solutions/ are the source of truth; this module only saves typing.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

KERNELSPEC = {"name": "fpnlab", "display_name": "Python 3 (fpnlab)", "language": "python"}

SETUP_SOURCE = """\
# Setup (locked): the course helpers, the device (CUDA when present) and a fixed seed.
import fpnlab
from fpnlab.device import notebook_setup
DEVICE = notebook_setup(seed=0)"""


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
