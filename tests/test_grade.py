"""`fpnlab grade`: collecting submissions, the sandbox launcher, grading a class (toy course and
lesson 01), workers, re-runs, feedback, the gradebook, and the command line."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import judge as judging
from autograder import grade as G
from autograder import sandbox
from fpnlab import cli

from conftest import IN_CI, requires
from grading import toy

ROOT = Path(__file__).resolve().parent.parent
HAS_BWRAP = sandbox.bwrap_available() is not None
needs_bwrap = requires(HAS_BWRAP, "needs bubblewrap")


# ----------------------------------------------------------------------------- fast: collecting

@pytest.fixture
def course(tmp_path) -> Path:
    return toy.make_course(tmp_path / "course")


def test_zip_flat_lms_names_and_folders_unpack_by_student(tmp_path):
    z = tmp_path / "class.zip"
    nb = json.dumps(toy.release_notebook())
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("s101_attempt_2026-11-25_00-toy.ipynb", nb)      # LMS flat name
        zf.writestr("s102/00-toy/00-toy.ipynb", nb)                   # nbgrader layout
        zf.writestr("../escape.ipynb", nb)                            # path traversal: skipped
        zf.writestr("/abs/evil.ipynb", nb)                            # absolute: skipped
        zf.writestr("__MACOSX/s101/._x.ipynb", "junk")                # archive debris: skipped
    inbox = G.unpack_zip(z, tmp_path / "inbox")
    files = sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file())
    assert files == ["s101/s101_attempt_2026-11-25_00-toy.ipynb", "s102/00-toy/00-toy.ipynb"]
    assert not (tmp_path / "escape.ipynb").exists()


def test_zip_pattern_takes_the_id_from_where_the_lms_puts_it(tmp_path):
    z = tmp_path / "canvas.zip"
    with zipfile.ZipFile(z, "w") as zf:       # Canvas: <name>_[LATE_]<user id>_<sub id>_<file>
        zf.writestr("lovelaceada_4711_90001_00-toy.ipynb", "{}")
        zf.writestr("hopper_LATE_4712_90002_00-toy-1.ipynb", "{}")
        zf.writestr("readme.txt", "no id here")
    inbox = G.unpack_zip(z, tmp_path / "inbox", r"^[^_]+_(?:LATE_)?(?P<student_id>\d+)_")
    assert sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file()) == [
        "4711/lovelaceada_4711_90001_00-toy.ipynb", "4712/hopper_LATE_4712_90002_00-toy-1.ipynb"]
    with pytest.raises(G.UsageError, match="student_id"):
        G.unpack_zip(z, tmp_path / "inbox", r"^(\d+)_")


def test_not_a_zip_is_a_usage_error(tmp_path):
    bad = tmp_path / "class.zip"
    bad.write_text("not a zip")
    with pytest.raises(G.UsageError, match="not a readable zip"):
        G.unpack_zip(bad, tmp_path / "inbox")


def test_collect_finds_each_layout_and_says_what_is_missing(tmp_path, course):
    subs = tmp_path / "subs"
    toy.write_submission(subs, "nested", toy.release_notebook())
    (subs / "flat").mkdir(parents=True)
    (subs / "flat" / "00-toy.ipynb").write_text(json.dumps(toy.release_notebook()))
    (subs / "lms").mkdir()
    (subs / "lms" / "attempt_1_00-toy.ipynb").write_text(json.dumps(toy.release_notebook()))
    (subs / "renamed").mkdir()
    (subs / "renamed" / "00-toy (1).ipynb").write_text(json.dumps(toy.release_notebook()))
    (subs / "empty").mkdir()
    (subs / "bad id!").mkdir()
    jobs = {j.student_id: j for j in G.collect(subs, [toy.LESSON], course, 1 << 20)}
    assert jobs["nested"].status is None and jobs["nested"].detail == ""
    assert jobs["flat"].status is None and jobs["flat"].path.name == "00-toy.ipynb"
    # an LMS's <...>_<lesson>.ipynb is what every student of a zip has: no note for it
    assert jobs["lms"].status is None and jobs["lms"].path.name == "attempt_1_00-toy.ipynb"
    assert jobs["lms"].detail == ""
    assert jobs["renamed"].status is None and "graded 00-toy (1).ipynb" in jobs["renamed"].detail
    assert jobs["empty"].status == "missing-notebook" and "empty" in jobs["empty"].detail
    assert jobs["bad id!"].status == "invalid-notebook" and "student id" in jobs["bad id!"].detail
    assert jobs["nested"].notebook is not None and len(jobs["nested"].sha256) == 64


def test_collect_for_all_lessons_matches_flat_notebooks_by_name(tmp_path, course):
    second = course / "00-toy2"
    second.mkdir()
    nbformat.write(toy.source_notebook(), str(second / "00-toy2.ipynb"))
    subs = tmp_path / "subs"
    (subs / "ann").mkdir(parents=True)
    for name in ("00-toy.ipynb", "00-toy2.ipynb"):
        (subs / "ann" / name).write_text(json.dumps(toy.release_notebook()))
    (subs / "ben").mkdir()
    (subs / "ben" / "00-toy2.ipynb").write_text(json.dumps(toy.release_notebook()))
    jobs = {(j.student_id, j.lesson): j for j in
            G.collect(subs, G.lessons_in(course), course, 1 << 20)}
    assert sorted(jobs) == [("ann", "00-toy"), ("ann", "00-toy2"), ("ben", "00-toy"),
                            ("ben", "00-toy2")]
    assert jobs[("ann", "00-toy")].path.name == "00-toy.ipynb"
    assert jobs[("ann", "00-toy2")].path.name == "00-toy2.ipynb"
    assert jobs[("ben", "00-toy2")].status is None
    # "00-toy2.ipynb" contains "00-toy": with two lessons it must not stand in for 00-toy.
    assert jobs[("ben", "00-toy")].status == "missing-notebook"


def test_too_large_and_not_json_are_refused_before_nbgrader(tmp_path, course):
    subs = tmp_path / "subs"
    toy.write_submission(subs, "big", b" " * 2048 + json.dumps(toy.release_notebook()).encode())
    toy.write_submission(subs, "text", "print('hello')")
    jobs = {j.student_id: j for j in G.collect(subs, [toy.LESSON], course, 2048)}
    assert jobs["big"].status == "too-large"
    assert jobs["text"].status == "invalid-notebook" and "JSON" in jobs["text"].detail


def test_clean_notebook_drops_outputs_and_keeps_one_of_each_grade_id():
    nb = toy.with_answer(toy.SOLUTION)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="x" * 1000)]
    dup = nbformat.from_dict(json.loads(json.dumps(nb.cells[3])))
    nb.cells.append(dup)
    clean, notes = G.clean_notebook(json.loads(json.dumps(nb)))
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in clean.cells]
    assert ids.count("pad-to-shapes") == 1 and len(clean.cells) == len(nb.cells)
    assert notes == ["duplicated cell 'pad-to-shapes' graded once"]
    assert all(not c.get("outputs") for c in clean.cells if c.cell_type == "code")


def test_strip_hidden_removes_hidden_tests_and_the_graders_line():
    nb = judging.inject(toy.source_notebook())
    src = next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id")
               == "pad-to-values")
    assert judging.HANDOVER_MARK in src
    shown = G.strip_hidden(src)
    assert "run_test(outputs, judge, [dict(shape=(3, 5, 7)" in shown    # the visible test stays
    assert "HIDDEN" not in shown and "9, 3" not in shown and judging.HANDOVER_MARK not in shown
    assert "(hidden tests: not shown)" in shown
    assert "7, 8" not in G.strip_hidden("a = 1\n### BEGIN HIDDEN TESTS\nb = (7, 8)\n")


def test_grades_csv_round_trip(tmp_path):
    rows = [G.Row("b", "00-toy", 2.5, 3, "graded", "note, with comma", "ab", "cd", "t"),
            G.Row("a", "00-toy", 0, 3, "timeout", "stopped after 30 s")]
    G.write_grades(tmp_path / "grades.csv", rows)
    back = G.read_grades(tmp_path / "grades.csv")
    assert back[("b", "00-toy")] == rows[0] and back[("a", "00-toy")].status == "timeout"
    header = (tmp_path / "grades.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["student_id", "lesson", "score", "max_score", "status"]


def test_sandbox_refuses_a_connection_file_outside_its_runtime_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FPNLAB_SANDBOX_RUNTIME", str(tmp_path / "runtime"))
    status = tmp_path / "status.json"
    code = sandbox.launch(["/bin/true"], "/tmp/kernel-x.json", sandbox.Limits(), str(status))
    assert code == 2 and json.loads(status.read_text())["status"] == "error"


@needs_bwrap
def test_sandbox_limits_hold_for_a_plain_command(tmp_path, monkeypatch, capfd):
    """Inside: the rlimits are set, the grader's files (the runtime folder too) are invisible;
    the launcher's wall-clock limit kills the sandbox."""
    import tempfile

    runtime = Path(tempfile.mkdtemp(prefix="fpnlab-rt-"))
    try:
        monkeypatch.setenv("FPNLAB_SANDBOX_RUNTIME", str(runtime))
        conn, secret = runtime / "k.json", tmp_path / "secret.txt"
        conn.write_text("{}")
        secret.write_text("the answers")
        code = ("import resource, os; print('PROBE %d %d %s %s' % ("
                "resource.getrlimit(resource.RLIMIT_NPROC)[0], "
                f"resource.getrlimit(resource.RLIMIT_DATA)[0], os.path.exists({str(secret)!r}), "
                f"os.path.exists({str(runtime)!r})))")
        status = tmp_path / "status.json"
        capfd.readouterr()
        rc = sandbox.launch([sys.executable, "-c", code], str(conn),
                            sandbox.Limits(timeout=60, nproc=40, memory=3 << 30), str(status))
        assert rc == 0 and json.loads(status.read_text())["status"] == "ok"
        assert f"PROBE 40 {3 << 30} False False" in capfd.readouterr().out
        # The writable tmpfs are small: 4 files of 10 MB do not fit in 24 MB.
        fill = ("import errno\nfor i in range(4):\n    try:\n"
                "        open(f'/tmp/f{i}', 'wb').write(bytes(10 << 20))\n"
                "    except OSError as e:\n"
                "        print('FILLED', i, errno.errorcode[e.errno])\n"
                "        break")
        sandbox.launch([sys.executable, "-c", fill], str(conn),
                       sandbox.Limits(timeout=60, scratch=24 << 20), str(status))
        assert "FILLED 2 ENOSPC" in capfd.readouterr().out
        sandbox.launch([sys.executable, "-c", "import time; time.sleep(60)"], str(conn),
                       sandbox.Limits(timeout=2), str(status))
        assert json.loads(status.read_text())["status"] == "timeout"
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


