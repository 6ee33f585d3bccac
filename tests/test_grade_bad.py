"""`fpnlab grade` against every kind of bad submission, in ONE sandboxed batch of the toy course.

Each student below is one bad (or tricky) submission. One grading run (2 workers, a short
timeout) grades them all; each test then checks that student's status and score, and the
batch checks say that the run finished, every student got a row, and the good students' grades
are what they would be alone.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import sqlite3
import threading

import nbformat
import pytest

from autograder import grade as G
from autograder import sandbox
from conftest import requires
from grading import toy

pytestmark = [pytest.mark.slow, requires(sandbox.bwrap_available() is not None, "needs bubblewrap")]

TIMEOUT = 30          # per notebook; a toy notebook takes ~5 s (torch's import)


def _without_cell(nb, grade_id):
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != grade_id]
    return nb


def _duplicated(nb, grade_id):
    nb = copy.deepcopy(nb)
    i = next(i for i, c in enumerate(nb.cells)
             if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    dup = copy.deepcopy(nb.cells[i])
    dup["id"] = "copied-cell"            # a new cell id; the nbgrader metadata is the copy
    nb.cells.insert(i + 1, dup)
    return nb


def _edited_tests(nb):
    nb = copy.deepcopy(nb)
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade"):
            c.source = "pass  # the tests, emptied by the learner"
    return nb


class Listener:
    """A TCP server on the grader's loopback: a sandboxed kernel must not reach it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.sock.close()


def write_bad_class(subs, out, source, port, only=None):
    """Write the batch of bad submissions into ``subs`` (one student each; ``only``: a subset of
    the student names). ``out`` and ``source`` are the paths the snooping student looks for,
    ``port`` the loopback port the network student tries. Returns the student names written."""
    secret = out / "gradebook.db"
    snoop = f'''
import glob, os
for p in [{str(out)!r}, {str(secret)!r}, {str(source)!r}, {str(subs)!r}, "/work", "/root"]:
    print("SNOOP exists", p, os.path.exists(p))
found = [p for top in ("/work", "/tmp", "/home", "/root", "/var", "/run", "/etc", "/opt", "/srv")
         for pattern in ("/**/gradebook.db", "/**/00-toy/*.ipynb", "/**/submitted")
         for p in glob.glob(top + pattern, recursive=True)]
print("SNOOP found", found[:5])
try:
    open({str(secret)!r}, "w").write("overwritten")
    print("SNOOP wrote the gradebook")
except OSError as e:
    print("SNOOP write refused", type(e).__name__)
try:
    open("/home/learner/scratch.txt", "w").write("mine")
    print("SNOOP scratch ok")
except OSError as e:
    print("SNOOP scratch refused", e)
'''
    network = f'''
import socket
for host, port in [("127.0.0.1", {port}), ("1.1.1.1", 80)]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        print("NET connected", host)
    except OSError as e:
        print("NET refused", host, type(e).__name__)
'''
    monkeypatch = '''
import fpnlab.checks, torch
fpnlab.checks.check_shape = lambda *a, **k: None
fpnlab.checks.check_close = lambda *a, **k: None
check_shape = check_close = lambda *a, **k: None
torch.allclose = lambda *a, **k: True
'''
    fake_shape = '''
class FakeTensor:
    def __init__(self, *shape):
        self.shape = shape

def pad_to(x, d=32):
    h, w = x.shape[-2:]
    return FakeTensor(*x.shape[:-2], -(-h // d) * d, -(-w // d) * d)'''
    sol = toy.with_answer(toy.SOLUTION)
    students = {
        "ok-solution": sol,
        "ok-alternative": toy.with_answer(toy.ALTERNATIVE),
        "blank": toy.release_notebook(),
        "broken-json": b'{"cells": [{"cell_type": "code", "source": "x = ',
        "binary": bytes(range(256)) * 64,
        "deleted-grade-cell": _without_cell(sol, "pad-to-values"),
        "duplicated-grade-cell": _duplicated(sol, "pad-to-shapes"),
        "edited-test-cell": _edited_tests(toy.with_answer("def pad_to(x, d=32):\n    return x")),
        "infinite-loop": toy.with_answer(toy.SOLUTION, "while True:\n    pass"),
        "memory-hog": toy.with_answer(
            toy.SOLUTION, "import torch\ntry:\n    big = torch.empty(50 * 10**9, dtype=torch.uint8)\n"
            "except RuntimeError as e:\n    print('MEM', str(e)[:60])\nbig = bytearray(50 * 10**9)"),
        "fork-bomb": toy.with_answer(toy.SOLUTION, "import os\nwhile True:\n    os.fork()"),
        "big-output": toy.with_answer(toy.SOLUTION,
                                      "for _ in range(1000):\n    print('x' * 100_000)"),
        "snoop": toy.with_answer(toy.SOLUTION, snoop),
        "network": toy.with_answer(toy.SOLUTION, network),
        "monkeypatch": toy.with_answer("def pad_to(x, d=32):\n    return x", monkeypatch),
        "fake-shape": toy.with_answer(fake_shape),
        "whoami": toy.with_answer(toy.SOLUTION, "import os\nprint('IDS', os.getuid(), os.geteuid(), "
                                  "os.getgid(), os.getegid(), sorted(os.getgroups()))"),
        "kernel-dies": toy.with_answer(toy.SOLUTION,
                                       "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
    }
    leak = toy.with_answer(toy.SOLUTION, "get_ipython().events.register('post_run_cell', "
                           "lambda result: print('LEAK', result.info.raw_cell))")
    leak.cells.append(nbformat.v4.new_code_cell("print('HISTORY', In)"))
    students["history-leak"] = leak
    every = set(students) | {"wrong-name", "missing"}
    wanted = every if only is None else set(only)
    assert wanted <= every, f"no such bad submission: {sorted(wanted - every)}"
    toy.class_of(subs, {k: v for k, v in students.items() if k in wanted})
    if "wrong-name" in wanted:
        toy.write_submission(subs, "wrong-name", sol, name="my homework.ipynb")
    if "missing" in wanted:
        (subs / "missing" / toy.LESSON).mkdir(parents=True)
        (subs / "missing" / toy.LESSON / "notes.txt").write_text("I forgot the notebook")
    return sorted(wanted)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    source = toy.make_course(base / "course")
    out = base / "out"
    subs = base / "submissions"
    listener = Listener()
    write_bad_class(subs, out, source, listener.port)
    try:
        rows = G.grade(toy.LESSON, subs, out, workers=2, source=source, progress=False,
                       # 6 GB (the default): the limit counts address space, and the warm kernel's
                       # torch + torchvision map 3.6 GB of it before the first cell.
                       settings=G.Settings(timeout=TIMEOUT, memory=6 << 30, nproc=64))
    finally:
        listener.close()
    return {"rows": {r.student_id: r for r in rows}, "out": out, "listener": listener,
            "csv": G.read_grades(out / "grades.csv")}


def _row(batch, student):
    return batch["rows"][student]


def _outputs(batch, student) -> str:
    path = batch["out"] / "autograded" / student / toy.LESSON / toy.NOTEBOOK
    nb = nbformat.read(str(path), as_version=4)
    return "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")


