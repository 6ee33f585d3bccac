"""A one-exercise toy course for the grading tests (built in a temp dir, never committed as a lesson).

``00-toy`` asks for ``pad_to(x, d)``: zero-pad the last two dimensions at the bottom/right to a
multiple of ``d``. Two test cells: shapes (2 points) and values (1 point), each with hidden tests
on other sizes; assertions go through ``fpnlab.checks``.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict

import nbformat

from autograder import authoring as A

LESSON = "00-toy"
NOTEBOOK = f"{LESSON}.ipynb"

IMPORTS = """\
import torch
from fpnlab.checks import check_close, check_shape"""

ANSWER = '''\
def pad_to(x, d=32):
    """Zero-pad the last two dimensions (bottom/right) of ``x`` to a multiple of ``d``."""
    ### BEGIN SOLUTION
    h, w = x.shape[-2:]
    H, W = -(-h // d) * d, -(-w // d) * d
    out = x.new_zeros(*x.shape[:-2], H, W)
    out[..., :h, :w] = x
    return out
    ### END SOLUTION'''

SHAPE_TESTS = """\
check_shape(pad_to(torch.zeros(3, 438, 512)), "padded", (3, 448, 512))
### BEGIN HIDDEN TESTS
check_shape(pad_to(torch.zeros(1, 3, 50, 70), 16), "padded", (1, 3, 64, 80))
check_shape(pad_to(torch.zeros(2, 31, 33), 8), "padded", (2, 32, 40))
### END HIDDEN TESTS"""

VALUE_TESTS = """\
x = torch.rand(3, 5, 7)
y = pad_to(x, 4)
check_close(y[:, :5, :7], x, "padded")
check_close(y[:, 5:, :], torch.zeros(3, 3, 8), "padded")
### BEGIN HIDDEN TESTS
x = torch.rand(2, 9, 3)
y = pad_to(x, 8)
check_close(y[:, :9, :3], x, "padded", cause="HIDDEN-VALUE-CAUSE: the image must stay top-left")
check_close(y[:, 9:, :], torch.zeros(2, 7, 8), "padded")
### END HIDDEN TESTS"""


def source_notebook() -> nbformat.NotebookNode:
    return A.notebook([
        A.md("# Toy lesson: pad to a multiple of d"),
        A.locked(IMPORTS, "imports"),
        A.solution(ANSWER, "pad-to"),
        A.tests(SHAPE_TESTS, "pad-to-shapes", points=2),
        A.tests(VALUE_TESTS, "pad-to-values", points=1),
    ])


def make_course(root: Path) -> Path:
    """``root``/solutions/00-toy/00-toy.ipynb; returns the solutions folder."""
    A.write(source_notebook(), root / "solutions" / LESSON / NOTEBOOK)
    return root / "solutions"


def release_notebook() -> nbformat.NotebookNode:
    """What a learner receives: solution regions replaced by the stub, hidden tests removed."""
    nb = copy.deepcopy(source_notebook())
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            head = cell.source.split("    ### BEGIN SOLUTION")[0]
            cell.source = head + "    # YOUR CODE HERE\n    raise NotImplementedError()"
        if meta.get("grade"):
            cell.source = cell.source.split("### BEGIN HIDDEN TESTS")[0].rstrip()
    return nb


def with_answer(source: str, extra_before: str = "") -> nbformat.NotebookNode:
    """The release with the answer cell holding ``source`` (and an extra learner cell before it)."""
    nb = release_notebook()
    for i, cell in enumerate(nb.cells):
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "pad-to":
            cell.source = source
            if extra_before:
                nb.cells.insert(i, nbformat.v4.new_code_cell(extra_before))
            break
    return nb


SOLUTION = ANSWER.replace("    ### BEGIN SOLUTION\n", "").replace("\n    ### END SOLUTION", "")

# Correct, but written differently from the solution.
ALTERNATIVE = '''\
import math
import torch.nn.functional as F

def pad_to(x, d=32):
    h, w = x.shape[-2], x.shape[-1]
    return F.pad(x, (0, math.ceil(w / d) * d - w, 0, math.ceil(h / d) * d - h))'''

# Right shapes, wrong values (pads on the top/left).
WRONG_VALUES = '''\
import torch.nn.functional as F

def pad_to(x, d=32):
    h, w = x.shape[-2:]
    return F.pad(x, (-(-w // d) * d - w, 0, -(-h // d) * d - h, 0))'''


def write_submission(folder: Path, student: str, nb, lesson: str = LESSON,
                     name: str = NOTEBOOK) -> Path:
    path = folder / student / lesson / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, bytes):
        path.write_bytes(nb)
    elif isinstance(nb, str):
        path.write_text(nb)
    else:
        path.write_text(json.dumps(nb))
    return path


def class_of(folder: Path, students: Dict[str, object]) -> Path:
    for student, nb in students.items():
        write_submission(folder, student, nb)
    return folder
