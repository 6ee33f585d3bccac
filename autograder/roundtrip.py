"""A real nbgrader round trip in a scratch course directory: generate, submit, autograde, judge,
score. As in ``fpnlab grade``, the kernel only hands its results over and the trusted judge
(``autograder/judge.py``) decides every test cell's points.

The tests use it to prove that each assignment grades both ways: the solution earns every point,
the unmodified release earns none, and a partly wrong submission loses exactly its wrong part.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import nbformat

from . import judge as judging
from .grade import run_nbgrader
from .release import ROOT, nbgrader, write_config


def default_workers(submissions: int) -> int:
    """Parallel nbgrader runs for a round trip: one per core (at most 4; every kernel imports
    torch, about 1 GB), never more than there are submissions. ``FPNLAB_ROUNDTRIP_WORKERS``
    overrides it."""
    wanted = os.environ.get("FPNLAB_ROUNDTRIP_WORKERS")
    n = int(wanted) if wanted else min(os.cpu_count() or 1, 4)
    return max(1, min(n, submissions))


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
        self._judges: List[judging.Client] = []

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

    def _shard(self, index: int) -> Path:
        """A copy of this course (lessons, solutions, gradebook) for one parallel nbgrader run:
        the sqlite gradebook takes one writer at a time, so each run has its own."""
        if index == 0:
            return self.path
        shard = self.path.parent / f"{self.path.name}-shard{index}"
        if shard.exists():
            shutil.rmtree(shard)
        shard.mkdir()
        for folder in ("solutions", "lessons"):
            shutil.copytree(self.path / folder, shard / folder, symlinks=True)
        shutil.copy2(self.path / "gradebook.db", shard / "gradebook.db")
        write_config(shard)
        return shard

    def autograde(self, assignment: str, submissions: Mapping[str, nbformat.NotebookNode],
                  workers: Optional[int] = None) -> Dict[str, Result]:
        """Submit each student's notebook, autograde them all, return their results.

        The submissions are split over ``workers`` nbgrader runs at once (:func:`default_workers`),
        each on its own copy of the course, one thread per kernel, and each copy's judge (a
        process of its own) scores its submissions into that copy's gradebook as soon as its
        nbgrader run ends."""
        self.generate(assignment)
        name = self.notebook_name(assignment)
        students = list(submissions)
        workers = workers or default_workers(len(students))
        groups: List[List[str]] = [students[i::workers] for i in range(workers)]
        courses = [self._shard(i) for i in range(workers)]
        self._where: Dict[str, Path] = {}
        for course, group in zip(courses, groups):
            shutil.rmtree(course / "submitted", ignore_errors=True)
            for student in group:
                folder = course / "submitted" / student / assignment
                folder.mkdir(parents=True)
                nbformat.write(submissions[student], str(folder / name))
                self._where[student] = course

        # nbgrader's --student is one id or a glob, not a list: each run grades every
        # submission of its copy (a list "a,b" matches no folder).
        def run(course: Path):
            return run_nbgrader(["autograde", assignment, "--force", "--create", "--student=*"],
                                course, check=True, one_thread=workers > 1)

        # Then the judge, one process per copy (torch imported once each), the copies at once.
        while len(self._judges) < workers:
            self._judges.append(judging.Client())
        source = self.path / "solutions" / assignment / name

        def grade_and_judge(index: int) -> Dict[str, list]:
            run(courses[index])
            return {student: judging.apply(courses[index], assignment, student, name, source,
                                           self._judges[index])[1] for student in groups[index]}

        with ThreadPoolExecutor(workers) as pool:
            judged = list(pool.map(grade_and_judge, range(workers)))
        self.verdicts: Dict[str, list] = {}       # what the judge said of each test cell
        for part in judged:
            self.verdicts.update(part)
        return {s: self.score(assignment, s) for s in students}

    def score(self, assignment: str, student: str) -> Result:
        from nbgrader.api import Gradebook

        course = getattr(self, "_where", {}).get(student, self.path)
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
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
