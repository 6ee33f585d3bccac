"""A real nbgrader round trip in a scratch course directory: generate, submit, autograde, judge,
score. As in ``fpnlab grade``, the kernel only hands its results over and the trusted judge
(``autograder/judge.py``) decides every test cell's points.

The tests use it to prove that each assignment grades both ways: the solution earns every point,
the unmodified release earns none, and a partly wrong submission loses exactly its wrong part.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping

import nbformat

from . import judge as judging
from .release import ROOT, nbgrader


@dataclass
class Result:
    score: float
    max_score: float
    cells: Dict[str, float]      # grade_id -> points earned (autograded test cells)


class Course:
    """A scratch nbgrader course holding one copy of solutions/ and its gradebook."""

    def __init__(self, path: Path, root: Path = ROOT):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "solutions").exists():
            shutil.copytree(root / "solutions", self.path / "solutions",
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
            for path in (self.path / "solutions").glob("*/*.ipynb"):     # the grader's copy
                nbformat.write(judging.inject(nbformat.read(str(path), as_version=4)), str(path))
        self._generated: set[str] = set()
        self._judge: judging.Client | None = None

    def generate(self, assignment: str) -> Path:
        """Generate the release (and gradebook entry) of ``assignment``; returns its folder."""
        if assignment not in self._generated:
            nbgrader(["generate_assignment", assignment, "--force"], self.path)
            self._generated.add(assignment)
        return self.path / "lessons" / assignment

    def notebook_name(self, assignment: str) -> str:
        return next((self.path / "solutions" / assignment).glob("*.ipynb")).name

    def solution(self, assignment: str) -> nbformat.NotebookNode:
        return nbformat.read(str(self.path / "solutions" / assignment / self.notebook_name(assignment)),
                             as_version=4)

    def release(self, assignment: str) -> nbformat.NotebookNode:
        folder = self.generate(assignment)
        return nbformat.read(str(folder / self.notebook_name(assignment)), as_version=4)

    def autograde(self, assignment: str, submissions: Mapping[str, nbformat.NotebookNode]
                  ) -> Dict[str, Result]:
        """Submit each student's notebook, autograde them all, return their results."""
        self.generate(assignment)
        name = self.notebook_name(assignment)
        for student, nb in submissions.items():
            folder = self.path / "submitted" / student / assignment
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            nbformat.write(nb, str(folder / name))
        # nbgrader's --student is one id or a glob, not a list: grade every submission of this
        # assignment in one run (a list "a,b" matches no folder).
        nbgrader(["autograde", assignment, "--force", "--create", "--student=*"], self.path)
        if self._judge is None:
            self._judge = judging.Client()
        source = self.path / "solutions" / assignment / name
        self.verdicts: Dict[str, list] = {}
        for student in submissions:           # what the judge said of each test cell
            _, self.verdicts[student] = judging.apply(self.path, assignment, student, name, source,
                                                      self._judge)
        return {s: self.score(assignment, s) for s in submissions}

    def score(self, assignment: str, student: str) -> Result:
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.path / 'gradebook.db'}") as gb:
            sub = gb.find_submission(assignment, student)
            cells = {}
            for nb in sub.notebooks:
                for grade in nb.grades:
                    if grade.cell_type == "code" and grade.auto_score is not None:
                        cells[grade.name] = float(grade.score)
            return Result(float(sub.score), float(sub.max_score), cells)


def replace_cell(nb: nbformat.NotebookNode, grade_id: str, source: str) -> nbformat.NotebookNode:
    """A copy of ``nb`` with the cell ``grade_id`` holding ``source`` (a learner's answer)."""
    import copy

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            cell.source = source
            return nb
    raise KeyError(f"no cell with grade_id {grade_id!r}")
