"""`fpnlab grade`: autograde a class's submissions with nbgrader, each notebook in a sandbox.

    fpnlab grade 01-preprocessing submissions/ --out graded/ --workers 2

What nbgrader does not do by itself, and this module adds (see autograder/README.md):

- takes a folder ``<student>/<lesson>/<notebook>.ipynb`` (nbgrader's ``submitted/``), a folder
  ``<student>/<notebook>.ipynb``, or an LMS ``.zip`` (``<student>_<anything>.ipynb``, or any
  ``--zip-pattern``);
- reads every submission itself first: a file that is not a notebook, too large or missing gets
  a status and a 0 without reaching nbgrader; outputs are dropped, duplicated grade cells are
  turned into plain cells (nbgrader #1083), the kernelspec is the course's;
- runs learner code only in the bubblewrap kernel of :mod:`autograder.sandbox` (no network, no
  repository, course directory, gradebook or other submissions, rlimits, a wall-clock limit),
  one warm sandbox per student that imports torch once and forks a kernel per notebook
  (:mod:`autograder.warmkernel`);
- grades ``--workers N`` shards at once, each an nbgrader course of its own with its own sqlite
  gradebook, and merges them into ``OUT/gradebook.db`` from this one process; or, with
  ``--scheduler ADDRESS``, sends the shards to a Dask cluster and merges what each returns
  (:mod:`autograder.distributed`);
- writes feedback HTML without hidden tests or tracebacks (nbgrader #1363), but with each failed
  test's message;
- keeps ``OUT/grades.csv`` across runs: a submission whose bytes and lesson did not change keeps
  its row, everything else is graded again; no row is ever dropped.
"""
from __future__ import annotations

import csv
import hashlib
import argparse
import html
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import nbformat

from . import sandbox, warmkernel

from . import judge as judging

HERE = Path(__file__).resolve().parent
# nbgrader's configuration ships with this package: the course's, then the grading settings.
COURSE_CONFIG = HERE / "nbgrader_config.py"
GRADING_CONFIG = HERE / "grading" / "nbgrader_config.py"

GRADED = "graded"
# status -> what it means (README and feedback quote these)
STATUSES = {
    GRADED: "graded by nbgrader",
    "missing-notebook": "no notebook for this lesson in the student's folder",
    "invalid-notebook": "the file is not a readable Jupyter notebook (broken JSON, binary ...)",
    "too-large": "the file is larger than the grader accepts",
    "timeout": "the notebook ran longer than the wall-clock limit and was stopped",
    "killed": "the kernel died (killed by a signal: memory, a crash)",
    "error": "nbgrader could not grade it (see detail); graded again on the next run",
    "duplicate-id": "two or more files claim this student's notebook for this lesson (detail "
                    "names them): none is graded, and an earlier grade is kept",
}
CSV_FIELDS = ["student_id", "lesson", "score", "max_score", "status", "detail", "sha256",
              "source_sha256", "graded_at"]
# The whole name (fullmatch, \Z: "$" would also match before a trailing newline).
STUDENT_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}\Z")
GRADER_MARKS = (judging.HANDOVER_MARK,)    # lines the grader adds to test cells
MAX_OUTPUT = 2 << 20          # bytes of cell output one notebook may send back
MAX_HAND_OVER = 64 << 20      # bytes the test cells of one notebook may hand over to the judge
MAX_ZIP = 2 << 30             # bytes a zip may unpack to


class UsageError(Exception):
    """A bad invocation: the command prints the message and exits non-zero."""


@dataclass
class Row:
    student_id: str
    lesson: str
    score: float = 0.0
    max_score: float = 0.0
    status: str = GRADED
    detail: str = ""
    sha256: str = ""
    source_sha256: str = ""
    graded_at: str = ""


@dataclass
class Job:
    """One (student, lesson): where the submission is, or why there is none."""

    student_id: str
    lesson: str
    path: Optional[Path] = None
    status: Optional[str] = None          # set when decided without running anything
    detail: str = ""
    sha256: str = ""
    notebook: Optional[nbformat.NotebookNode] = field(default=None, repr=False)
    # nbgrader's exchange files beside the notebook (collect's timestamp.txt and
    # submission_secret.txt): they go on to autograded/ and feedback/, where
    # `nbgrader release_feedback` needs them.
    exchange: Dict[str, str] = field(default_factory=dict, repr=False)


# ----------------------------------------------------------------------------- course

