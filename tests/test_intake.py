"""Submission intake of `fpnlab grade` (fast: no bubblewrap, no kernels): symlinks are refused
and never followed, student ids are matched in full, and two files claiming one student's
lesson give `duplicate-id` instead of a silent winner."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import grade as G
from grading import toy

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def course(tmp_path) -> Path:
    return toy.make_course(tmp_path / "course")


@pytest.fixture
def answers(course) -> Path:
    """The instructor's solution notebook: what a symlink would like to hand in."""
    return course / toy.LESSON / toy.NOTEBOOK


def release() -> str:
    return json.dumps(toy.release_notebook())


def jobs_of(subs: Path, course: Path, lessons=(toy.LESSON,)) -> dict:
    return {(j.student_id, j.lesson) if len(lessons) > 1 else j.student_id: j
            for j in G.collect(subs, list(lessons), course, 1 << 20)}


def assert_not_read(job, answers: Path):
    """The job holds nothing of the file (the instructor's solution) a symlink points at."""
    assert job.notebook is None
    assert job.sha256 != hashlib.sha256(answers.read_bytes()).hexdigest()


def no_links(folder: Path) -> bool:
    return not any(os.path.islink(Path(top) / n) for top, dirs, files in os.walk(folder)
                   for n in dirs + files)


# ----------------------------------------------------------------------------- symlinks

def test_symlinks_anywhere_in_a_submission_are_refused_and_never_read(tmp_path, course, answers):
    subs = tmp_path / "subs"
    toy.write_submission(subs, "ben", release())                          # a normal neighbour
    (subs / "ann" / toy.LESSON).mkdir(parents=True)                       # the notebook
    (subs / "ann" / toy.LESSON / toy.NOTEBOOK).symlink_to(answers)
    (subs / "cat").mkdir()                                                # flat notebook
    (subs / "cat" / toy.NOTEBOOK).symlink_to(answers)
    (subs / "dan").mkdir()                                                # the lesson folder
    (subs / "dan" / toy.LESSON).symlink_to(answers.parent)
    (subs / "eve").symlink_to(tmp_path / "elsewhere")                     # the student folder
    (tmp_path / "elsewhere" / toy.LESSON).mkdir(parents=True)
    (tmp_path / "elsewhere" / toy.LESSON / toy.NOTEBOOK).write_bytes(answers.read_bytes())
    (subs / "fay" / toy.LESSON).mkdir(parents=True)                       # the only candidate
    (subs / "fay" / toy.LESSON / "my homework.ipynb").symlink_to(answers)
    (subs / "gus").mkdir()                                                # dangling
    (subs / "gus" / toy.NOTEBOOK).symlink_to(tmp_path / "nowhere.ipynb")
    jobs = jobs_of(subs, course)
    assert jobs["ben"].status is None and jobs["ben"].notebook is not None
    for sid in ("ann", "cat", "dan", "eve", "fay", "gus"):
        job = jobs[sid]
        assert job.status == "invalid-notebook" and "symlink" in job.detail, (sid, job)
        assert_not_read(job, answers)
    assert jobs["dan"].detail.startswith(f"dan/{toy.LESSON} is a symlink")


def test_a_regular_file_next_to_a_symlink_still_wins_by_its_name(tmp_path, course, answers):
    subs = tmp_path / "subs"
    path = toy.write_submission(subs, "ann", release())
    (path.parent / "00-toy-Copy1.ipynb").symlink_to(answers)       # never looked at: exact name
    job = jobs_of(subs, course)["ann"]
    assert job.status is None and job.path == path
    assert job.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_symlink_swapped_in_after_the_check_is_not_followed(tmp_path, course, answers):
    """find_notebook saw regular files; the read (O_NOFOLLOW, through the descriptor) refuses
    what replaced them: the notebook, or the lesson folder."""
    subs = tmp_path / "subs"
    for sid in ("ann", "ben"):
        toy.write_submission(subs, sid, release())
    found = {}
    for sid in ("ann", "ben"):
        found[sid] = G.find_notebook(subs / sid, toy.LESSON, toy.NOTEBOOK, [toy.LESSON])[0]
    found["ann"].unlink()
    found["ann"].symlink_to(answers)
    (subs / "ben" / toy.LESSON).rename(subs / "ben" / "moved")
    (subs / "ben" / toy.LESSON).symlink_to(answers.parent)
    for sid, path in found.items():
        job = G.Job(sid, toy.LESSON, path)
        G.read_submission(job, 1 << 20, root=subs)
        assert job.status == "invalid-notebook" and "symlink" in job.detail, job
        assert_not_read(job, answers)
    job = G.Job("ann", toy.LESSON, found["ann"])
    G.read_submission(job, 1 << 20)                       # default root: the notebook's folder
    assert job.status == "invalid-notebook" and "symlink" in job.detail


