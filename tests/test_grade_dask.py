"""`fpnlab grade --scheduler`: grading on a Dask cluster (autograder/distributed.py).

One LocalCluster of 2 single-threaded worker processes serves every test here. A batch of bad
submissions (a representative part of tests/test_grade_bad.py's batch, see SUBSET) is graded
locally with 2 workers and on the cluster: the same grades.csv, gradebook, verdicts and
feedback. Then a worker process is killed while it runs a notebook: the chunk is graded again
elsewhere, and every submission is in grades.csv and the gradebook exactly once.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import psutil
import pytest

from autograder import distributed as D
from autograder import grade as G
from autograder import sandbox
from conftest import requires
from grading import toy
from test_grade_bad import Listener, write_bad_class

# The grading tests; the unit tests at the end need neither bubblewrap nor a cluster.
GRADES = [pytest.mark.slow, requires(sandbox.bwrap_available() is not None, "needs bubblewrap")]


def grades(test):
    for mark in GRADES:
        test = mark(test)
    return test

TIMEOUT = 30
# Each kind of row the batch has, once, graded in about 70 s per run on 2 cores (the whole batch
# of 21 takes 3.5 minutes a run): full marks, none, a renamed notebook, cells deleted or
# duplicated (nbgrader repairs), the judge overruling a patched kernel (graded in the shards),
# a kernel that dies (a status row made in a shard: its page and 0 come through the merge),
# not a notebook and no notebook (decided before any shard). The sandbox's own defences (fork
# bomb, 50 GB, snooping, network ...) do not depend on where the shard runs: test_grade_bad.
SUBSET = ["ok-solution", "blank", "wrong-name", "deleted-grade-cell", "duplicated-grade-cell",
          "monkeypatch", "kernel-dies", "broken-json", "missing"]


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as lc, Client(lc) as client:
        yield client


def _address(client) -> str:
    return client.scheduler_info()["address"]


@pytest.fixture(scope="module")
def both(tmp_path_factory, cluster):
    base = tmp_path_factory.mktemp("dask")
    source = toy.make_course(base / "course")
    subs = base / "submissions"
    listener = Listener()
    try:
        write_bad_class(subs, base / "out", source, listener.port, only=SUBSET)
    finally:
        listener.close()
    settings = G.Settings(timeout=TIMEOUT, memory=6 << 30, nproc=64)
    seconds = {}
    rows = {}
    for where, options in (("local", {"workers": 2}), ("dask", {"scheduler": _address(cluster)})):
        start = time.perf_counter()
        rows[where] = G.grade(toy.LESSON, subs, base / where, source=source, progress=False,
                              settings=settings, **options)
        seconds[where] = time.perf_counter() - start
    print(f"grading {len(SUBSET)} submissions: {seconds}")
    return {"base": base, "subs": subs, "source": source, "settings": settings, "rows": rows,
            "local": base / "local", "dask": base / "dask"}


def _csv(out: Path) -> dict:
    rows = G.read_grades(out / "grades.csv")
    for row in rows.values():
        row.graded_at = ""
    return rows


def _gradebook(out: Path) -> dict:
    """(student, lesson) -> (score, {cell: auto_score}), and how many submissions each has."""
    from nbgrader.api import Gradebook

    con = sqlite3.connect(str(out / "gradebook.db"))
    counts = dict(con.execute("select student_id, count(*) from submitted_assignment "
                              "group by student_id").fetchall())
    con.close()
    scores = {}
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        for student in gb.students:
            for sub in student.submissions:
                scores[(student.id, sub.assignment.name)] = (
                    float(sub.score), {g.name: g.auto_score for nb in sub.notebooks for g in nb.grades})
    return {"scores": scores, "counts": counts}


def _files(out: Path, top: str) -> set:
    return {p.relative_to(out / top).as_posix() for p in (out / top).rglob("*") if p.is_file()}


def _page(path: Path) -> str:
    """A feedback page without the cell ids (grade.clean_notebook makes fresh cells)."""
    return re.sub(r'id="cell-id=[0-9a-f-]+"', 'id="cell-id"', path.read_text())


@grades
def test_a_class_graded_on_dask_gets_the_grades_of_local_grading(both):
    local, dask = _csv(both["local"]), _csv(both["dask"])
    assert len(local) == len(SUBSET)
    assert dask == local
    expected = {"ok-solution": ("graded", 3.0), "blank": ("graded", 0.0),
                "wrong-name": ("graded", 3.0), "deleted-grade-cell": ("graded", 3.0),
                "duplicated-grade-cell": ("graded", 3.0), "monkeypatch": ("graded", 0.0),
                "kernel-dies": ("killed", 0.0), "broken-json": ("invalid-notebook", 0.0),
                "missing": ("missing-notebook", 0.0)}
    assert {s: (r.status, r.score) for (s, _), r in dask.items()} == expected


@grades
def test_the_gradebook_verdicts_and_feedback_are_those_of_local_grading(both):
    local, dask = _gradebook(both["local"]), _gradebook(both["dask"])
    assert dask == local
    assert set(dask["counts"].values()) == {1} and len(dask["counts"]) == len(SUBSET)
    for top in ("feedback", "autograded", "submitted", "grading/verdicts"):
        assert _files(both["dask"], top) == _files(both["local"], top), top
    for rel in _files(both["dask"], "grading/verdicts"):
        path = Path("grading", "verdicts", rel)
        assert json.loads((both["dask"] / path).read_text()) == \
            json.loads((both["local"] / path).read_text()), rel
    for student in ("blank", "monkeypatch"):        # the same page (cell ids are new each run)
        page = Path("feedback", student, toy.LESSON, "00-toy.html")
        assert _page(both["dask"] / page) == _page(both["local"] / page)
    killed = (both["dask"] / "feedback" / "kernel-dies" / toy.LESSON / "00-toy.html").read_text()
    assert "killed" in killed
    # the shards' logs came back, and OUT holds no shard debris
    assert list((both["dask"] / "grading" / "logs").glob("*-shard*-00-toy-1.log"))
    assert not list((both["dask"] / "grading" / "shards").iterdir())


@grades
def test_a_rerun_on_dask_keeps_every_grade(both):
    before = _csv(both["dask"])
    rows = G.grade(toy.LESSON, both["subs"], both["dask"], source=both["source"], progress=False,
                   settings=both["settings"], scheduler="tcp://127.0.0.1:1")   # never reached
    # Nothing changed, so no shard runs (the scheduler is never reached); only the student
    # with no notebook is decided again (there is nothing to keep).
    assert [(r.student_id, r.status) for r in rows] == [("missing", "missing-notebook")]
    assert _csv(both["dask"]) == before


@grades
def test_merging_a_result_twice_enters_each_submission_once(both, tmp_path):
    """A result delivered twice (a task run again after its worker died): merged once per run,
    and merging it again anyway leaves OUT as it was."""
    out = tmp_path / "out"
    shutil.copytree(both["dask"], out)
    src = both["local"]
    rows = [r for r in G.read_grades(src / "grades.csv").values() if r.status in (G.GRADED, "killed")]
    files = {"gradebook.db": (src / "gradebook.db").read_bytes()}
    for top, there in (("autograded", "autograded"), ("feedback", "feedback"),
                       ("submitted", "grading/submitted"), ("grading/verdicts", "grading/verdicts")):
        for rel in _files(src, top):
            files[f"{there}/{rel}"] = (src / top / rel).read_bytes()
    result = {"rows": [r.__dict__ for r in rows], "files": files, "run_id": "again", "index": 0}
    chunk = [G.Job(r.student_id, r.lesson, sha256=r.sha256) for r in rows]
    hashes = {toy.LESSON: rows[0].source_sha256}
    before = _gradebook(out)
    merged: set = set()
    first = D.merge_result(out, result, chunk, hashes, "now", merged, out / "grading" / "shards" / "x")
    assert len(first) == len(rows)
    assert D.merge_result(out, result, chunk, hashes, "now", merged,
                          out / "grading" / "shards" / "x") == []      # already merged this run
    D.merge_result(out, result, chunk, hashes, "now", set(), out / "grading" / "shards" / "x")
    assert _gradebook(out) == before                   # one submission each, the same scores


def _running(student: str, dask_worker=None) -> bool:
    """On a worker: whether one of its shards is running ``student``'s notebook now."""
    root = Path(dask_worker.local_directory) / "fpnlab"
    return any(root.glob(f"*/grading/shards/*/autograded/{student}"))