def test_every_student_has_a_row_and_the_good_ones_full_marks(batch):
    students = set(batch["csv"])
    assert len(students) == 21, sorted(students)
    for good in ("ok-solution", "ok-alternative"):
        r = _row(batch, good)
        assert (r.status, r.score, r.max_score) == ("graded", 3.0, 3.0), r
    r = _row(batch, "blank")
    assert (r.status, r.score, r.max_score) == ("graded", 0.0, 3.0), r


@pytest.mark.parametrize("student", ["broken-json", "binary"])
def test_not_a_notebook(batch, student):
    r = _row(batch, student)
    assert (r.status, r.score, r.max_score) == ("invalid-notebook", 0.0, 3.0), r
    html = (batch["out"] / "feedback" / student / toy.LESSON / "00-toy.html").read_text()
    assert "invalid-notebook" in html


def test_wrong_name_is_graded_and_noted(batch):
    r = _row(batch, "wrong-name")
    assert (r.status, r.score) == ("graded", 3.0), r
    assert "my homework.ipynb" in r.detail


def test_missing_notebook(batch):
    r = _row(batch, "missing")
    assert (r.status, r.score, r.max_score) == ("missing-notebook", 0.0, 3.0), r
    assert "notes.txt" in r.detail


def test_deleted_grade_cell_is_restored(batch):
    assert (_row(batch, "deleted-grade-cell").status, _row(batch, "deleted-grade-cell").score) \
        == ("graded", 3.0)


def test_duplicated_grade_cell_counts_once(batch):
    r = _row(batch, "duplicated-grade-cell")
    assert (r.status, r.score, r.max_score) == ("graded", 3.0, 3.0), r
    assert "duplicated" in r.detail


def test_edited_test_cells_are_put_back(batch):
    r = _row(batch, "edited-test-cell")
    assert (r.status, r.score) == ("graded", 0.0), r


def test_infinite_loop_times_out(batch):
    r = _row(batch, "infinite-loop")
    assert (r.status, r.score, r.max_score) == ("timeout", 0.0, 3.0), r
    html = (batch["out"] / "feedback" / "infinite-loop" / toy.LESSON / "00-toy.html").read_text()
    assert "timeout" in html


def test_50_gb_allocation_fails_inside_the_sandbox(batch):
    r = _row(batch, "memory-hog")
    assert (r.status, r.score) == ("graded", 3.0), r
    assert "MEM" in _outputs(batch, "memory-hog")


def test_fork_bomb_is_contained(batch):
    # RLIMIT_NPROC stops the bomb (os.fork raises in the kernel and in every child it made);
    # the kernel goes on and grades the answer, and the sandbox's kill(-1) ends the children.
    r = _row(batch, "fork-bomb")
    assert (r.status, r.score) == ("graded", 3.0), r