def test_zip_symlink_entries_are_refused_never_unpacked(tmp_path, course, answers):
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name in ("s1/00-toy/00-toy.ipynb", "s2_00-toy.ipynb"):
            link = zipfile.ZipInfo(name)
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, str(answers))                          # a link's data: its target
        zf.writestr("s3/00-toy/00-toy.ipynb", release())              # a normal neighbour
    inbox = G.unpack_zip(z, tmp_path / "inbox")
    assert no_links(inbox)
    assert sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file()) == \
        ["s3/00-toy/00-toy.ipynb"]
    jobs = jobs_of(inbox, course)
    assert jobs["s3"].status is None and jobs["s3"].notebook is not None
    for sid in ("s1", "s2"):
        assert jobs[sid].status == "invalid-notebook" and "symlink" in jobs[sid].detail, jobs[sid]
        assert_not_read(jobs[sid], answers)


def test_zip_entries_that_clash_with_a_folder_do_not_stop_the_others(tmp_path, course):
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("s1/00-toy", "a file where a folder must go")
        zf.writestr("s1/00-toy/00-toy.ipynb", release())
        zf.writestr("s2/00-toy/00-toy.ipynb", release())
    inbox = G.unpack_zip(z, tmp_path / "inbox")
    jobs = jobs_of(inbox, course)
    assert jobs["s2"].status is None
    assert jobs["s1"].status == "invalid-notebook" and "could not be unpacked" in jobs["s1"].detail


# ----------------------------------------------------------------------------- student ids

BAD_IDS = ["ann\n", "ann\t", "ann\r", "\nann", "a b", "ann ", "аnn",   # Cyrillic а
           "ann!", "-ann", "_ann", "ann\u200b", "ａnn", "x" * 101, "ann\x7f", "ann\x1b[31m"]


@pytest.mark.parametrize("sid", ["ann", "s1234567", "a.b@uni.edu", "x_y-z+1", "A" * 100])
def test_valid_ids_match_in_full(sid):
    assert G.STUDENT_ID.fullmatch(sid) and G.STUDENT_ID.match(sid)


@pytest.mark.parametrize("sid", BAD_IDS)
def test_invalid_ids_do_not_match_even_with_match(sid):
    assert not G.STUDENT_ID.fullmatch(sid) and not G.STUDENT_ID.match(sid)


def test_bad_ids_get_a_row_of_their_own_and_valid_ids_beside_them_are_collected(tmp_path, course):
    subs = tmp_path / "subs"
    for sid in ["ann", "ben", *BAD_IDS]:
        toy.write_submission(subs, sid, release())
    jobs = G.collect(subs, [toy.LESSON], course, 1 << 20)
    by_id = {j.student_id: j for j in jobs}
    assert len(jobs) == 2 + len(BAD_IDS)
    assert by_id["ann"].status is None and by_id["ben"].status is None
    for sid in BAD_IDS:
        job = by_id[G.shown_id(sid)]
        assert job.status == "invalid-notebook" and job.notebook is None and job.path is None
        assert job.detail == f"unusable student id {sid!r}"
        assert G.STUDENT_ID.fullmatch(job.student_id) is None
        assert not any(c in job.student_id for c in "\n\r\t\x00/") and job.student_id[0] != "."
    assert by_id["ann\\n"].detail == "unusable student id 'ann\\n'"        # reads \n, escaped


def test_a_zip_pattern_group_must_be_a_whole_id(tmp_path, course):
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a b_00-toy.ipynb", release())                   # a space: not an id
        zf.writestr("\u0664\u0667\u0661\u0661_00-toy.ipynb", release())   # Arabic-Indic digits
        zf.writestr("ann_00-toy.ipynb", release())
        zf.writestr("x_.._00-toy.ipynb", release())
    inbox = G.unpack_zip(z, tmp_path / "inbox")
    assert sorted(p.name for p in inbox.iterdir()) == ["ann", "x"]
    jobs = jobs_of(inbox, course)
    assert jobs["ann"].status is None and jobs["x"].status is None
    bad = {sid: j for sid, j in jobs.items() if sid not in ("ann", "x")}
    assert set(bad) == {"a b", "\u0664\u0667\u0661\u0661"}
    for job in bad.values():
        assert job.status == "invalid-notebook" and "unusable student id" in job.detail
        assert "whole student id" in job.detail
    # A custom pattern that captures "..": refused, nothing written outside the inbox.
    inbox = G.unpack_zip(z, tmp_path / "inbox", r"_(?P<student_id>[^_]+)_")
    assert not (tmp_path / "x_.._00-toy.ipynb").exists() and not (tmp_path / "inbox" / "..").is_symlink()
    jobs = jobs_of(inbox, course)
    assert jobs["?.."].status == "invalid-notebook" and "'..'" in jobs["?.."].detail