@grades
def test_a_worker_killed_mid_chunk_loses_nothing(tmp_path, cluster):
    source = toy.make_course(tmp_path / "course")
    subs, out = tmp_path / "submissions", tmp_path / "out"
    sol = toy.with_answer(toy.SOLUTION)
    # 4 notebooks on 2 threads: tasks [a-ok, b-blank] and [c-sleeper, d-ok] (chunk_size 2)
    assert D.chunk_size(4, 2) == 2
    toy.class_of(subs, {"a-ok": sol, "b-blank": toy.release_notebook(),
                        "c-sleeper": toy.with_answer(toy.SOLUTION, "import time\ntime.sleep(15)"),
                        "d-ok": sol})
    done: dict = {}

    def run():
        try:
            done["rows"] = G.grade(toy.LESSON, subs, out, source=source, progress=False,
                                   settings=G.Settings(timeout=TIMEOUT, nproc=64),
                                   scheduler=_address(cluster))
        except BaseException as e:  # noqa: BLE001 (re-raised below, in the test's thread)
            done["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        busy = [a for a, yes in cluster.run(_running, "c-sleeper", on_error="ignore").items()
                if yes is True]
        victim = busy[0] if busy else None
        time.sleep(0.3)
    assert victim, f"no worker started the sleeper's notebook: {done}"
    pid = cluster.run(os.getpid, workers=[victim])[victim]
    tree = psutil.Process(pid).children(recursive=True)
    os.kill(pid, signal.SIGKILL)           # the worker dies mid-chunk, its nbgrader and
    for child in tree:                     # sandboxes with it, as when a node is lost
        with contextlib.suppress(psutil.Error):
            child.kill()
    # While the sleeper's chunk is graded again, grades.csv already holds the other chunk's
    # rows: a coordinator stopped now would keep them.
    seen = []
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline:
        if (out / "grades.csv").exists():
            seen.append({s for s, _ in G.read_grades(out / "grades.csv")})
        time.sleep(0.5)
    thread.join(5)
    assert not thread.is_alive()
    assert {"a-ok", "b-blank"} in seen, seen
    if "error" in done:
        raise done["error"]
    rows = {r.student_id: r for r in done["rows"]}
    assert {s: (r.status, r.score) for s, r in rows.items()} == {
        "a-ok": ("graded", 3.0), "b-blank": ("graded", 0.0), "c-sleeper": ("graded", 3.0),
        "d-ok": ("graded", 3.0)}
    assert set(G.read_grades(out / "grades.csv")) == {(s, toy.LESSON) for s in rows}
    book = _gradebook(out)
    assert book["counts"] == {s: 1 for s in rows}      # one submission each, none twice
    assert {s: v[0] for (s, _), v in book["scores"].items()} == {s: r.score for s, r in rows.items()}
    for student in rows:
        assert (out / "feedback" / student / toy.LESSON / "00-toy.html").is_file()
    # the sleeper's chunk was graded by another worker process than the one killed
    record = next((out / "grading" / "logs").glob("*-dask.log")).read_text()
    lines = [ln for ln in record.splitlines() if ln.startswith("task ")]
    assert len(lines) == 2 and all(" on tcp://" in ln for ln in lines), record
    again = next(ln for ln in lines if ln.startswith("task 1:"))
    assert f"pid {pid})" not in again, record