def lessons_in(source: Path) -> List[str]:
    """Assignments of a course source folder: one folder per lesson holding a notebook."""
    if not source.is_dir():
        raise UsageError(f"course source {source} is not a folder")
    return sorted(p.name for p in source.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.ipynb")))


def notebook_name(source: Path, lesson: str) -> str:
    names = sorted(p.name for p in (source / lesson).glob("*.ipynb"))
    if len(names) != 1:
        raise UsageError(f"lesson {lesson} must hold exactly one notebook, found {names}")
    return names[0]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepare_course(out: Path, source: Path, lessons: List[str]) -> Dict[str, str]:
    """OUT as an nbgrader course: the grader's copy of the source (each test cell hands over),
    the config, the gradebook with each lesson generated. Returns lesson -> source hash."""
    out.mkdir(parents=True, exist_ok=True)
    write_config(out)
    state_path = out / "grading" / "sources.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    hashes = {}
    changed = []
    for lesson in lessons:
        name = notebook_name(source, lesson)
        raw = (source / lesson / name).read_bytes()
        hashes[lesson] = _sha(raw)
        dest = out / "solutions" / lesson
        if state.get(lesson) == hashes[lesson] and (out / "gradebook.db").exists():
            continue
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(source / lesson, dest,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
        nbformat.write(judging.inject(nb), str(dest / name))
        changed.append(lesson)
    if changed:
        # One nbgrader process (its start-up costs about 2 s): several lessons go as the glob
        # "*", which also regenerates, unchanged, any lesson OUT already had.
        assignment = changed[0] if len(changed) == 1 else "*"
        try:
            run_nbgrader(["generate_assignment", assignment, "--force"], out, check=True)
        except RuntimeError as e:
            raise UsageError(f"nbgrader could not generate {', '.join(changed)} in {out} (did a "
                             f"lesson change in a way the gradebook's submissions forbid? grade "
                             f"into a new --out): {str(e)[-1500:]}") from None
        state.update({lesson: hashes[lesson] for lesson in changed})
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(state, indent=1))
    return hashes


def write_config(course: Path) -> None:
    (course / "nbgrader_config.py").write_text(
        "# Written by `fpnlab grade`: the course settings, then the grading settings. nbgrader\n"
        "# commands run in this folder (export, formgrader, generate_feedback, release_feedback)\n"
        "# work on this folder's gradebook.\n"
        "import os\n"
        "c = get_config()  # noqa: F821\n"
        f"load_subconfig({str(COURSE_CONFIG)!r})  # noqa: F821\n"
        f"load_subconfig({str(GRADING_CONFIG)!r})  # noqa: F821\n"
        "c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))\n")


def run_nbgrader(args: List[str], course: Path, env: Optional[dict] = None, check: bool = False,
                 timeout: Optional[float] = None, one_thread: bool = True
                 ) -> subprocess.CompletedProcess:
    """nbgrader ``args`` on the course folder ``course``, with the venv's bin/ on PATH. Grading
    runs it (and what it starts) on one thread per process (``one_thread``): the workers share
    the cores; the release and round-trip tools leave torch its threads."""
    full = dict(os.environ)
    full.update(env or {})
    full["FPNLAB_COURSE_ROOT"] = str(course)
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    for var in sandbox.THREAD_VARS if one_thread else ():
        full.setdefault(var, "1")
    try:
        proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=full,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        proc = subprocess.CompletedProcess(e.cmd, -9, e.stdout or "", (e.stderr or "") +
                                           f"\nnbgrader ran longer than {timeout:.0f} s")
    if check and proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# ----------------------------------------------------------------------------- submissions

ZIP_PATTERN = r"^(?P<student_id>[^_]+)_"
INTAKE = ".fpnlab-intake.json"     # unpack_zip's record for collect, next to the unpacked folder


def _intake_path(folder: Path) -> Path:
    """Where :func:`unpack_zip` records what it refused: ``inbox`` -> ``inbox.fpnlab-intake.json``."""
    return folder.parent / (folder.name + INTAKE)


class DuplicateClaim(Exception):
    """Several files claim one student's notebook for one lesson: none of them is graded."""

    def __init__(self, names: List[str]):
        super().__init__(", ".join(names))
        self.names = names


def shown_id(sid: str) -> str:
    """``sid`` as a row may hold it: itself when valid, else escaped (repr, so a newline reads
    ``\\n``), never hidden, empty, '..' or longer than a file name allows."""
    if STUDENT_ID.fullmatch(sid):
        return sid
    shown = repr(sid)[1:-1][:120]
    return shown if shown and not shown.startswith(".") else "?" + shown


def _kind(path: Path) -> Optional[str]:
    """'link', 'dir', 'file' or 'other' for ``path`` itself (a symlink is never followed), or
    None when there is nothing there."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def unpack_zip(zpath: Path, dest: Path, pattern: str = ZIP_PATTERN) -> Path:
    """Unpack an LMS zip safely (no absolute paths, no '..', no symlinks, a size cap) into ``dest``.

    Entries inside folders keep their layout (``<student>/<lesson>/<nb>.ipynb``). A flat entry
    goes to ``<student>/<its name>`` where ``pattern`` (a regular expression with a group
    ``student_id``, searched in the file name) finds the student id; by default the text before
    the first underscore: ``<student>_<anything>.ipynb``. Entries it does not match are skipped.
    What the group captures must be a whole student id (``STUDENT_ID``), else the entry is refused.
    Symlink entries are refused, never unpacked, and an entry name seen twice is unpacked once.
    ``<dest>.fpnlab-intake.json`` (next to ``dest``) records, for :func:`collect`, the refused
    entries, the repeated names and which flat entries went to which student (two files
    claiming one student's lesson are a ``duplicate-id``, not a silent winner).
    """
    import stat

    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise UsageError(f"--zip-pattern {pattern!r} is not a regular expression ({e})") from None
    if "student_id" not in regex.groupindex:
        raise UsageError(f"--zip-pattern {pattern!r} has no (?P<student_id>...) group")
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError) as e:
        raise UsageError(f"{zpath} is not a readable zip file ({e})") from None
    if dest.exists():
        shutil.rmtree(dest)
    _intake_path(dest).unlink(missing_ok=True)
    dest.mkdir(parents=True)
    refused: List[dict] = []
    flat: Dict[str, List[str]] = {}
    written: Dict[str, List[str]] = {}        # "<student>/<...>" -> the entries of that name
    with zf:
        # The cap first, from the zip's own directory: a refused zip unpacks nothing.
        if sum(i.file_size for i in zf.infolist() if not i.is_dir()) > MAX_ZIP:
            raise UsageError(f"{zpath} unpacks to more than {MAX_ZIP >> 20} MB")
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = [p for p in Path(info.filename.replace("\\", "/")).parts if p not in ("", ".")]
            if not parts or ".." in parts or info.filename.startswith("/") or \
                    any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            is_flat = len(parts) == 1
            if is_flat:
                match = regex.search(parts[0])
                if not match or not match.group("student_id"):
                    continue
                sid = match.group("student_id")
                if not STUDENT_ID.fullmatch(sid):
                    refused.append({"student_id": sid, "path": parts[0], "entry": info.filename,
                                    "why": f"--zip-pattern took {sid!r} from {info.filename!r}, "
                                           "which is not a whole student id"})
                    continue
                parts = [sid, parts[0]]
            rel = "/".join(parts)
            if stat.S_ISLNK(info.external_attr >> 16):
                refused.append({"student_id": parts[0], "path": rel, "entry": info.filename,
                                "why": f"zip entry {info.filename!r} is a symlink: not unpacked"})
                continue
            if rel in written:
                written[rel].append(info.filename)
                continue
            target = dest.joinpath(*parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                # "x": a new file, never through anything already there
                with zf.open(info) as src, open(target, "xb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as e:
                if _kind(target) == "file":
                    target.unlink()
                refused.append({"student_id": parts[0], "path": rel, "entry": info.filename,
                                "why": f"zip entry {info.filename!r} could not be unpacked "
                                       f"({type(e).__name__}: {e})"[:300]})
                continue
            written[rel] = [info.filename]
            if is_flat:
                flat.setdefault(parts[0], []).append(parts[1])
    record = {"refused": refused, "flat": flat,
              "repeated": {rel: names for rel, names in written.items() if len(names) > 1}}
    _intake_path(dest).write_text(json.dumps(record, indent=1))
    return dest


def _intake(submissions: Path) -> dict:
    """What :func:`unpack_zip` recorded about ``submissions`` (nothing for a plain folder)."""
    record = {"refused": [], "flat": {}, "repeated": {}}
    path = _intake_path(submissions)
    if _kind(path) == "file":
        try:
            got = json.loads(path.read_text())
            record.update({k: got[k] for k in record if isinstance(got.get(k), type(record[k]))})
        except (OSError, ValueError):
            pass
    return record


def _claims(name: str, lesson: str, expected: str, lessons: List[str]) -> bool:
    """Whether a notebook called ``name`` says it is ``lesson``'s. LMS downloads decorate names
    ("01-preprocessing-1.ipynb", "copy of 01-preprocessing"): the longest lesson name found in
    the file name says whose notebook it is."""
    stem = Path(expected).stem
    found = [n for n in set(lessons) | {stem, lesson} if n in Path(name).stem]
    return bool(found) and max(found, key=len) in (stem, lesson)


def collect(submissions: Path, lessons: List[str], source: Path, max_bytes: int) -> List[Job]:
    """One Job per (student folder, lesson), and per student of a zip entry :func:`unpack_zip`
    refused. Nothing is followed through a symlink; a bad id, a symlink or two files claiming
    one (student, lesson) settle that row's status without touching the others."""
    intake = _intake(submissions)
    students: Dict[str, Optional[str]] = {}
    with os.scandir(submissions) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                students[entry.name] = "link"
            elif entry.is_dir(follow_symlinks=False):
                students[entry.name] = "dir"
    for r in intake["refused"]:
        if isinstance(r, dict) and isinstance(r.get("student_id"), str):
            students.setdefault(r["student_id"], None)
    expected = {lesson: notebook_name(source, lesson) for lesson in lessons}
    jobs = []
    for sid in sorted(students):
        student_dir = submissions / sid
        refused = [r for r in intake["refused"] if isinstance(r, dict) and r.get("student_id") == sid]
        for lesson in lessons:
            job = Job(shown_id(sid), lesson)
            jobs.append(job)
            if not STUDENT_ID.fullmatch(sid):
                job.status = "invalid-notebook"
                job.detail = _join(f"unusable student id {sid!r}", *(str(r.get("why", ""))
                                                                    for r in refused[:1]))
                continue
            if students[sid] == "link":
                job.status, job.detail = "invalid-notebook", f"{sid} is a symlink: not followed"
                continue
            bad = [r for r in refused if _refused_claims(r, sid, lesson, expected[lesson], lessons)]
            if bad:
                job.status, job.detail = "invalid-notebook", str(bad[0].get("why", "refused"))
                continue
            try:
                job.path, job.detail = find_notebook(student_dir, lesson, expected[lesson], lessons)
            except DuplicateClaim as e:
                job.status = "duplicate-id"
                job.detail = f"{len(e.names)} files claim {sid} / {lesson}: {', '.join(e.names)}"
                continue
            if job.path is None:
                job.status = "missing-notebook"
                continue
            rel = job.path.relative_to(submissions).as_posix()
            others = [n for n in intake["flat"].get(sid, []) if isinstance(n, str)
                      and f"{sid}/{n}" != rel and _claims(n, lesson, expected[lesson], lessons)]
            repeated = intake["repeated"].get(rel)
            if others or repeated:
                names = [str(n) for n in repeated] if repeated else \
                    [job.path.relative_to(student_dir).as_posix(), *others]
                job.status, job.path = "duplicate-id", None
                job.detail = (f"{len(names)} files claim {sid} / {lesson}: {', '.join(names)}"
                              + (" (one name, several zip entries)" if repeated else ""))
                continue
            read_submission(job, max_bytes, root=submissions)
    return jobs


def _refused_claims(r: dict, sid: str, lesson: str, expected: str, lessons: List[str]) -> bool:
    """Whether the refused zip entry ``r`` of student ``sid`` would have been their ``lesson``."""
    parts = str(r.get("path", "")).split("/")[1:] if "/" in str(r.get("path", "")) else \
        [str(r.get("path", ""))]
    if len(parts) > 1:
        return parts[0] == lesson
    name = parts[-1]
    return name.endswith(".ipynb") and (name == expected or len(lessons) == 1
                                        or _claims(name, lesson, expected, lessons))


def _notebooks(folder: Path) -> List[Path]:
    """The notebooks in ``folder`` (symlinks too: they are refused when read, never followed)."""
    try:
        with os.scandir(folder) as it:
            return sorted(folder / e.name for e in it if e.name.endswith(".ipynb")
                          and not e.name.startswith(".")
                          and (e.is_symlink() or e.is_file(follow_symlinks=False)))
    except OSError:
        return []


def _renamed(name: str, expected: str) -> str:
    """The note for a notebook graded under another name; none for an LMS download's name
    (``<student>_<anything>_<expected>``), which every student of a zip has."""
    return "" if name.endswith("_" + expected) else f"graded {name} (expected {expected})"


def find_notebook(student_dir: Path, lesson: str, expected: str, lessons: List[str]
                  ) -> Tuple[Optional[Path], str]:
    """The student's notebook for ``lesson`` and a note when it was found under another name.

    A symlink found on the way (the lesson folder, the notebook) is returned as it is, for
    :func:`read_submission` to refuse. Raises :class:`DuplicateClaim` when several notebooks
    under other names claim the lesson and none has its name.
    """
    lesson_dir = student_dir / lesson
    for folder in (lesson_dir, student_dir):
        kind = _kind(folder)
        if kind == "link":
            return folder, ""
        if kind != "dir":
            continue
        exact = folder / expected
        if _kind(exact) in ("file", "link"):
            return exact, ""
        candidates = _notebooks(folder)
        near = [p for p in candidates if _claims(p.name, lesson, expected, lessons)]
        if len(near) == 1:
            return near[0], _renamed(near[0].name, expected)
        if len(near) > 1:
            raise DuplicateClaim([p.relative_to(student_dir).as_posix() for p in near])
        if folder == lesson_dir and len(candidates) == 1:
            return candidates[0], _renamed(candidates[0].name, expected)
    flat = _notebooks(student_dir) if _kind(student_dir) == "dir" else []
    if len(lessons) == 1 and len(flat) == 1 and _kind(lesson_dir) is None:
        return flat[0], _renamed(flat[0].name, expected)
    seen = []
    if _kind(student_dir) == "dir":
        for top, dirs, files in os.walk(student_dir):       # never into a symlinked folder
            seen += [str((Path(top) / f).relative_to(student_dir)) for f in files]
    seen = sorted(seen)[:5]
    return None, f"no {expected}; found {seen}" if seen else f"no {expected}; the folder is empty"


class _Refused(Exception):
    """(status, detail): a submission refused while reading it."""


def _read_below(root: Path, path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` below the folder ``root``, opened one component
    at a time with O_NOFOLLOW (and read through that descriptor), so no symlink below ``root``
    is followed, even one swapped in after :func:`find_notebook` looked. Raises :class:`_Refused`
    (status, detail) for a symlink, a file that is not regular, or one over ``max_bytes``."""
    import errno
    import stat

    parts = path.relative_to(root).parts
    nofollow = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | nofollow | (getattr(os, "O_NONBLOCK", 0) if last
                                              else getattr(os, "O_DIRECTORY", 0))
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                try:
                    link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                except OSError:
                    link = False
                if link or e.errno in (errno.ELOOP, errno.EMLINK):
                    raise _Refused("invalid-notebook",
                                     f"{'/'.join(parts[:i + 1])} is a symlink: not followed") from None
                raise
            os.close(fd)
            fd = nfd
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("invalid-notebook", f"{path.name}: not a regular file")
        if st.st_size > max_bytes:
            raise _Refused("too-large", f"{path.name}: {st.st_size} bytes > {max_bytes}")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:                      # it grew after fstat
            raise _Refused("too-large", f"{path.name}: more than {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_submission(job: Job, max_bytes: int, root: Optional[Path] = None) -> None:
    """Read and clean the notebook, or set an invalid-notebook / too-large status.

    The file is read through a descriptor opened without following symlinks anywhere below
    ``root`` (the submissions folder; by default the notebook's own folder): a symlinked
    notebook or folder is ``invalid-notebook`` and never read."""
    job.exchange = exchange_files(Path(root) if root is not None else job.path.parent, job.path)
    try:
        raw = _read_below(Path(root) if root is not None else job.path.parent, job.path, max_bytes)
    except _Refused as e:
        job.status, job.detail = e.args
        return
    except OSError as e:
        job.status = "invalid-notebook"
        job.detail = f"{job.path.name}: cannot be read ({e.strerror or type(e).__name__})"
        return
    job.sha256 = _sha(raw)
    try:
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
        cells = nb.get("cells")
        if not isinstance(cells, list):
            raise ValueError("no list of cells")
    except Exception as e:  # noqa: BLE001 (whatever the file is, it is not a notebook)
        job.status = "invalid-notebook"
        job.detail = f"{job.path.name}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        return
    job.notebook, notes = clean_notebook(nb)
    job.detail = "; ".join(x for x in [job.detail, *notes] if x)


# What nbgrader's exchange leaves beside a collected notebook, and what each may hold.
EXCHANGE_FILES = {"timestamp.txt": re.compile(r"[0-9][0-9A-Za-z :.\-+]{9,40}"),
                  "submission_secret.txt": re.compile(r"[0-9a-f]{16,256}")}


def exchange_files(root: Path, notebook: Path) -> Dict[str, str]:
    """The exchange's files next to ``notebook`` that are what nbgrader writes (read without
    following symlinks, a few bytes each); anything else there is ignored."""
    found = {}
    for name, shape in EXCHANGE_FILES.items():
        try:
            text = _read_below(root, notebook.parent / name, 512).decode("ascii").strip()
        except (_Refused, OSError, UnicodeDecodeError):
            continue
        if shape.fullmatch(text):
            found[name] = text
    return found


def clean_notebook(nb) -> Tuple[nbformat.NotebookNode, List[str]]:
    """A fresh notebook with only cell types, sources and nbgrader metadata: no outputs,
    attachments or widget state; later copies of a duplicated grade id become plain cells."""
    clean = nbformat.v4.new_notebook()
    seen, notes = set(), []
    for cell in nb.get("cells", []):
        if not isinstance(cell, dict):
            continue
        kind, src = cell.get("cell_type"), cell.get("source", "")
        if isinstance(src, list):
            src = "".join(str(s) for s in src)
        if not isinstance(src, str):
            continue
        if kind == "code":
            new = nbformat.v4.new_code_cell(src)
        elif kind == "markdown":
            new = nbformat.v4.new_markdown_cell(src)
        elif kind == "raw":
            new = nbformat.v4.new_raw_cell(src)
        else:
            continue
        meta = (cell.get("metadata") or {}).get("nbgrader")
        if isinstance(meta, dict) and meta.get("grade_id"):
            gid = str(meta["grade_id"])
            if gid in seen:
                notes.append(f"duplicated cell {gid!r} graded once")
            else:
                seen.add(gid)
                new.metadata["nbgrader"] = json.loads(json.dumps(meta))
        clean.cells.append(new)
    return clean, notes


# ----------------------------------------------------------------------------- grading

@dataclass
class Settings:
    timeout: float = 600.0
    memory: int = 6 << 30
    nproc: int = 256
    sandbox: bool = True
    max_bytes: int = 20 << 20
    warm: bool = True          # a warm sandbox per student (autograder.warmkernel); needs the sandbox


def _kernel_dir(course: Path) -> Path:
    """JUPYTER_PATH entry whose kernelspecs (fpnlab, python3) start the sandboxed kernel."""
    jdir = course / "grading" / "jupyter"
    for name in ("fpnlab", "python3"):
        kdir = jdir / "kernels" / name
        kdir.mkdir(parents=True, exist_ok=True)
        (kdir / "kernel.json").write_text(json.dumps(sandbox.kernelspec(), indent=1))
    return jdir


class Shard:
    """One worker: an nbgrader course of its own (copy of OUT's gradebook), graded in order."""

    def __init__(self, out: Path, index: int, settings: Settings, run_id: Optional[str] = None):
        self.index, self.settings = index, settings
        # A uid of its own per worker and per grading run (as root): the process limit counts
        # per uid, so a fork bomb here cannot starve another worker's kernel.
        self.uid = sandbox.DEFAULT_UID + (os.getpid() % 4096) * 16 + index % 16
        self.path = out / "grading" / "shards" / str(index)
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        shutil.copytree(out / "solutions", self.path / "solutions")
        shutil.copy2(out / "gradebook.db", self.path / "gradebook.db")
        write_config(self.path)
        self.jupyter = _kernel_dir(self.path)
        # A short path: unix socket names must stay under 108 bytes. Private to the grader (0700,
        # never given to the kernel's uid, never seen by a sandbox): the connection file, and the
        # kernel's sockets, which the launcher binds itself and hands over as descriptors.
        self.runtime = Path(tempfile.mkdtemp(prefix="fpnlab-rt-"))
        self.status_dir = self.path / "grading" / "status"
        self.status_dir.mkdir(parents=True)
        self.chunks = 0
        # Names this shard's logs in OUT/grading/logs/ (``<run_id>-shard<index>-<log>``).
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S")

    def env(self) -> dict:
        limits = sandbox.Limits(timeout=self.settings.timeout, memory=self.settings.memory,
                                nproc=self.settings.nproc, sandbox=self.settings.sandbox,
                                uid=self.uid, warm=self.settings.warm and self.settings.sandbox)
        env = {"JUPYTER_PATH": str(self.jupyter), "JUPYTER_RUNTIME_DIR": str(self.runtime),
               "FPNLAB_GRADE_TIMEOUT": str(int(self.settings.timeout) + 5),
               "FPNLAB_SANDBOX_STATUS": str(self.status_dir), **limits.to_env()}
        if self.settings.sandbox:
            env["FPNLAB_GRADE_IPC"] = str(self.runtime / "k")
            env["FPNLAB_SANDBOX_RUNTIME"] = str(self.runtime)
        return env

    def grade(self, jobs: List[Job]) -> List[Row]:
        """Autograde ``jobs`` (of one lesson or several) with one nbgrader run; one Row per job."""
        lessons = sorted({job.lesson for job in jobs})
        names = {lesson: notebook_name(self.path / "solutions", lesson) for lesson in lessons}
        shutil.rmtree(self.path / "submitted", ignore_errors=True)   # only this chunk's notebooks
        for job in jobs:
            shutil.rmtree(self.path / "autograded" / job.student_id / job.lesson, ignore_errors=True)
            folder = self.path / "submitted" / job.student_id / job.lesson
            folder.mkdir(parents=True)
            nbformat.write(job.notebook, str(folder / names[job.lesson]))
            for name, text in job.exchange.items():
                (folder / name).write_text(text)
            self.status(job).unlink(missing_ok=True)
        for leftover in self.runtime.iterdir():       # only what this grader made: never followed
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        self.chunks += 1
        # The judge starts (imports torch, reads the lessons) while nbgrader runs the notebooks.
        if getattr(self, "judge", None) is None:
            self.judge = judging.Client()
        self.judge.prepare([self.path / "solutions" / lesson / names[lesson] for lesson in lessons])
        # One nbgrader process for the whole chunk, whatever its lessons: submitted/ holds only
        # this chunk's notebooks, and nbgrader reads the assignment name as a glob.
        assignment = lessons[0] if len(lessons) == 1 else "*"
        try:
            proc = run_nbgrader(["autograde", assignment, "--create", "--force"], self.path,
                                env=self.env(), timeout=len(jobs) * (self.settings.timeout + 60) + 120)
        finally:
            warmkernel.stop(str(self.status_dir))      # the last student's warm sandbox
        label = lessons[0] if len(lessons) == 1 else f"{len(lessons)}-lessons"
        log = self.path / "grading" / "logs" / f"{label}-{self.chunks}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ nbgrader autograde {assignment} (exit {proc.returncode})\n"
                       f"{proc.stdout}\n{proc.stderr}")
        keep = self.path / "grading" / "submitted"
        for job in jobs:
            dest = keep / job.student_id / job.lesson
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.path / "submitted" / job.student_id / job.lesson), str(dest))
        rows = [self._row(job, names[job.lesson], proc, log) for job in jobs]
        for job, row in zip(jobs, rows):
            if row.status == GRADED:
                self._judge(job, row, names[job.lesson])
        return rows

    def _judge(self, job: Job, row: Row, name: str) -> None:
        """The score from the trusted judge (never from the kernel's own pass/fail)."""
        start = time.perf_counter()
        if getattr(self, "judge", None) is None:
            self.judge = judging.Client()
        source = self.path / "solutions" / job.lesson / name
        try:
            row.score, _ = judging.apply(self.path, job.lesson, job.student_id, name, source,
                                         self.judge)
        except Exception as e:  # noqa: BLE001 (never a silent 0: an error row, retried next run)
            row.status, row.score = "error", 0.0
            row.detail = _join(row.detail, f"judge: {e}"[:300])
            self.judge.close()
            self.judge = None
            return
        finally:
            self.judge_seconds = getattr(self, "judge_seconds", 0.0) + time.perf_counter() - start

    def status(self, job: Job) -> Path:
        return Path(sandbox.status_file(str(self.status_dir),
                                        str(Path("autograded") / job.student_id / job.lesson)))

    def _row(self, job: Job, name: str, proc: subprocess.CompletedProcess, log: Path) -> Row:
        status_path = self.status(job)
        kernel = json.loads(status_path.read_text()) if status_path.exists() else {}
        row = Row(job.student_id, job.lesson, sha256=job.sha256, detail=job.detail)
        autograded = self.path / "autograded" / job.student_id / job.lesson / name
        if kernel.get("status") == "timeout":
            row.status = "timeout"
            row.detail = _join(row.detail, f"stopped after {kernel.get('limit', 0):g} s")
        elif kernel.get("status") == "error":              # the sandbox could not start
            row.status = "error"
            why = str(kernel.get("detail", "the sandbox did not start"))
            if kernel.get("log"):                           # the shard's logs, as merged into OUT
                why += f" (log: grading/logs/{self.run_id}-shard{self.index}-{kernel['log']})"
            row.detail = _join(row.detail, why)
        elif kernel.get("status") == "killed":
            row.status = "killed"
            row.detail = _join(row.detail, f"kernel killed by signal {kernel.get('signal')}")
        elif not autograded.exists() or (f"assignment '{job.lesson}' for student '{job.student_id}'"
                                         in proc.stdout + proc.stderr):
            row.status = "error"
            row.detail = _join(row.detail, f"{_nbgrader_error(proc)} (log: grading/logs/"
                                           f"{self.run_id}-shard{self.index}-{log.name})")
        if row.status == GRADED:
            row.max_score = self.max_score(job.lesson)
        else:
            row.max_score = self.max_score(job.lesson)
        return row

    def score(self, lesson: str, student: str) -> Tuple[float, float]:
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.path / 'gradebook.db'}") as gb:
            sub = gb.find_submission(lesson, student)
            return float(sub.score), float(sub.max_score)

    def max_score(self, lesson: str) -> float:
        return max_score(self.path, lesson)

    def feedback(self, lessons: List[str]) -> str:
        """nbgrader's feedback HTML for this shard's autograded notebooks of ``lessons`` (one
        nbgrader process for them all); '' or the error."""
        if not lessons:
            return ""
        assignment = lessons[0] if len(lessons) == 1 else "*"
        proc = run_nbgrader(["generate_feedback", assignment, "--force"], self.path,
                            env={"JUPYTER_PATH": str(self.jupyter)}, timeout=600)
        for lesson in lessons:
            for page in (self.path / "feedback").glob(f"*/{lesson}/*.html"):
                page.write_text(finish_feedback_page(page.read_text()))
        return "" if proc.returncode == 0 else _nbgrader_error(proc)

    def close(self):
        warmkernel.stop(str(self.status_dir))
        shutil.rmtree(self.runtime, ignore_errors=True)


# nbgrader's feedback page, finished: readable offline (no MathJax from a CDN: the page travels
# through an LMS and is opened anywhere), messages wrapped instead of clipped, and each test of
# the contents named by its grade id.
_REMOTE_SCRIPT = re.compile(r"<script[^>]*\ssrc=[\"']?https?://[^>]*>\s*</script>", re.I)
_MATHJAX_CONFIG = re.compile(r"<!-- MathJax configuration -->\s*<script type=\"text/x-mathjax-config\">"
                             r".*?</script>", re.S)
_TOC_TEST = re.compile(r'<li><a href="#([A-Za-z0-9_.\-]+)">Test cell</a>')
WRAP_CSS = ("<style>div.output_area pre, div.output_subarea pre { white-space: pre-wrap; "
            "overflow-wrap: anywhere; word-break: normal; }</style>\n")


def finish_feedback_page(text: str) -> str:
    text = _MATHJAX_CONFIG.sub("", _REMOTE_SCRIPT.sub("", text))
    text = _TOC_TEST.sub(lambda m: f'<li><a href="#{m.group(1)}">Test <code>{m.group(1)}</code></a>', text)
    if WRAP_CSS not in text:
        text = text.replace("</head>", WRAP_CSS + "</head>", 1)
    return text


def max_score(course: Path, lesson: str) -> float:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return float(gb.find_assignment(lesson).max_score)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _nbgrader_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() + (proc.stdout or "").splitlines()
             if "ERROR" in ln or "Error" in ln or "rror:" in ln]
    return (lines[-1] if lines else f"nbgrader exited with {proc.returncode}")[:300]


# ----------------------------------------------------------------------------- merge

def merge(out: Path, course: Path, lesson: str, students: List[str],
          submitted: Optional[Path] = None) -> None:
    """Copy the grades of ``students`` for ``lesson`` from the nbgrader course ``course`` (a
    shard, or another machine's OUT) into OUT's gradebook (one writer: this process), and their
    submitted / autograded / feedback folders into OUT."""
    import warnings

    from nbgrader.api import Gradebook, MissingEntry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # SQLAlchemy chatter from nbgrader's API
        _merge_db(out, course, lesson, students, Gradebook, MissingEntry)
    for student in students:
        for top in ("submitted", "autograded", "feedback"):
            src_dir = ((submitted or course / "submitted") if top == "submitted"
                       else course / top) / student / lesson
            dst_dir = out / top / student / lesson
            if src_dir.exists():
                if dst_dir.exists():
                    shutil.rmtree(dst_dir)
                shutil.copytree(src_dir, dst_dir)
        verdicts = course / "grading" / "verdicts" / student / f"{lesson}.json"
        if verdicts.exists():                   # what the judge decided, cell by cell
            (out / "grading" / "verdicts" / student).mkdir(parents=True, exist_ok=True)
            shutil.copy2(verdicts, out / "grading" / "verdicts" / student / verdicts.name)


def _merge_db(out, course, lesson, students, Gradebook, MissingEntry) -> None:
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as src, \
            Gradebook(f"sqlite:///{out / 'gradebook.db'}") as dst:
        for student in students:
            try:
                sub = src.find_submission(lesson, student)
            except MissingEntry:
                continue
            dst.update_or_create_student(student)
            dst.update_or_create_submission(lesson, student, timestamp=sub.timestamp)
            for nb in sub.notebooks:
                for g in nb.grades:
                    d = dst.find_grade(g.name, nb.name, lesson, student)
                    d.auto_score, d.manual_score = g.auto_score, g.manual_score
                    d.extra_credit, d.needs_manual_grade = g.extra_credit, g.needs_manual_grade
                for c in nb.comments:
                    d = dst.find_comment(c.name, nb.name, lesson, student)
                    d.auto_comment, d.manual_comment = c.auto_comment, c.manual_comment
            dst.db.commit()


def record_zero(out: Path, rows: List[Row]) -> None:
    """Submissions nbgrader could not grade score 0 in OUT's gradebook too, so `nbgrader export`
    agrees with grades.csv (and an older grade of a resubmitted notebook does not linger)."""
    import warnings

    from nbgrader.api import Gradebook

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
            for row in rows:
                gb.update_or_create_student(row.student_id)
                sub = gb.update_or_create_submission(row.lesson, row.student_id)
                for nb in sub.notebooks:
                    for g in nb.grades:
                        g.auto_score, g.manual_score, g.needs_manual_grade = 0.0, None, False
                    for c in nb.comments:
                        c.auto_comment = f"not graded: {row.status}"
                gb.db.commit()


def write_status_feedback(out: Path, row: Row, notebook: str,
                          exchange: Optional[Dict[str, str]] = None) -> None:
    """Feedback for a submission nbgrader did not grade: what happened and what to do.

    Beside it, the exchange's files of the submission, so that `nbgrader release_feedback`
    hands it back; without them (no notebook came through the exchange) a fresh secret, so
    that release_feedback still runs and releases this page to nobody."""
    import secrets

    folder = out / "feedback" / row.student_id / row.lesson
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    exchange = dict(exchange or {})
    exchange.setdefault("timestamp.txt", time.strftime("%Y-%m-%d %H:%M:%S.000000 UTC", time.gmtime()))
    exchange.setdefault("submission_secret.txt", secrets.token_hex(64))
    for name, text in exchange.items():
        (folder / name).write_text(text)
    what = STATUSES.get(row.status, row.status)
    body = (f"<h1>{html.escape(row.lesson)}: not graded ({html.escape(row.status)})</h1>"
            f"<p>{html.escape(what)}.</p><p>{html.escape(row.detail)}</p>"
            f"<p>Score: {row.score:g} / {row.max_score:g}</p>")
    (folder / (Path(notebook).stem + ".html")).write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(row.lesson)}"
        f"</title></head><body>{body}</body></html>\n")


def merge_course(into: Path, other: Path) -> int:
    """Fold another grading folder (``fpnlab grade --out OTHER``, e.g. from another machine,
    same lessons) into ``into``: its rows, gradebook entries and folders, the later grading of
    a (student, lesson) winning. Returns how many rows were taken."""
    into, other = Path(into), Path(other)
    theirs = read_grades(other / "grades.csv")
    if not theirs:
        raise UsageError(f"{other} holds no grades.csv")
    if not (into / "gradebook.db").exists():
        shutil.copytree(other, into, dirs_exist_ok=True)
        return len(theirs)
    lessons = sorted({r.lesson for r in theirs.values()})
    missing = [lesson for lesson in lessons if not (into / "solutions" / lesson).is_dir()]
    if missing:
        prepare_course(into, other / "solutions", missing)
    ours = read_grades(into / "grades.csv")
    taken = [r for key, r in theirs.items()
             if key not in ours or (r.graded_at, r.status == GRADED)
             > (ours[key].graded_at, ours[key].status == GRADED)]
    for lesson in sorted({r.lesson for r in taken}):
        merge(into, other, lesson, [r.student_id for r in taken
                                    if r.lesson == lesson and r.status == GRADED])
    record_zero(into, [r for r in taken if r.status != GRADED])
    for r in taken:
        ours[(r.student_id, r.lesson)] = r
        if r.status != GRADED:
            write_status_feedback(into, r, notebook_name(into / "solutions", r.lesson))
    write_grades(into / "grades.csv", ours.values())
    return len(taken)


# ----------------------------------------------------------------------------- grades.csv

def read_grades(path: Path) -> Dict[Tuple[str, str], Row]:
    if not path.exists():
        return {}
    rows = {}
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            row = Row(**{k.name: rec.get(k.name, "") for k in fields(Row)})
            row.score, row.max_score = float(row.score or 0), float(row.max_score or 0)
            rows[(row.student_id, row.lesson)] = row
    return rows


def write_grades(path: Path, rows: Iterable[Row]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in sorted(rows, key=lambda r: (r.student_id, r.lesson)):
        rec = asdict(row)
        rec["score"], rec["max_score"] = f"{row.score:g}", f"{row.max_score:g}"
        w.writerow(rec)
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- entry point

def default_source() -> Path:
    """The instructor's notebooks when ``--source`` is not given: ``./solutions`` (the course
    repository's top folder is the working directory), else the solutions/ of the checkout this
    package runs from. An installed package ships no solutions."""
    for candidate in (Path.cwd() / "solutions", HERE.parent / "solutions"):
        if candidate.is_dir():
            return candidate.resolve()
    raise UsageError("no course source: run from the course repository (its solutions/ folder) "
                     "or give --source FOLDER (the instructor's notebooks)")


def grade(lesson: str, submissions: Path, out: Path, *, workers: int = 1,
          settings: Optional[Settings] = None, source: Optional[Path] = None,
          progress: Optional[bool] = None, force: bool = False,
          zip_pattern: str = ZIP_PATTERN, log: Callable[[str], None] = print,
          scheduler=None) -> List[Row]:
    """Grade ``submissions`` for ``lesson`` (or ``all``) into the course folder ``out``.

    Returns the rows of this run (every row, kept ones included, is in ``out/grades.csv``).
    An unchanged submission keeps its row unless ``force``. ``scheduler`` (a Dask scheduler's
    address, ``local:N``, or a ``distributed.Client``) grades on a Dask cluster instead of
    ``workers`` local shards (:mod:`autograder.distributed`).
    Raises :class:`UsageError` for a bad invocation.
    """
    settings = settings or Settings()
    source = default_source() if source is None else Path(source).resolve()
    if not source.is_dir():
        raise UsageError(f"the course source {source} is not a folder (give --source: the folder "
                         f"of the instructor's notebooks, solutions/ in the course repository)")
    out = Path(out).resolve()
    submissions = Path(submissions).resolve()
    available = lessons_in(source)
    if lesson == "all":
        lessons = available
        if not lessons:
            raise UsageError(f"no lessons in {source}")
    elif lesson in available:
        lessons = [lesson]
    else:
        raise UsageError(f"unknown lesson {lesson!r}; the course has: {', '.join(available) or 'none'}")
    if not submissions.exists():
        raise UsageError(f"submissions {submissions} do not exist")

    def nested(a: Path, b: Path) -> bool:
        return a == b or a in b.parents or b in a.parents

    if nested(out, source) or nested(out, submissions):
        raise UsageError(f"--out {out} must be a folder of its own, apart from the course and "
                         "the submissions")
    # On a cluster the workers run learner code: each is checked there (autograder.distributed).
    if settings.sandbox and scheduler is None and not sandbox.bwrap_available():
        raise UsageError("bubblewrap (bwrap) is not installed or cannot create namespaces here: "
                         "learner code would run with your rights. Install it (Debian: apt-get "
                         "install bubblewrap; `make system`) or pass --unsafe-no-sandbox.")
    if submissions.is_file():
        if submissions.suffix.lower() != ".zip":
            raise UsageError(f"{submissions} is neither a folder nor a .zip")
        submissions = unpack_zip(submissions, out / "grading" / "inbox", zip_pattern)

    hashes = prepare_course(out, source, lessons)
    jobs = collect(submissions, lessons, out / "solutions", settings.max_bytes)
    previous = read_grades(out / "grades.csv")
    rows: Dict[Tuple[str, str], Row] = dict(previous)
    todo: List[Job] = []
    decided: List[Row] = []
    exchange: Dict[Tuple[str, str], Dict[str, str]] = {}
    held: List[Row] = []                   # duplicate-id rows that keep an earlier grade
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for job in jobs:
        old = previous.get((job.student_id, job.lesson))
        if (not force and old and job.sha256 and old.sha256 == job.sha256
                and old.status not in ("error", "duplicate-id")
                and old.source_sha256 == hashes[job.lesson]):
            continue                       # unchanged: keep its grade
        if job.status == "missing-notebook" and old and old.status == GRADED:
            continue                       # not in this download: keep the earlier grade
        if job.status == "duplicate-id" and old and old.sha256 and old.status in (GRADED, job.status):
            # two files claim it: flag the row, keep the earlier grade (gradebook and feedback too)
            held.append(Row(**{**asdict(old), "status": job.status, "detail": _join(
                job.detail, f"earlier grade {old.score:g}/{old.max_score:g} of {old.graded_at} kept")}))
            rows[(job.student_id, job.lesson)] = held[-1]
            continue
        if job.status:
            row = Row(job.student_id, job.lesson, 0.0, max_score(out, job.lesson), job.status,
                      job.detail, job.sha256, hashes[job.lesson], now)
            decided.append(row)
            exchange[(job.student_id, job.lesson)] = job.exchange
        else:
            todo.append(job)
    for row in decided:
        rows[(row.student_id, row.lesson)] = row
        write_status_feedback(out, row, notebook_name(out / "solutions", row.lesson),
                              exchange.get((row.student_id, row.lesson)))
    record_zero(out, decided)

    def checkpoint(merged: List[Row]) -> None:
        """grades.csv with what is merged so far: a run stopped half-way keeps those grades."""
        for row in merged:
            rows[(row.student_id, row.lesson)] = row
        write_grades(out / "grades.csv", rows.values())

    graded, judge_s = _run_shards(out, todo, workers, settings, progress, hashes, now,
                                  scheduler=scheduler, checkpoint=checkpoint, log=log)
    checkpoint(graded)
    kept = len(jobs) - len(decided) - len(todo)
    log(f"fpnlab grade: {len(graded)} notebooks graded, {len(decided)} not gradable, "
        f"{kept} unchanged (kept); grades in {out / 'grades.csv'}"
        + (f" (the judge took {judge_s:.2f} s of the workers' time)" if graded else ""))
    return decided + held + graded


CHUNK = 8   # notebooks per nbgrader process: its start-up (~2 s) is paid once per chunk


def _chunks(jobs: List[Job], size: int):
    """Consecutive runs of at most ``size`` jobs (of any lessons: one nbgrader run grades them).

    A student with several notebooks gets a chunk of their own: their notebooks share a warm
    sandbox, and nbgrader visits a run's notebooks in directory order, not student by student.
    """
    chunk: List[Job] = []
    for _, group in itertools.groupby(jobs, key=lambda j: j.student_id):
        group = list(group)
        if len(group) > 1:
            if chunk:
                yield chunk
                chunk = []
            yield group
            continue
        if len(chunk) == size:
            yield chunk
            chunk = []
        chunk.extend(group)
    if chunk:
        yield chunk


def _progress_bar(total: int, progress: Optional[bool]):
    """A tqdm bar on stderr (by default when it is a terminal), or None."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm
    size = shutil.get_terminal_size((100, 20))      # a pty of size 0 x 0: 100 x 20
    return tqdm(total=total, unit="notebook", desc="grading", file=sys.stderr,
                ncols=size.columns, nrows=size.lines)


def _run_shards(out: Path, todo: List[Job], workers: int, settings: Settings,
                progress: Optional[bool], hashes: Dict[str, str], now: str, *, scheduler=None,
                checkpoint: Optional[Callable[[List[Row]], None]] = None,
                log: Callable[[str], None] = print) -> Tuple[List[Row], float]:
    """Grade ``todo`` on ``workers`` shards, or on the Dask cluster ``scheduler``; the rows, and
    the seconds the judge took in all. On a cluster each chunk is merged as it arrives and
    ``checkpoint`` gets its rows."""
    if not todo:
        return [], 0.0
    if scheduler is not None:
        from . import distributed
        return distributed.run(scheduler, out, todo, settings, progress, hashes, now,
                               checkpoint=checkpoint, log=log)
    workers = max(1, min(workers, len(todo)))
    # Round-robin over the notebooks sorted by student, so each shard gets a fair mix and, within
    # a shard, a student's notebooks come one after another (one warm sandbox serves them).
    shards = [Shard(out, i, settings) for i in range(workers)]
    plan: List[List[Job]] = [[] for _ in shards]
    for i, job in enumerate(sorted(todo, key=lambda j: (j.student_id, j.lesson))):
        plan[i % workers].append(job)
    bar = _progress_bar(len(todo), progress)
    lock = threading.Lock()
    results: List[List[Row]] = [[] for _ in shards]

    def work(i: int) -> None:
        shard = shards[i]
        try:
            for chunk in _chunks(plan[i], CHUNK):
                rows = grade_chunk(shard, chunk)
                for row in rows:
                    row.source_sha256, row.graded_at = hashes[row.lesson], now
                results[i].extend(rows)
                if bar is not None:
                    with lock:
                        bar.set_postfix_str(f"{rows[-1].student_id}: {rows[-1].status}", refresh=False)
                        bar.update(len(rows))
            shard_feedback(shard, results[i])
        finally:
            if getattr(shard, "judge", None) is not None:
                shard.judge.close()
            shard.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(workers)))
    if bar is not None:
        bar.close()
    rows = []
    for i, shard in enumerate(shards):       # merged here, one writer, in shard order
        merge_shard(out, shard.path, results[i], shard.run_id, i)
        rows.extend(results[i])
    return rows, sum(getattr(sh, "judge_seconds", 0.0) for sh in shards)


def grade_chunk(shard: Shard, chunk: List[Job]) -> List[Row]:
    """``shard.grade(chunk)``; an exception becomes an ``error`` row per job (one chunk never
    stops the batch)."""
    try:
        return shard.grade(chunk)
    except Exception as e:  # noqa: BLE001
        return [Row(j.student_id, j.lesson, 0.0, 0.0, "error",
                    f"{type(e).__name__}: {e}"[:300], j.sha256) for j in chunk]


def shard_feedback(shard: Shard, rows: List[Row]) -> None:
    """Feedback pages for the graded ``rows`` of ``shard`` (one nbgrader run); a failure is
    noted in their detail."""
    err = shard.feedback(sorted({r.lesson for r in rows if r.status == GRADED}))
    if err:
        for r in rows:
            if r.status == GRADED:
                r.detail = _join(r.detail, f"no feedback: {err}")


def merge_shard(out: Path, folder: Path, rows: List[Row], run_id: str, index: int,
                exchange: Optional[Dict[Tuple[str, str], Dict[str, str]]] = None) -> None:
    """Fold one graded shard into OUT (this process alone writes OUT), then remove it.

    ``folder`` is laid out as a shard's course: ``gradebook.db``, ``autograded/``,
    ``feedback/``, ``grading/submitted/``, ``grading/verdicts/``, ``grading/logs/`` (a local
    shard's own folder, or one materialised from a Dask worker's result). ``rows`` are its rows;
    a row not graded gets its status page and a 0, with the exchange files kept in the shard,
    else those in ``exchange``. Merging the same shard twice leaves OUT as merging it once: the
    gradebook keeps one submission per (student, lesson), and each folder is replaced."""
    by_lesson: Dict[str, List[str]] = {}
    for row in rows:
        if row.status == GRADED:
            by_lesson.setdefault(row.lesson, []).append(row.student_id)
    for lesson, students in by_lesson.items():
        merge(out, folder, lesson, students, folder / "grading" / "submitted")
    for row in rows:
        if row.status != GRADED:
            kept = folder / "grading" / "submitted" / row.student_id / row.lesson
            found = {n: (kept / n).read_text() for n in EXCHANGE_FILES if (kept / n).is_file()}
            write_status_feedback(out, row, notebook_name(out / "solutions", row.lesson),
                                  found or (exchange or {}).get((row.student_id, row.lesson)))
    record_zero(out, [r for r in rows if r.status != GRADED])
    logs = out / "grading" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for log in sorted((folder / "grading" / "logs").glob("*.log")):
        shutil.copy2(log, logs / f"{run_id}-shard{index}-{log.name}")
    shutil.rmtree(folder, ignore_errors=True)     # merged: the shard's course is debris


# ----------------------------------------------------------------------------- nbgrader plug-ins
# Imported by nbgrader (autograder/grading/nbgrader_config.py names them), never by the kernel.

def _preprocessors():
    from nbconvert.preprocessors import Preprocessor
    from nbgrader.preprocessors import Execute

    class CappedExecute(Execute):
        """nbgrader's Execute, keeping at most MAX_OUTPUT bytes of a notebook's output, counted
        over every kind of output (streams, displays, results, errors). Errors are never
        dropped (an error output is what makes a test cell score 0) but cut: past the cap a cell
        keeps its first error only, as its name and the start of its message."""

        ERROR_ROOM = 512       # bytes an error keeps past MAX_OUTPUT (its name, its message's start)

        def preprocess(self, nb, resources=None, km=None):
            if "FPNLAB_SANDBOX_STATUS" not in os.environ:
                # `nbgrader autograde` typed in OUT: learner code, outside any sandbox, with no
                # judge to score it. Grading goes through `fpnlab grade`.
                raise RuntimeError("this folder is graded by `fpnlab grade` (sandboxed kernels, "
                                   "a judge outside them); plain `nbgrader autograde` would run "
                                   "learner code with your rights and score nothing")
            self._fpnlab_bytes = self._fpnlab_hand_overs = 0
            self._fpnlab_capped = False
            return super().preprocess(nb, resources, km)

        @staticmethod
        def _size(value) -> int:
            """Bytes ``value`` takes in the notebook's JSON."""
            return len(json.dumps(value))

        @classmethod
        def _cut(cls, text: str, room: int) -> str:
            """``text`` cut to about ``room`` bytes of JSON, saying how much was dropped."""
            if cls._size(text) <= room:
                return text
            low, high = 0, min(len(text), max(0, room))
            while low < high:                      # the longest prefix that fits
                mid = (low + high + 1) // 2
                if cls._size(text[:mid]) <= room:
                    low = mid
                else:
                    high = mid - 1
            return text[:low] + f"\n[fpnlab grader: {len(text) - low} characters dropped]"

        @classmethod
        def _capped_error(cls, content: dict, room: int) -> dict:
            """An ``error`` content in about ``room`` bytes: the name, the start of the value, and
            the traceback's last lines (where it was raised) as far as they fit."""
            ename = cls._cut(str(content.get("ename", "Error")), 200)
            evalue = cls._cut(str(content.get("evalue", "")), max(64, room // 2))
            room -= cls._size(ename) + cls._size(evalue)
            lines = [str(x) for x in content.get("traceback") or []]
            kept: list = []
            for line in reversed(lines):
                line = cls._cut(line, min(4096, room - 160))
                if cls._size(line) + 2 > room - 64:
                    break
                kept.insert(0, line)
                room -= cls._size(line) + 2
            if len(kept) < len(lines):
                kept.insert(0, f"[fpnlab grader: {len(lines) - len(kept)} traceback lines dropped]")
            return dict(content, ename=ename, evalue=evalue, traceback=kept)

        def _fpnlab_notice(self, outs):
            if not getattr(self, "_fpnlab_capped", False):
                self._fpnlab_capped = True
                outs.append(nbformat.v4.new_output(
                    "stream", name="stderr",
                    text=f"\n[fpnlab grader: output beyond {MAX_OUTPUT >> 20} MB dropped]\n"))

        def output(self, outs, msg, display_id, cell_index):
            kind = msg.get("msg_type")
            content = msg.get("content") or {}
            used = getattr(self, "_fpnlab_bytes", 0)
            left = MAX_OUTPUT - used
            if kind == "error":
                if left <= 0 and any(o.get("output_type") == "error" for o in outs):
                    self._fpnlab_notice(outs)
                    return None                    # the cell has its error already
                content = self._capped_error(content, max(left, self.ERROR_ROOM))
                msg = dict(msg, content=content)
                size = self._size(content)
            elif kind == "stream":
                text = content.get("text", "")
                text = "".join(text) if isinstance(text, list) else str(text)
                size = self._size(text)
                if size > left:
                    if left < 64:
                        self._fpnlab_notice(outs)
                        return None
                    text = self._cut(text, left - 64)
                    size = self._size(text)
                    msg = dict(msg, content=dict(content, text=text))
                    self._fpnlab_bytes = used + size
                    result = super().output(outs, msg, display_id, cell_index)
                    self._fpnlab_notice(outs)
                    return result
            else:
                size = self._size(content.get("data") or {}) + self._size(content.get("metadata") or {})
                if self._fpnlab_hand_over(kind, content, cell_index):
                    # What a test cell hands over to the judge: a budget of its own, so that a
                    # flood of output before the tests cannot cost the learner their points.
                    spent = getattr(self, "_fpnlab_hand_overs", 0)
                    if spent + size <= MAX_HAND_OVER:
                        self._fpnlab_hand_overs = spent + size
                        return super().output(outs, msg, display_id, cell_index)
                if size > left and kind in ("display_data", "execute_result", "update_display_data"):
                    self._fpnlab_notice(outs)
                    return None
            self._fpnlab_bytes = used + size
            return super().output(outs, msg, display_id, cell_index)

        def _fpnlab_hand_over(self, kind, content, cell_index) -> bool:
            """A ``display_data`` of the judge's type in a graded test cell."""
            try:
                from fpnlab.judge import MIME
            except ImportError:  # pragma: no cover (no judge in this tree)
                return False
            try:
                cell = self.nb.cells[cell_index]
            except (AttributeError, IndexError, TypeError):
                return False
            return (kind == "display_data" and MIME in (content.get("data") or {})
                    and bool(cell.get("metadata", {}).get("nbgrader", {}).get("grade")))

    class SanitizeFeedback(Preprocessor):
        """Feedback made from the judge's verdicts, without hidden tests or the grader's lines."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.enabled = True          # nbconvert preprocessors are off by default

        def preprocess(self, nb, resources):
            # Lines of hidden tests, to redact wherever a notebook printed them (``print(In)``
            # or a post_run_cell hook after the tests ran).
            lines = {ln.strip() for c in nb.cells if c.cell_type == "code"
                     and c.get("metadata", {}).get("nbgrader", {}).get("grade")
                     for ln in hidden_lines(c.source) if len(ln.strip()) >= 6}
            # ... also as repr() and JSON print them (``print(In)`` shows a list of strings).
            variants = lines | {repr(ln)[1:-1] for ln in lines} | {json.dumps(ln)[1:-1] for ln in lines}
            self._hidden = sorted(variants, key=len, reverse=True)
            # The page is made from the judge's verdicts: no kernel output at all (see
            # autograder/judge.py: feedback_notebook); what follows is a second line of defence.
            info = (resources or {}).get("nbgrader", {})
            path = Path("grading", "verdicts", str(info.get("student")),
                        f"{info.get('assignment')}.json")
            try:
                verdicts = json.loads(path.read_text())
            except (OSError, ValueError):
                verdicts = []            # not judged: every test cell shows nothing, scores 0
            nb = judging.feedback_notebook(nb, verdicts, strip_hidden)
            return super().preprocess(nb, resources)

        def _redact(self, text):
            if isinstance(text, list):
                text = "".join(text)
            if not isinstance(text, str):
                return text
            for line in self._hidden:
                if line in text:
                    text = text.replace(line, "[hidden test]")
            for word in ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS", *GRADER_MARKS):
                text = text.replace(word, "[hidden test]")
            return text

        def preprocess_cell(self, cell, resources, index):
            if cell.cell_type != "code":
                return cell, resources
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
                cell.source = strip_hidden(cell.source)
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: "
                                        f"{self._redact(str(out.get('evalue', '')))}"]
                if "text" in out:
                    out["text"] = self._redact(out["text"])
                for mime in list(out.get("data", {}) or {}):
                    if mime.startswith("text/") or mime.endswith("json"):
                        out["data"][mime] = self._redact(out["data"][mime])
            return cell, resources

    return CappedExecute, SanitizeFeedback


HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?",
                    re.S | re.M)


def hidden_lines(source: str) -> List[str]:
    """The lines between ### BEGIN HIDDEN TESTS and ### END HIDDEN TESTS."""
    lines, inside = [], False
    for line in source.splitlines():
        if "### BEGIN HIDDEN TESTS" in line:
            inside = True
        elif "### END HIDDEN TESTS" in line:
            inside = False
        elif inside:
            lines.append(line)
    return lines


def strip_hidden(source: str) -> str:
    """A test cell's source without hidden tests and without the lines the grader adds."""
    source = HIDDEN.sub("# (hidden tests: not shown)\n", source)
    if "### BEGIN HIDDEN TESTS" in source:          # unterminated: drop everything after it
        source = source.split("### BEGIN HIDDEN TESTS")[0] + "# (hidden tests: not shown)\n"
    return "\n".join(ln for ln in source.splitlines() if not any(m in ln for m in GRADER_MARKS))


def _keep_hand_overs():
    from nbconvert.preprocessors import Preprocessor

    from fpnlab.judge import MIME

    class KeepHandOvers(Preprocessor):
        """After execution, a test cell keeps only its hand-over outputs: what the kernel says
        about pass or fail (errors, partial credit in an ``execute_result``, which nbgrader would
        read and can be made to crash on) never reaches nbgrader; the judge scores the cell."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.enabled = True

        def preprocess_cell(self, cell, resources, index):
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell.cell_type == "code" and meta.get("grade"):
                cell.outputs = [o for o in cell.get("outputs", [])
                                if o.get("output_type") == "display_data"
                                and MIME in (o.get("data") or {})]
            return cell, resources

    return KeepHandOvers


def __getattr__(name):
    if name == "KeepHandOvers":
        globals()["KeepHandOvers"] = _keep_hand_overs()
        return globals()[name]
    if name in ("CappedExecute", "SanitizeFeedback"):
        capped, sanitize = _preprocessors()
        globals().update(CappedExecute=capped, SanitizeFeedback=sanitize)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    from fpnlab.cli import _positive

    g = argparse.ArgumentParser(
        prog="fpnlab grade",
        description="Autograde submissions with nbgrader, each notebook in a bubblewrap sandbox; "
        "a trusted judge outside the sandbox decides every score. Writes OUT/grades.csv, "
        "OUT/feedback/ and OUT/gradebook.db (nbgrader's commands work in OUT).")
    g.add_argument("lesson", metavar="LESSON", help="an assignment name (e.g. 01-preprocessing) or all")
    g.add_argument("submissions", metavar="SUBMISSIONS",
                   help="a folder <student>/<lesson>/<notebook>.ipynb (or <student>/<notebook>.ipynb), "
                   "or an LMS .zip of <student>_<anything>.ipynb files (see --zip-pattern)")
    g.add_argument("--out", required=True, help="the grading course folder (kept across runs)")
    g.add_argument("--workers", type=_positive, default=1,
                   help="shards graded at once (default 1); with --scheduler local, the cluster's "
                   "processes")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="grade on a Dask cluster: a scheduler's address (tcp://host:8786), or "
                   "local:N for a LocalCluster of N worker processes on this machine (local: "
                   "--workers of them); each worker needs fpnlab[grader] (the same version) and "
                   "bubblewrap")
    g.add_argument("--timeout", type=_positive, default=600,
                   help="wall-clock limit per notebook in seconds (default 600)")
    g.add_argument("--memory-gb", type=_positive, default=6, help="memory limit per kernel in GB (default 6)")
    g.add_argument("--source", default=None,
                   help="the instructor's notebooks, one folder per lesson (default: ./solutions, "
                   "or the course repository's solutions/)")
    g.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run learner code without bubblewrap (rlimits and timeout only)")
    g.add_argument("--cold-kernels", action="store_true",
                   help="a fresh sandbox and Python for every notebook, instead of one warm "
                   "sandbox per student that imports torch once and forks a kernel per notebook")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--zip-pattern", default=None, metavar="REGEX",
                   help="where a flat zip entry's name holds the student id: a regular expression "
                   "with a (?P<student_id>...) group (default: the text before the first _)")
    g.add_argument("--force", action="store_true",
                   help="grade every submission again, unchanged ones too (e.g. after a timeout)")
    return g



def main(argv: Optional[List[str]] = None) -> int:
    """``fpnlab grade ARGS``: exit 0 when the run finished (grades.csv says how each notebook
    fared), 2 for a bad invocation."""
    args = _parser().parse_args(argv)
    settings = Settings(timeout=args.timeout, memory=args.memory_gb << 30,
                        sandbox=not args.unsafe_no_sandbox, warm=not args.cold_kernels)
    if args.unsafe_no_sandbox:
        print("fpnlab grade: WARNING: --unsafe-no-sandbox: learner code runs with your rights",
              file=sys.stderr)
    scheduler = args.scheduler
    if scheduler == "local":
        scheduler = f"local:{args.workers}"
    try:
        grade(args.lesson, Path(args.submissions), Path(args.out), workers=args.workers,
              settings=settings, source=Path(args.source) if args.source else None,
              progress=False if args.no_progress else None, force=args.force,
              scheduler=scheduler,
              **({"zip_pattern": args.zip_pattern} if args.zip_pattern else {}))
    except UsageError as e:
        print(f"fpnlab grade: {e}", file=sys.stderr)
        return 2
    return 0
