"""Shared fixtures: one scratch nbgrader course per test session, and the both-ways grading check."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests never download: stage 9's weights come from the cache or not at all (the notebooks it
# runs and the kernels nbgrader starts inherit this); tests/test_detector.py builds checkpoints.
os.environ.setdefault("FPNLAB_OFFLINE", "1")

from autograder.roundtrip import Course, replace_cell  # noqa: E402


@pytest.fixture(scope="session")
def course(tmp_path_factory) -> Course:
    """A scratch nbgrader course with a copy of solutions/ and its own gradebook."""
    return Course(tmp_path_factory.mktemp("course"))


@dataclass
class Mistake:
    """A learner's wrong answer: ``cells`` maps answer-cell grade_id -> the wrong source;
    ``loses`` names the test cells (grade_ids) that must score 0 while every other keeps its points."""

    name: str
    cells: Dict[str, str]
    loses: Sequence[str]


def answer(course: Course, assignment: str, grade_id: str) -> str:
    """The solution's source of one answer cell."""
    nb = course.solution(assignment)
    return next(c.source for c in nb.cells
                if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def variant(source: str, old: str, new: str) -> str:
    """The solution with one learner's mistake; fails loudly if the solution no longer has ``old``."""
    assert old in source, f"the solution no longer contains {old!r}"
    return source.replace(old, new)


def in_ci() -> bool:
    """CI=true (or 1, yes): a test that needs a tool CI has fails there instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


IN_CI = in_ci()


# ----------------------------------------------------------------------------- where time goes

_SECONDS: Dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    """Every phase's time (setup, call, teardown: fixtures count), by test file."""
    path = report.nodeid.split("::")[0]
    _SECONDS[path] = _SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not _SECONDS or not terminalreporter.config.getoption("durations", None):
        return
    folders: Dict[str, float] = {}
    for path, seconds in _SECONDS.items():
        folder = str(Path(path).parent)
        folders[folder] = folders.get(folder, 0.0) + seconds
    tr = terminalreporter
    tr.section("time per test folder and file")
    for folder, seconds in sorted(folders.items(), key=lambda kv: -kv[1]):
        tr.write_line(f"{seconds:8.1f} s  {folder}/")
        for path, s in sorted(((p, s) for p, s in _SECONDS.items()
                               if str(Path(p).parent) == folder), key=lambda kv: -kv[1]):
            tr.write_line(f"{s:8.1f} s      {Path(path).name}")
    tr.write_line(f"{sum(_SECONDS.values()):8.1f} s  in all (test phases, not collection)")


def requires(available: bool, reason: str):
    """Skip on a workstation that lacks a tool; in CI (CI=true) run anyway, so that a missing
    install step fails loudly instead of passing as a skip."""
    if available or IN_CI:
        return pytest.mark.needs(reason)          # a label only: the test runs
    return pytest.mark.skip(reason=reason)


PACK = 3      # mistakes graded in one submission at most (see pack)


def pack(mistakes: Iterable[Mistake], size: int = PACK) -> list:
    """The mistakes as submissions: up to ``size`` mistakes share one notebook when they change
    different answer cells and lose different, non-empty sets of test cells, so the submission
    must lose exactly the union (what one mistake loses is then still told apart from what
    another loses). A mistake that must lose nothing (a right answer written another way) is
    graded alone. Each submission costs a kernel and a whole notebook: this halves a round
    trip."""
    packs: list = []
    for m in mistakes:
        for group in packs:
            if (len(group) < size and m.loses and all(
                    g.loses and not set(g.cells) & set(m.cells) and not set(g.loses) & set(m.loses)
                    for g in group)):
                group.append(m)
                break
        else:
            packs.append([m])
    return [group[0] if len(group) == 1 else
            Mistake("+".join(g.name for g in group),
                    {k: v for g in group for k, v in g.cells.items()},
                    [k for g in group for k in g.loses]) for group in packs]


def grade_both_ways(course: Course, assignment: str, mistakes: Iterable[Mistake]) -> None:
    """One nbgrader autograde run: the solution earns every point, the unmodified release earns
    none, and each mistake loses exactly the points of the test cells it names (mistakes of
    different cells graded together: :func:`pack`)."""
    solution = course.solution(assignment)
    subs = {"solution": solution, "release": course.release(assignment)}
    mistakes = pack(mistakes)
    assert len({m.name for m in mistakes}) == len(mistakes), "two mistakes share a name"
    for m in mistakes:
        nb = solution
        for grade_id, source in m.cells.items():
            nb = replace_cell(nb, grade_id, source)
        subs[m.name] = nb
    results = course.autograde(assignment, subs)
    sol, rel = results["solution"], results["release"]
    assert sol.max_score > 0
    assert sol.score == sol.max_score, (f"solution of {assignment} lost points: {sol.cells}; the "
                                        f"judge: {course.verdicts['solution']}")
    assert rel.score == 0, f"blank release of {assignment} earned points: {rel.cells}"
    for m in mistakes:
        got = results[m.name]
        lost = {k for k, v in got.cells.items() if v < sol.cells[k]}
        assert lost == set(m.loses), (
            f"{assignment}, mistake {m.name!r}: lost points in {sorted(lost)}, "
            f"expected exactly {sorted(m.loses)} (cells: {got.cells}; the judge: "
            f"{[(v['grade_id'], v['message']) for v in course.verdicts[m.name] if v['message']]})")
        for k in m.loses:
            assert got.cells[k] == 0, f"{m.name}: {k} earned {got.cells[k]}, expected 0"
        expected_score = sol.max_score - sum(sol.cells[k] for k in m.loses)
        assert got.score == expected_score


def run_locally(source: Path, replace: Dict[str, str], upto: str, rerun: str = None):
    """A lesson's code cells (``source``, the solution), in order, in one namespace as a
    learner's kernel runs them, answer cells replaced by ``replace`` (grade_id -> source);
    ``rerun`` (an answer cell's grade id) runs once more just before ``upto``, as a learner
    re-runs an answer after the helpers. Returns what the cell ``upto`` raised (None if nothing)."""
    import nbformat

    nb = nbformat.read(str(source), as_version=4)
    ns = {"__name__": "__main__"}
    sources = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        sources[gid] = replace.get(gid, cell.source)
        if gid == upto and rerun:
            exec(compile(sources[rerun], f"<cell {rerun}, again>", "exec"), ns)
        try:
            exec(compile(sources[gid], f"<cell {gid}>", "exec"), ns)
        except Exception as e:  # noqa: BLE001
            if gid == upto:
                return e
            raise
        if gid == upto:
            return None
    raise AssertionError(f"no cell {upto}")