# ----------------------------------------------------------------------------- fast: command line

def test_cli_unknown_lesson_is_a_usage_error(tmp_path, course, capsys):
    (tmp_path / "subs").mkdir()
    code = cli.main(["grade", "99-nope", str(tmp_path / "subs"), "--out", str(tmp_path / "out"),
                     "--source", str(course), "--unsafe-no-sandbox"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "unknown lesson '99-nope'" in err and "00-toy" in err


def test_cli_missing_submissions_and_bad_workers(tmp_path, course, capsys):
    code = cli.main(["grade", toy.LESSON, str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                     "--source", str(course), "--unsafe-no-sandbox"])
    assert code == cli.EXIT_USAGE and "do not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["grade", toy.LESSON, str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"])
    assert e.value.code == 2


def test_cli_warm_kernels_by_default_and_cold_on_request(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(G, "grade", lambda *a, settings, **k: seen.append(settings) or [])
    base = ["grade", toy.LESSON, str(tmp_path), "--out", str(tmp_path / "out")]
    for extra in ([], ["--cold-kernels"], ["--unsafe-no-sandbox"]):
        assert cli.main(base + extra) == 0
    assert [(s.warm, s.sandbox) for s in seen] == [(True, True), (False, True), (True, False)]


def test_cli_refuses_to_grade_without_bubblewrap(tmp_path, course, capsys, monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_available", lambda: None)
    (tmp_path / "subs").mkdir()
    code = cli.main(["grade", toy.LESSON, str(tmp_path / "subs"), "--out", str(tmp_path / "out"),
                     "--source", str(course)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "bubblewrap" in err and "--unsafe-no-sandbox" in err
    assert not (tmp_path / "out" / "grades.csv").exists()


def test_out_inside_the_submissions_is_refused(tmp_path, course):
    (tmp_path / "subs").mkdir()
    with pytest.raises(G.UsageError, match="folder of its own"):
        G.grade(toy.LESSON, tmp_path / "subs", tmp_path / "subs" / "out", source=course,
                settings=G.Settings(sandbox=False))


# ----------------------------------------------------------------------------- slow: a class

@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A class of five graded from a zip with 2 workers, then graded again after changes."""
    assert HAS_BWRAP or not IN_CI, "bubblewrap is missing (make system installs it)"
    if not HAS_BWRAP:
        pytest.skip("needs bubblewrap (apt-get install bubblewrap)")
    base = tmp_path_factory.mktemp("class")
    source = toy.make_course(base / "course")
    z = base / "class.zip"
    students = {"alice": toy.with_answer(toy.SOLUTION), "bob": toy.release_notebook(),
                "carol": toy.with_answer(toy.ALTERNATIVE), "dave": toy.with_answer(toy.WRONG_VALUES),
                "erin": toy.with_answer(toy.SOLUTION)}
    with zipfile.ZipFile(z, "w") as zf:
        for sid, nb in students.items():
            zf.writestr(f"{sid}_12345_{toy.NOTEBOOK}", json.dumps(nb))
    out = base / "out"
    first = G.grade(toy.LESSON, z, out, workers=2, source=source, progress=False,
                    settings=G.Settings(timeout=60))
    csv1 = (out / "grades.csv").read_text()
    # Second run: bob fixed his notebook, erin is not in this download (carol's folder is
    # there but empty), frank is new.
    sub2 = base / "second"
    toy.class_of(sub2, {"alice": students["alice"], "bob": toy.with_answer(toy.SOLUTION),
                        "dave": students["dave"], "frank": toy.with_answer(toy.WRONG_VALUES)})
    (sub2 / "carol").mkdir()
    second = G.grade(toy.LESSON, sub2, out, workers=1, source=source, progress=False,
                     settings=G.Settings(timeout=60))
    return {"out": out, "first": {r.student_id: r for r in first}, "csv1": csv1,
            "second": {r.student_id: r for r in second}, "source": source}


@pytest.mark.slow
def test_class_grades_both_ways(graded):
    rows = graded["first"]
    assert {s: (r.status, r.score, r.max_score) for s, r in rows.items()} == {
        "alice": ("graded", 3.0, 3.0), "bob": ("graded", 0.0, 3.0), "carol": ("graded", 3.0, 3.0),
        "dave": ("graded", 2.0, 3.0), "erin": ("graded", 3.0, 3.0)}
    rec = list(csv.DictReader(io.StringIO(graded["csv1"])))
    assert [(r["student_id"], r["score"]) for r in rec] == [
        ("alice", "3"), ("bob", "0"), ("carol", "3"), ("dave", "2"), ("erin", "3")]


@pytest.mark.slow
def test_rerun_regrades_only_what_changed_and_loses_no_grade(graded):
    assert set(graded["second"]) == {"bob", "frank"}             # alice, carol, dave unchanged
    assert graded["second"]["bob"].score == 3.0 and graded["second"]["frank"].score == 2.0
    now = G.read_grades(graded["out"] / "grades.csv")
    assert {s: r.score for (s, _), r in now.items()} == {
        "alice": 3.0, "bob": 3.0, "carol": 3.0, "dave": 2.0, "erin": 3.0, "frank": 2.0}


def instructors_env() -> dict:
    """The environment of an instructor's shell: the venv's commands, none of the course
    tools' own variables (no FPNLAB_COURSE_ROOT)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FPNLAB_")}
    clean["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}"
    return clean


def guide_command(args, out: Path, **env) -> subprocess.CompletedProcess:
    """An nbgrader command as the instructor guide has it: typed in OUT, nothing set around it
    (the repository not the working directory)."""
    return subprocess.run([str(Path(sys.executable).parent / "nbgrader"), *args], cwd=out,
                          env={**instructors_env(), **env}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_gradebook_merged_from_shards_exports_every_student(graded):
    out = graded["out"]
    repo_db = ROOT / "gradebook.db"
    before = repo_db.stat().st_mtime if repo_db.exists() else None
    proc = guide_command(["export", "--to", "grades-export.csv"], out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = {r["student_id"]: float(r["score"])
              for r in csv.DictReader(open(out / "grades-export.csv"))}
    assert scores == {"alice": 3.0, "bob": 3.0, "carol": 3.0, "dave": 2.0, "erin": 3.0, "frank": 2.0}
    after = repo_db.stat().st_mtime if repo_db.exists() else None
    assert after == before, "nbgrader export in OUT touched the repository's gradebook.db"


@needs_bwrap
@pytest.mark.slow
def test_release_feedback_in_out_hands_back_exchange_submissions(graded, tmp_path):
    """Submissions collected from nbgrader's exchange carry timestamp.txt and
    submission_secret.txt: graded, their feedback goes back with `nbgrader release_feedback`
    typed in OUT, under the name each learner's `fetch_feedback` looks for."""
    from nbgrader.utils import notebook_hash

    subs = tmp_path / "submitted"
    secret = "ab" * 32
    nb = toy.write_submission(subs, "gwen", toy.with_answer(toy.WRONG_VALUES))
    (nb.parent / "timestamp.txt").write_text("2026-11-30 17:00:00.000000 UTC")
    (nb.parent / "submission_secret.txt").write_text(secret)
    (nb.parent.parent.parent / "hal" / toy.LESSON).mkdir(parents=True)
    (nb.parent.parent.parent / "hal" / toy.LESSON / "submission_secret.txt").symlink_to(
        nb.parent / "submission_secret.txt")                  # no notebook, a symlink: ignored
    out = tmp_path / "out"
    G.grade(toy.LESSON, subs, out, source=graded["source"], progress=False,
            settings=G.Settings(timeout=60))
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    proc = guide_command(["release_feedback", toy.LESSON, f"--Exchange.root={exchange}"], out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    released = {p.name: p.read_text() for p in (exchange / "fpnlab" / "feedback").glob("*.html")}
    gwen = notebook_hash(secret=secret, notebook_id=toy.NOTEBOOK[:-6]) + ".html"
    assert released.pop(gwen) == (out / "feedback" / "gwen" / toy.LESSON / "00-toy.html").read_text()
    # hal's "missing notebook" page goes out under a secret of its own (fetched by nobody),
    # never under the one his symlink pointed at
    assert len(released) == 1 and "missing-notebook" in next(iter(released.values()))


@pytest.mark.slow
def test_formgrader_in_out_lists_the_graded_class(graded):
    """`jupyter server` in OUT with formgrader on: its API shows OUT's gradebook."""
    import secrets
    import socket
    import time
    import urllib.request

    out = graded["out"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = secrets.token_hex(8)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "server", "--no-browser", f"--port={port}",
         "--ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={out}",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=out, env=instructors_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/formgrader/api/submissions/{toy.LESSON}"
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
                body = json.loads(urllib.request.urlopen(req, timeout=10).read())
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                time.sleep(0.5)
        assert body is not None, "formgrader did not answer"
        scores = {s["student"]: s["score"] for s in body}
        assert scores == {"alice": 3.0, "bob": 3.0, "carol": 3.0, "dave": 2.0, "erin": 3.0,
                          "frank": 2.0}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_plain_nbgrader_autograde_in_out_refuses_to_run_learner_code(graded, tmp_path):
    out = graded["out"]
    proc = guide_command(["autograde", toy.LESSON, "--student", "alice", "--force"], out)
    assert "fpnlab grade" in proc.stdout + proc.stderr
    assert G.read_grades(out / "grades.csv")[("alice", toy.LESSON)].score == 3.0
    proc = guide_command(["export", "--to", str(tmp_path / "after.csv")], out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = {r["student_id"]: float(r["score"]) for r in csv.DictReader(open(tmp_path / "after.csv"))}
    assert scores["alice"] == 3.0, "the refused autograde dropped alice's grade"


@pytest.mark.slow
def test_a_class_graded_on_two_machines_merges_into_one(graded, tmp_path):
    """Machine B graded zed; machine A (the fixture's OUT) graded the rest: fold A into B."""
    subs = toy.class_of(tmp_path / "subs", {"zed": toy.with_answer(toy.WRONG_VALUES)})
    (subs / "yan").mkdir()                                          # no notebook
    b = tmp_path / "machine-b"
    G.grade(toy.LESSON, subs, b, source=graded["source"], progress=False,
            settings=G.Settings(timeout=60))
    assert G.merge_course(b, graded["out"]) == 6
    rows = G.read_grades(b / "grades.csv")
    assert {s: (r.status, r.score) for (s, _), r in rows.items()} == {
        "alice": ("graded", 3.0), "bob": ("graded", 3.0), "carol": ("graded", 3.0),
        "dave": ("graded", 2.0), "erin": ("graded", 3.0), "frank": ("graded", 2.0),
        "yan": ("missing-notebook", 0.0), "zed": ("graded", 2.0)}
    proc = G.run_nbgrader(["export", "--to", str(b / "export.csv")], b)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = {r["student_id"]: float(r["score"]) for r in csv.DictReader(open(b / "export.csv"))}
    assert scores == {s: r.score for (s, _), r in rows.items()}
    assert (b / "feedback" / "dave" / toy.LESSON / "00-toy.html").exists()
    assert G.merge_course(b, graded["out"]) == 0                    # nothing newer the second time


@pytest.mark.slow
def test_feedback_shows_failures_but_no_hidden_tests(graded):
    fb = graded["out"] / "feedback"
    assert sorted(p.parts[-3] for p in fb.rglob("*.html")) == \
        ["alice", "bob", "carol", "dave", "erin", "frank"]
    dave = (fb / "dave" / toy.LESSON / "00-toy.html").read_text()
    assert "values differ from the oracle" in dave                     # the failed test's message
    assert "(hidden tests: not shown)" in dave
    for path in fb.rglob("*.html"):
        text = path.read_text()
        assert "BEGIN HIDDEN" not in text and "50, 70" not in text and "2, 9, 3" not in text
        assert "hand over" not in text
    # The instructor's autograded copy keeps the hidden tests (nbgrader #1363): feedback is
    # the only thing handed back.
    auto = (graded["out"] / "autograded" / "dave" / toy.LESSON / toy.NOTEBOOK).read_text()
    assert "BEGIN HIDDEN TESTS" in auto


@pytest.mark.slow
def test_feedback_pages_work_offline_name_each_test_and_wrap_messages(graded):
    fb = graded["out"] / "feedback"
    for path in fb.rglob("*.html"):
        text = path.read_text()
        assert not re.search(r"<(script|link|img)[^>]*(src|href)=[\"']?(https?:)?//", text), \
            f"{path}: loads something from the network"
        assert "Test cell<" not in text
    dave = (fb / "dave" / toy.LESSON / "00-toy.html").read_text()
    ids = [c.metadata["nbgrader"]["grade_id"] for c in toy.source_notebook().cells
           if c.metadata.get("nbgrader", {}).get("grade")]
    assert all(f"Test <code>{gid}</code>" in dave for gid in ids)


@pytest.mark.slow
@pytest.mark.browser
def test_feedback_message_wraps_in_a_browser(graded):
    """Chromium, at a narrow window: the failed test's message wraps, nothing is cut off."""
    from browser import lab

    from playwright.sync_api import sync_playwright

    page_path = graded["out"] / "feedback" / "dave" / toy.LESSON / "00-toy.html"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=lab.CHROMIUM, headless=True,
                                     args=lab.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 700, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            box = page.locator("div.output_error pre").first
            assert "values differ" in box.inner_text()
            overflow = box.evaluate("e => e.scrollWidth - e.clientWidth")
            lines = box.evaluate("e => Math.round(e.getBoundingClientRect().height / "
                                 "parseFloat(getComputedStyle(e).lineHeight))")
            assert overflow <= 1 and lines >= 2, (overflow, lines)
            assert not [u for u in requests if not u.startswith("file:")], requests
        finally:
            browser.close()


def _run_in_pty(argv, env) -> tuple:
    """Run ``argv`` with a terminal as stdout and stderr; (exit code, everything it printed)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:                                      # pragma: no cover (the child)
        os.execve(argv[0], argv, env)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.mark.slow
def test_cli_on_a_terminal_shows_progress_and_unsafe_mode_warns(tmp_path, course):
    subs = toy.class_of(tmp_path / "subs", {"ann": toy.with_answer(toy.SOLUTION)})
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    code, printed = _run_in_pty(
        [sys.executable, "-m", "fpnlab.cli", "grade", toy.LESSON, str(subs), "--out",
         str(tmp_path / "out"), "--source", str(course), "--unsafe-no-sandbox", "--timeout", "60"],
        env)
    assert code == 0, printed[-2000:]
    assert "WARNING" in printed and "unsafe" in printed
    assert "grading: 100%" in printed and "1/1" in printed          # the progress bar
    rows = G.read_grades(tmp_path / "out" / "grades.csv")
    assert (rows[("ann", toy.LESSON)].status, rows[("ann", toy.LESSON)].score) == ("graded", 3.0)


# ----------------------------------------------------------------------------- slow: lesson 01

LESSON01 = "01-preprocessing"


@pytest.mark.slow
@needs_bwrap
def test_real_lesson_01_solution_full_marks_blank_zero(tmp_path):
    source_nb = next((ROOT / "solutions" / LESSON01).glob("*.ipynb"))
    release = ROOT / "lessons" / LESSON01 / source_nb.name
    subs = tmp_path / "subs"
    for sid, path in (("solution", source_nb), ("blank", release)):
        (subs / sid / LESSON01).mkdir(parents=True)
        shutil.copy(path, subs / sid / LESSON01 / source_nb.name)
    rows = {r.student_id: r for r in G.grade(LESSON01, subs, tmp_path / "out", workers=1,
                                             progress=False, settings=G.Settings(timeout=300))}
    sol, blank = rows["solution"], rows["blank"]
    assert sol.status == "graded" and sol.max_score > 0 and sol.score == sol.max_score, sol
    assert blank.status == "graded" and blank.score == 0 and blank.max_score == sol.max_score, blank


# ----------------------------------------------------------------------------- warm kernels

PROBE = """\
import os, pathlib, uuid
print('SEEN', len(list(pathlib.Path('/tmp').glob('mark-*'))))
pathlib.Path('/tmp/mark-' + uuid.uuid4().hex).write_text('left by an earlier notebook')"""


def _two_lesson_course(root: Path) -> Path:
    from autograder import authoring as A

    for lesson in (toy.LESSON, toy.LESSON + "-b"):
        A.write(toy.source_notebook(), root / lesson / f"{lesson}.ipynb")
    return root


def _seen(out: Path, student: str, lesson: str) -> int:
    nb = nbformat.read(str(out / "autograded" / student / lesson / f"{lesson}.ipynb"), as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return int(text.split("SEEN ")[1].split()[0])


def _warm_processes(tmp_path: Path) -> list:
    """Warm-sandbox processes this test started (never another grading run's on the machine):
    the keeper carries the test's folder in its environment, the zygote runs as one of the
    kernel uids of this process's shards."""
    ours = {str(sandbox.DEFAULT_UID + (os.getpid() % 4096) * 16 + i) for i in range(16)}
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not (proc.name.isdigit() and b"autograder.warmkernel" in (proc / "cmdline").read_bytes()):
                continue
            uid = next(ln.split()[1] for ln in (proc / "status").read_text().splitlines()
                       if ln.startswith("Uid:"))
            if uid in ours or str(tmp_path).encode() in (proc / "environ").read_bytes():
                found.append(proc.name)
        except (OSError, StopIteration):
            pass
    return found


@needs_bwrap
@pytest.mark.slow
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_a_students_notebooks_share_a_warm_sandbox_and_students_share_nothing(tmp_path, warm):
    """Warm: a student's second notebook runs in the sandbox of the first (it sees the file the
    first left in /tmp); the next student starts clean. Cold: every notebook starts clean."""
    source = _two_lesson_course(tmp_path / "solutions")
    subs = tmp_path / "subs"
    for student in ("ann", "bob"):
        for lesson in (toy.LESSON, toy.LESSON + "-b"):
            toy.write_submission(subs, student, toy.with_answer(toy.SOLUTION, PROBE), lesson,
                                 f"{lesson}.ipynb")
    out = tmp_path / "out"
    rows = G.grade("all", subs, out, source=source, progress=False,
                   settings=G.Settings(timeout=120, warm=warm))
    assert sorted((r.student_id, r.lesson, r.status, r.score) for r in rows) == [
        (s, lesson, "graded", 3.0) for s in ("ann", "bob") for lesson in (toy.LESSON, toy.LESSON + "-b")]
    for student in ("ann", "bob"):
        assert _seen(out, student, toy.LESSON) == 0                  # nothing of the other student
        assert _seen(out, student, toy.LESSON + "-b") == (1 if warm else 0)
    assert _warm_processes(tmp_path) == []                            # no sandbox outlives grading


def test_the_warm_preload_leaves_one_thread_and_cuda_uninitialised():
    """A fork copies only the calling thread, and a child cannot use CUDA its parent initialised.
    (The CUDA half matters on a GPU machine; on a CPU one it still runs the preload.)"""
    import subprocess

    code = ("from autograder.warmkernel import preload\npreload()\n"
            "import os, torch\nprint('INIT', torch.cuda.is_initialized())\n"
            "print('THREADS', len(os.listdir('/proc/self/task')))")
    env = dict(os.environ, **{var: "1" for var in sandbox.THREAD_VARS})    # as in the sandbox
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "INIT False" in out.stdout and "THREADS 1" in out.stdout


@needs_bwrap
@pytest.mark.slow
def test_a_warm_sandbox_that_cannot_start_is_an_error_row_that_says_why(tmp_path, course):
    """1 GB of address space cannot hold torch: the preload fails, the row says so (not a 0)."""
    subs = toy.class_of(tmp_path / "subs", {"ann": toy.with_answer(toy.SOLUTION)})
    rows = G.grade(toy.LESSON, subs, tmp_path / "out", source=course, progress=False,
                   settings=G.Settings(timeout=60, memory=1 << 30))
    (row,) = rows
    assert (row.status, row.score) == ("error", 0.0), row
    assert "warm sandbox of ann ended while starting" in row.detail
    # the preload's own error, and it is the memory limit's (not, say, a missing module)
    why = row.detail.split("starting:")[1]
    out_of_memory = r"failed to map segment|MemoryError|Cannot allocate memory|bad_alloc"
    assert re.search(out_of_memory, why) and "ModuleNotFoundError" not in why, why
    log = row.detail.split("(log: ")[1].rstrip(")")
    assert re.search(out_of_memory, (tmp_path / "out" / log).read_text())   # the log it names
    assert _warm_processes(tmp_path) == []
