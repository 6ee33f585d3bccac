"""A one-exercise toy course for the grading tests (built in a temp dir, never committed as a lesson).

``00-toy`` asks for ``pad_to(x, d)``: zero-pad the last two dimensions at the bottom/right to a
multiple of ``d``. Two test cells: shapes (2 points) and values (1 point), each with hidden tests
on other sizes, written as every lesson's are: the learner's kernel computes (``outputs``), the
grader's judge decides (``judge``, through ``fpnlab.checks``; see ``fpnlab.judge``).
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
from fpnlab.checks import check_close, check_shape, check_tensor
from fpnlab.judge import run_test


def padded_shape(shape, d):
    *lead, h, w = shape
    return (*lead, -(-h // d) * d, -(-w // d) * d)


def seeded(shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))"""

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

# The learner's kernel computes (outputs); the grader's judge, with no learner code, judges.
SHAPE_TESTS = """\
def outputs(case):
    return pad_to(torch.zeros(case.shape, device="meta"), case.d)

def judge(case, got):
    check_tensor(got, "padded", padded_shape(case.shape, case.d), device="meta")

run_test(outputs, judge, [dict(shape=(3, 100, 70), d=32)])
### BEGIN HIDDEN TESTS
run_test(outputs, judge, [dict(shape=(1, 3, 50, 70), d=16), dict(shape=(2, 31, 33), d=8)], hidden=True)
### END HIDDEN TESTS"""

VALUE_TESTS = """\
def outputs(case):
    return pad_to(seeded(case.shape, case.seed), case.d)

def judge(case, got, cause=None):
    x = seeded(case.shape, case.seed)
    h, w = case.shape[-2:]
    check_shape(got, "padded", padded_shape(case.shape, case.d))
    check_close(got[..., :h, :w], x, "padded", cause=cause)
    check_close(got[..., h:, :], torch.zeros_like(got[..., h:, :]), "padded", cause=cause)
    check_close(got[..., :, w:], torch.zeros_like(got[..., :, w:]), "padded", cause=cause)

run_test(outputs, judge, [dict(shape=(3, 5, 7), d=4, seed=0)])
### BEGIN HIDDEN TESTS
def hidden_judge(case, got):
    judge(case, got, cause="HIDDEN-VALUE-CAUSE: the image must stay top-left")

run_test(outputs, hidden_judge, [dict(shape=(2, 9, 3), d=8, seed=1)], hidden=True)
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