def test_the_kernel_never_runs_as_root_nor_as_the_grader(batch):
    """As root the grader drops the kernel to an unprivileged uid of its own (not 0, not a
    system account); as a user, bubblewrap keeps the user's own uid and no capability."""
    r = _row(batch, "whoami")
    assert (r.status, r.score) == ("graded", 3.0), r
    line = next(ln for ln in _outputs(batch, "whoami").splitlines() if ln.startswith("IDS "))
    uid, euid, gid, egid = (int(x) for x in line.split()[1:5])
    groups = __import__("ast").literal_eval(line.split(" ", 5)[5])
    assert 0 not in (uid, euid, gid, egid, *groups), line
    if os.geteuid() == 0:
        assert uid == euid >= sandbox.DEFAULT_UID, line
    else:
        assert uid == os.getuid(), line


def test_a_kernel_that_dies_is_reported_killed(batch):
    r = _row(batch, "kernel-dies")
    assert (r.status, r.score, r.max_score) == ("killed", 0.0, 3.0), r
    assert "signal 9" in r.detail


def test_100_mb_of_output_is_capped(batch):
    r = _row(batch, "big-output")
    assert (r.status, r.score) == ("graded", 3.0), r
    path = batch["out"] / "autograded" / "big-output" / toy.LESSON / toy.NOTEBOOK
    assert path.stat().st_size < 4 * G.MAX_OUTPUT


def test_snooping_finds_nothing_and_writes_nothing(batch):
    r = _row(batch, "snoop")
    assert (r.status, r.score) == ("graded", 3.0), r
    text = _outputs(batch, "snoop")
    exists = [ln for ln in text.splitlines() if ln.startswith("SNOOP exists")]
    assert len(exists) == 6
    for line in exists[:4]:      # course folder, gradebook, course source, submissions
        assert line.endswith(" False"), line
    assert "SNOOP found []" in text
    assert "SNOOP write refused" in text and "SNOOP scratch ok" in text
    con = sqlite3.connect(str(batch["out"] / "gradebook.db"))     # still a gradebook
    assert con.execute("select count(*) from submitted_assignment").fetchone()[0] >= 15


def test_network_is_unreachable(batch):
    r = _row(batch, "network")
    assert (r.status, r.score) == ("graded", 3.0), r
    text = _outputs(batch, "network")
    assert "NET refused 127.0.0.1" in text and "NET refused 1.1.1.1" in text
    assert "NET connected" not in text
    assert batch["listener"].connections == 0


def test_monkeypatching_the_checks_earns_nothing(batch):
    """The kernel's checks are patched away, but the judge (another process) runs its own."""
    r = _row(batch, "monkeypatch")
    assert (r.status, r.score) == ("graded", 0.0), r
    verdicts = json.loads((batch["out"] / "grading" / "verdicts" / "monkeypatch" /
                           f"{toy.LESSON}.json").read_text())
    assert [v["score"] for v in verdicts] == [0, 0]
    assert "padded: shape" in verdicts[0]["message"]


def test_fake_shape_object_earns_nothing(batch):
    r = _row(batch, "fake-shape")
    assert (r.status, r.score) == ("graded", 0.0), r


def test_gradebook_agrees_with_grades_csv(batch):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{batch['out'] / 'gradebook.db'}") as gb:
        for student, row in batch["csv"].items():
            sub = gb.find_submission(toy.LESSON, student[0])
            assert float(sub.score) == row.score, (student, row)


def test_printed_history_of_hidden_tests_stays_out_of_feedback(batch):
    r = _row(batch, "history-leak")
    assert (r.status, r.score) == ("graded", 3.0), r
    # The kernel did print the hidden tests (the instructor's autograded notebook shows it) ...
    assert "dict(shape=(1, 3, 50, 70), d=16)" in _outputs(batch, "history-leak")
    html = (batch["out"] / "feedback" / "history-leak" / toy.LESSON / "00-toy.html").read_text()
    # ... but feedback holds no kernel output: not the leak, not even the learner's own prints
    # (the page shows the learner's source, which names 'LEAK', but nothing it printed).
    assert "hidden_judge" not in html and "HISTORY [" not in html and "PASS  2/2" in html
    assert "50, 70" not in html and "HIDDEN-VALUE-CAUSE" not in html


def test_feedback_never_shows_hidden_tests(batch):
    feedback = sorted((batch["out"] / "feedback").rglob("*.html"))
    assert len(feedback) == len(batch["csv"])          # one page per row
    for path in feedback:
        text = path.read_text()
        assert "HIDDEN" not in text and "50, 70" not in text and "hand over" not in text, path
    failed = (batch["out"] / "feedback" / "blank" / toy.LESSON / "00-toy.html").read_text()
    assert "raised NotImplementedError" in failed