# ----------------------------------------------------------------------------- zip patterns, duplicates

README_PATTERNS = [   # the table in autograder/README.md: (pattern, download name, id)
    (r"^(?P<student_id>[^_]+)_", "s1234567_01-preprocessing.ipynb", "s1234567"),
    (r"^[^_]+_(?:LATE_)?(?P<student_id>\d+)_", "lovelaceada_4711_90001_01-preprocessing.ipynb", "4711"),
    (r"^[^_]+_(?:LATE_)?(?P<student_id>\d+)_", "lovelaceada_LATE_4711_90001_01-preprocessing.ipynb",
     "4711"),
    (r"_(?P<student_id>\d+)_assignsubmission_file_",
     "Ada Lovelace_4711_assignsubmission_file_01-preprocessing.ipynb", "4711"),
]


@pytest.mark.parametrize("pattern, name, sid", README_PATTERNS)
def test_the_readme_table_patterns_still_work(tmp_path, pattern, name, sid):
    assert f"`{pattern}`" in (ROOT / "autograder" / "README.md").read_text()
    z = tmp_path / "lms.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(name, release())
    inbox = G.unpack_zip(z, tmp_path / "inbox", pattern)
    assert [str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file()] == [f"{sid}/{name}"]


def test_an_unanchored_pattern_cannot_hand_a_file_to_another_students_id(tmp_path, course, answers):
    """`evil` names an upload so that `\\d+` finds 12345 in it: 12345 is not graded on evil's
    file (nor zeroed silently): the row is duplicate-id, naming both files."""
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("12345_00-toy.ipynb", release())
        zf.writestr("evil_12345_00-toy.ipynb", answers.read_bytes())
        zf.writestr("67890_00-toy.ipynb", release())
    inbox = G.unpack_zip(z, tmp_path / "inbox", r"(?P<student_id>\d+)")
    jobs = jobs_of(inbox, course)
    assert set(jobs) == {"12345", "67890"}
    assert jobs["67890"].status is None
    job = jobs["12345"]
    assert job.status == "duplicate-id" and job.notebook is None and job.path is None
    assert "12345_00-toy.ipynb" in job.detail and "evil_12345_00-toy.ipynb" in job.detail
    # The anchored pattern gives each file its own owner.
    inbox = G.unpack_zip(z, tmp_path / "inbox", r"^(?P<student_id>\d+)_")
    jobs = jobs_of(inbox, course)
    assert set(jobs) == {"12345", "67890"} and jobs["12345"].status is None
    assert jobs["12345"].path.name == "12345_00-toy.ipynb"


def test_two_files_claiming_one_student_and_lesson_are_duplicate_id(tmp_path, course):
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("s1/00-toy/00-toy.ipynb", release())            # nested, and flat, for s1
        zf.writestr("s1_00-toy.ipynb", release())
        zf.writestr("s2/00-toy/00-toy.ipynb", release())            # one name twice
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("s2/00-toy/00-toy.ipynb", release() + " ")
        zf.writestr("s3_00-toy.ipynb", release())                   # alone: fine
        zf.writestr("s3_notes.txt", "not a notebook")
    inbox = G.unpack_zip(z, tmp_path / "inbox")
    jobs = jobs_of(inbox, course)
    assert jobs["s3"].status is None
    assert jobs["s1"].status == "duplicate-id"
    assert "00-toy/00-toy.ipynb" in jobs["s1"].detail and "s1_00-toy.ipynb" in jobs["s1"].detail
    assert jobs["s2"].status == "duplicate-id" and "several zip entries" in jobs["s2"].detail
    # In folders: two notebooks under other names, neither with the lesson's own name.
    subs = tmp_path / "subs"
    (subs / "ann").mkdir(parents=True)
    for name in ("ann_00-toy.ipynb", "evil_ann_00-toy.ipynb"):
        (subs / "ann" / name).write_text(release())
    toy.write_submission(subs, "ben", release())                    # the exact name wins ...
    (subs / "ben" / toy.LESSON / "00-toy-Copy1.ipynb").write_text(release())   # ... over a copy
    jobs = jobs_of(subs, course)
    assert jobs["ann"].status == "duplicate-id" and jobs["ann"].notebook is None
    assert jobs["ann"].detail == ("2 files claim ann / 00-toy: ann_00-toy.ipynb, "
                                  "evil_ann_00-toy.ipynb")
    assert jobs["ben"].status is None and jobs["ben"].path.name == toy.NOTEBOOK