# ----------------------------------------------------------------------------- units

def test_tasks_share_the_cluster_threads_evenly_and_stay_at_most_a_chunk():
    assert D.chunk_size(40, 2) == 7                    # 6 tasks: 3 per thread
    assert D.chunk_size(9, 2) == 5 and D.chunk_size(4, 2) == 2
    assert D.chunk_size(1000, 10) == 8 and D.chunk_size(3, 16) == 1
    for jobs, threads in [(40, 2), (1000, 10), (17, 3), (5, 0), (1, 1)]:
        size = D.chunk_size(jobs, threads)
        assert 1 <= size <= G.CHUNK
        rounds = -(-jobs // (G.CHUNK * max(threads, 1)))       # as few as chunks of 8 need
        assert -(-jobs // size) <= rounds * max(threads, 1)


@pytest.mark.filterwarnings("ignore:Object of type")     # nbgrader's SQLAlchemy chatter
def test_the_course_sent_to_workers_has_the_assignments_and_no_students(tmp_path, monkeypatch):
    import sys

    from nbgrader.api import Gradebook

    # nbgrader's API runs alembic from the venv's bin/ (as `make` puts it on PATH)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    db = tmp_path / "gradebook.db"
    with Gradebook(f"sqlite:///{db}") as gb:
        gb.add_assignment("00-toy")
        gb.add_notebook("00-toy", "00-toy")
        gb.add_grade_cell("pad-to-shapes", "00-toy", "00-toy", max_score=2, cell_type="code")
        gb.add_student("ann")
        gb.add_submission("00-toy", "ann")
        assert gb.find_grade("pad-to-shapes", "00-toy", "00-toy", "ann")
    (tmp_path / "template.db").write_bytes(D.template_gradebook(db))
    with Gradebook(f"sqlite:///{tmp_path / 'template.db'}") as gb:
        assert [a.name for a in gb.assignments] == ["00-toy"]
        assert gb.find_grade_cell("pad-to-shapes", "00-toy", "00-toy").max_score == 2
        assert gb.students == [] and gb.assignments[0].submissions == []
    with Gradebook(f"sqlite:///{db}") as gb:               # OUT's own is untouched
        assert [s.id for s in gb.students] == ["ann"]


@pytest.mark.parametrize("rel", ["../escape", "/etc/passwd", "a/../../b", ""])
def test_a_result_cannot_write_outside_its_folder(tmp_path, rel):
    with pytest.raises(ValueError):
        D.materialise(tmp_path / "shard", {rel: b"x"})
    assert not (tmp_path / "escape").exists()


def test_materialise_writes_the_files_it_is_given(tmp_path):
    D.materialise(tmp_path / "s", {"a/b/c.txt": b"1", "gradebook.db": b"2"})
    assert (tmp_path / "s" / "a" / "b" / "c.txt").read_bytes() == b"1"


class FakeClient:
    def __init__(self, facts):
        self.facts = facts

    def wait_for_workers(self, n, timeout=None):
        pass

    def run(self, fn):
        return self.facts


def test_workers_without_bubblewrap_or_with_other_code_grade_nothing():
    ok = {"code": D.code_digest(), "bwrap": True, "python": "3.11", "host": "node1"}
    assert D.check_workers(FakeClient({"tcp://a:1": ok}), G.Settings()) == {"tcp://a:1": ok}
    with pytest.raises(G.UsageError, match="no working bubblewrap"):
        D.check_workers(FakeClient({"tcp://a:1": ok, "tcp://b:1": dict(ok, bwrap=False)}),
                        G.Settings())
    D.check_workers(FakeClient({"tcp://b:1": dict(ok, bwrap=False)}), G.Settings(sandbox=False))
    with pytest.raises(G.UsageError, match="other grading code"):
        D.check_workers(FakeClient({"tcp://c:1": dict(ok, code="0" * 64)}), G.Settings())


def test_a_task_refuses_to_grade_with_other_code():
    with pytest.raises(RuntimeError, match="other grading code"):
        D.grade_task("token", [], G.Settings(), "0" * 64, "run")


def test_cli_scheduler_option_reaches_grade(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(G, "grade", lambda *a, **k: seen.update(k) or [])
    assert G.main(["00-toy", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--scheduler", "tcp://10.0.0.1:8786"]) == 0
    assert seen["scheduler"] == "tcp://10.0.0.1:8786"
    assert G.main(["00-toy", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "3",
                   "--scheduler", "local"]) == 0
    assert seen["scheduler"] == "local:3"
    assert G.main(["00-toy", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert seen["scheduler"] is None