def test_flat_files_of_different_lessons_are_no_duplicate(tmp_path, course):
    second = course / "00-toy2"
    second.mkdir()
    nbformat.write(toy.source_notebook(), str(second / "00-toy2.ipynb"))
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ann_00-toy.ipynb", release())
        zf.writestr("ann_00-toy2.ipynb", release())
    inbox = G.unpack_zip(z, tmp_path / "inbox")
    jobs = jobs_of(inbox, course, G.lessons_in(course))
    assert {k: j.status for k, j in jobs.items()} == {
        ("ann", "00-toy"): None, ("ann", "00-toy2"): None}
    assert jobs[("ann", "00-toy")].path.name == "ann_00-toy.ipynb"


# ----------------------------------------------------------------------------- end to end, no kernels

def test_grade_rows_for_refused_submissions_and_a_kept_earlier_grade(tmp_path, course, answers,
                                                                     monkeypatch):
    """grade() with nothing to run: every row is decided at intake. A duplicate-id keeps the
    student's earlier grade (flagged), or is a 0 when there is none; a bad id stops nobody."""
    graded_now = []

    def fake_shards(out, todo, *a, **k):                     # no kernels: record what would run
        graded_now.extend(todo)
        return [G.Row(j.student_id, j.lesson, 3.0, 3.0, G.GRADED, j.detail, j.sha256,
                      a[-2][j.lesson], a[-1]) for j in todo], 0.0

    monkeypatch.setattr(G, "_run_shards", fake_shards)
    subs = tmp_path / "subs"
    for sid in ("12345", "67890"):
        (subs / sid).mkdir(parents=True)
        for name in (f"{sid}_00-toy.ipynb", f"evil_{sid}_00-toy.ipynb"):
            (subs / sid / name).write_text(release())
    toy.write_submission(subs, "ann\n", release())
    (subs / "eve").mkdir()
    (subs / "eve" / toy.NOTEBOOK).symlink_to(answers)
    toy.write_submission(subs, "ok", release())
    out = tmp_path / "out"
    out.mkdir()
    sha = lambda data: hashlib.sha256(data).hexdigest()            # noqa: E731
    G.write_grades(out / "grades.csv", [G.Row(   # 12345's file, graded earlier (same lesson)
        "12345", toy.LESSON, 2.5, 3.0, G.GRADED, "", sha(release().encode()),
        sha(answers.read_bytes()), "2026-01-01T00:00:00")])
    settings = G.Settings(sandbox=False)
    rows = {r.student_id: r for r in G.grade(toy.LESSON, subs, out, source=course, progress=False,
                                             settings=settings, log=lambda s: None)}
    assert [j.student_id for j in graded_now] == ["ok"]
    assert (rows["ok"].status, rows["ann\\n"].status, rows["eve"].status) == (
        G.GRADED, "invalid-notebook", "invalid-notebook")
    kept, zero = rows["12345"], rows["67890"]
    assert (kept.status, kept.score, kept.max_score, kept.graded_at) == (
        "duplicate-id", 2.5, 3.0, "2026-01-01T00:00:00")
    assert "evil_12345_00-toy.ipynb" in kept.detail and "earlier grade 2.5/3" in kept.detail
    assert (zero.status, zero.score, zero.max_score) == ("duplicate-id", 0.0, 3.0)
    assert "evil_67890_00-toy.ipynb" in zero.detail and "earlier" not in zero.detail
    csv_rows = G.read_grades(out / "grades.csv")
    assert csv_rows[("12345", toy.LESSON)] == kept and csv_rows[("67890", toy.LESSON)] == zero
    assert "duplicate-id" in (out / "feedback" / "67890" / toy.LESSON / "00-toy.html").read_text()
    assert not (out / "feedback" / "12345").exists()         # the earlier feedback is not replaced
    # Again with the duplicate still there: the same kept grade; resolved: graded again, even
    # though the remaining file is the one graded before.
    again = {r.student_id: r for r in G.grade(toy.LESSON, subs, out, source=course, progress=False,
                                              settings=settings, log=lambda s: None)}
    assert (again["12345"].score, again["12345"].graded_at) == (2.5, "2026-01-01T00:00:00")
    (subs / "12345" / "evil_12345_00-toy.ipynb").unlink()
    graded_now.clear()
    G.grade(toy.LESSON, subs, out, source=course, progress=False, settings=settings,
            log=lambda s: None)
    assert "12345" in [j.student_id for j in graded_now]
    assert G.read_grades(out / "grades.csv")[("12345", toy.LESSON)].status == G.GRADED
