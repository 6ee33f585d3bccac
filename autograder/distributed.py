"""Grading on a Dask cluster: ``fpnlab grade ... --scheduler ADDRESS``.

    fpnlab grade all submitted/ --out OUT --scheduler local:4          # a LocalCluster, 4 processes
    fpnlab grade all submitted/ --out OUT --scheduler tcp://host:8786  # any running cluster

The same code path serves a ``LocalCluster``, ``dask-jobqueue`` (Slurm, PBS ...) and
``dask-kubernetes``: this module only needs a scheduler's address. Nothing is shared but the
network: no filesystem, no gradebook.

- **One task, one chunk.** The jobs are cut as :func:`autograder.grade._chunks` cuts them (up to
  8 notebooks, a student with several lessons in a chunk of their own, so one warm sandbox
  serves them), into a number of chunks that the cluster's threads share evenly.
- **Everything travels as data.** The coordinator sends the course once (OUT's prepared
  ``solutions/`` of the lessons being graded, and OUT's gradebook without its students: the
  assignments as nbgrader generated them) as a worker plugin (:class:`CoursePlugin`), which
  the scheduler sets up on every worker, one that joins or restarts mid-run too. Each chunk
  carries its cleaned notebooks and exchange files.
- **The worker grades as a local shard does** (:class:`autograder.grade.Shard`, in the worker's
  own scratch folder): bubblewrap sandboxes, one warm sandbox per student, the judge (trusted
  code, outside the sandbox; one per worker thread, kept across its chunks), feedback. It sends
  back plain data: the rows, and the shard's files as ``{relative path: bytes}`` (its
  ``gradebook.db``, which holds only this chunk's submissions, the ``autograded/``,
  ``feedback/``, ``grading/submitted/`` folders of its students, the judge's verdicts, the logs).
- **The coordinator merges each result as it arrives**, through the code that merges a local
  shard (:func:`autograder.grade.merge_shard`), then writes ``grades.csv``: a run stopped
  half-way keeps every chunk merged so far, and the next run grades only the rest.

Guarantees (``tests/test_grade_dask.py``):

- the same ``grades.csv``, gradebook scores, verdicts and feedback as local grading;
- a worker that dies mid-chunk loses nothing: the scheduler runs the chunk again on another
  worker (a chunk that has killed ``distributed.scheduler.allowed-failures`` workers, 3 by
  default, becomes ``error`` rows, graded again on the next run); an exception in a task is
  retried :data:`RETRIES` times;
- a submission is never graded twice into the gradebook: each (student, lesson) is merged once
  per run (a result for one already merged is dropped), and merging is idempotent anyway (one
  gradebook submission per (student, lesson), each folder replaced);
- a worker that lacks bubblewrap or runs other grading code (:func:`code_digest`) grades nothing:
  the run refuses to start, and a task refuses to run there.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import platform
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import nbformat

from . import grade as G
from . import sandbox

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover (the grader without Dask: no --scheduler)
    WorkerPlugin = object

HERE = Path(__file__).resolve().parent
RETRIES = 2               # more tries of a task that raised (a lost worker is rescheduled anyway)
WAIT_FOR_WORKERS = 300.0  # seconds to wait for a first worker (an adaptive cluster starts empty)
# The gradebook's per-student tables, emptied in the course sent to the workers (children first).
STUDENT_TABLES = ("comment", "grade", "submitted_notebook", "submitted_assignment", "student")
_LOCAL = re.compile(r"\Alocal(?::(?P<n>[0-9]+))?\Z")


# ----------------------------------------------------------------------------- the cluster

@lru_cache(maxsize=None)
def code_digest() -> str:
    """A hash of the grading code (the ``autograder`` and ``fpnlab`` packages' Python files):
    coordinator and workers must grade with the same code."""
    h = hashlib.sha256()
    for package in (HERE, HERE.parent / "fpnlab"):
        for path in sorted(package.rglob("*.py")):
            if "__pycache__" not in path.parts:
                h.update(f"{package.name}/{path.relative_to(package).as_posix()}\0".encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def worker_facts() -> dict:
    """What the coordinator checks on each worker (run there by ``client.run``)."""
    return {"code": code_digest(), "bwrap": sandbox.bwrap_available() is not None,
            "python": platform.python_version(), "host": platform.node()}


@contextlib.contextmanager
def connect(scheduler) -> Iterator["distributed.Client"]:  # noqa: F821
    """A ``distributed.Client`` for ``scheduler``: a Client (used as it is), ``local:N`` (a
    LocalCluster of N single-threaded worker processes, closed afterwards) or an address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise G.UsageError("--scheduler needs Dask: pip install 'fpnlab[grader]' "
                           "(dask[distributed])") from None
    if isinstance(scheduler, Client):
        yield scheduler
        return
    local = _LOCAL.fullmatch(str(scheduler))
    if local:
        n = int(local.group("n") or os.cpu_count() or 1)
        if n < 1:
            raise G.UsageError(f"--scheduler {scheduler}: at least one worker (local:N, N >= 1)")
        # One thread per process: each worker grades one shard at a time, as --workers does;
        # one task per idle thread (tasks take minutes: none waits on a busy worker).
        import dask

        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}), \
                LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                             dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(str(scheduler), timeout="30s")
    except (OSError, TimeoutError, ValueError) as e:
        raise G.UsageError(f"cannot reach the Dask scheduler {scheduler!r} "
                           f"({type(e).__name__}: {e})") from None
    with client:
        yield client


def check_workers(client, settings: G.Settings) -> Dict[str, dict]:
    """Wait for a first worker, then refuse (:class:`UsageError`) a cluster where a worker runs
    other grading code, or, with the sandbox, lacks a working bubblewrap."""
    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
    except (TimeoutError, OSError) as e:
        raise G.UsageError(f"no Dask worker joined the scheduler within {WAIT_FOR_WORKERS:.0f} s "
                           f"({type(e).__name__})") from None
    facts = client.run(worker_facts)
    for address, got in sorted(facts.items()):
        if got["code"] != code_digest():
            raise G.UsageError(f"Dask worker {address} ({got['host']}) runs other grading code "
                               f"than this machine (fpnlab/autograder differ): install the same "
                               f"version there")
        if settings.sandbox and not got["bwrap"]:
            raise G.UsageError(f"Dask worker {address} ({got['host']}) has no working bubblewrap: "
                               "learner code would run with its rights. Install it there (Debian: "
                               "apt-get install bubblewrap) or pass --unsafe-no-sandbox.")
    return facts


def chunk_size(jobs: int, threads: int) -> int:
    """Notebooks per task: at most ``grade.CHUNK`` (nbgrader's start-up is paid per chunk), in
    as few rounds of tasks over the cluster's ``threads`` as chunks of that size need, the
    notebooks shared evenly among those tasks (40 on 2 threads: 6 tasks of 7, not 5 of 8, of
    which one thread would grade 3)."""
    threads = max(1, threads)
    rounds = max(1, math.ceil(jobs / (G.CHUNK * threads)))
    return max(1, math.ceil(jobs / (rounds * threads)))


# ----------------------------------------------------------------------------- the course

def template_gradebook(db: Path) -> bytes:
    """OUT's gradebook without its students: the assignments, notebooks and cells as nbgrader
    generated them, which is what a shard grades against."""
    with tempfile.TemporaryDirectory(prefix="fpnlab-template-") as tmp:
        copy = Path(tmp) / "gradebook.db"
        src, dst = sqlite3.connect(str(db)), sqlite3.connect(str(copy))
        try:
            src.backup(dst)
            with dst:
                for table in STUDENT_TABLES:
                    dst.execute(f"DELETE FROM {table}")
            dst.execute("VACUUM")
        finally:
            src.close()
            dst.close()
        return copy.read_bytes()


def course_payload(out: Path, lessons: List[str]) -> dict:
    """What a worker needs of OUT to build a shard: ``{"digest", "files": {path: bytes}}``."""
    files = {"gradebook.db": template_gradebook(out / "gradebook.db")}
    for lesson in lessons:
        for path in sorted((out / "solutions" / lesson).rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[path.relative_to(out).as_posix()] = path.read_bytes()
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return {"digest": h.hexdigest(), "files": files}


class CoursePlugin(WorkerPlugin):
    """Puts the course (:func:`course_payload`) on every worker's disk: those there when the
    run starts, and those that join or restart later (the scheduler keeps the plugin and sets
    it up on each new worker). Unregistered at the end of the run, which removes it there.
    The grading tasks then depend on no data, so the scheduler places them by load alone."""

    def __init__(self, payload: dict, token: str):
        self.payload, self.token = payload, token
        self.name = f"fpnlab-course-{token}"

    def setup(self, worker):
        with _COURSES_LOCK:
            root = _scratch(worker) / "fpnlab" / self.token
            if not (root / ".complete").exists():
                materialise(root, self.payload["files"])
                (root / ".complete").touch()

    def teardown(self, worker):
        shutil.rmtree(_scratch(worker) / "fpnlab" / self.token, ignore_errors=True)


def _safe(rel: str) -> PurePosixPath:
    """A relative path of a result, refused when it is absolute or climbs out."""
    path = PurePosixPath(rel)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        raise ValueError(f"unsafe path in a result: {rel!r}")
    return path


def materialise(folder: Path, files: Dict[str, bytes]) -> Path:
    """Write ``{relative path: bytes}`` under ``folder`` (made afresh)."""
    if folder.exists():
        shutil.rmtree(folder)
    for rel, data in files.items():
        dest = folder.joinpath(*_safe(rel).parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ----------------------------------------------------------------------------- on the worker

_COURSES_LOCK = threading.Lock()
_THREAD = threading.local()           # this worker thread's shard slot and judge
_SLOTS = itertools.count()


def _scratch(worker=None) -> Path:
    """The worker's own scratch folder (removed with the worker), else the temp folder."""
    if worker is None:
        try:
            from distributed import get_worker
            worker = get_worker()
        except (ImportError, ValueError):
            return Path(tempfile.gettempdir())
    return Path(worker.local_directory)


def _course_dir(token: str) -> Path:
    """The course :class:`CoursePlugin` put on this worker."""
    root = _scratch() / "fpnlab" / token
    if not (root / ".complete").exists():
        raise RuntimeError(f"the course {token} is not on this worker ({platform.node()}): its "
                           "worker plugin did not set it up")
    return root


def job_data(job: G.Job) -> dict:
    """A Job as plain data (its cleaned notebook as JSON text)."""
    return {"student_id": job.student_id, "lesson": job.lesson, "detail": job.detail,
            "sha256": job.sha256, "notebook": nbformat.writes(job.notebook),
            "exchange": dict(job.exchange)}


def _job(data: dict) -> G.Job:
    return G.Job(data["student_id"], data["lesson"], detail=data["detail"],
                 sha256=data["sha256"], notebook=nbformat.reads(data["notebook"], as_version=4),
                 exchange=dict(data["exchange"]))


def _shard_files(shard: Path, rows: List[G.Row]) -> Dict[str, bytes]:
    """The files of ``shard`` that OUT takes for ``rows``: ``{relative path: bytes}``."""
    wanted = [shard / "gradebook.db", shard / "grading" / "logs"]
    for r in rows:
        wanted += [shard / top / r.student_id / r.lesson
                   for top in ("autograded", "feedback", "grading/submitted")]
        wanted.append(shard / "grading" / "verdicts" / r.student_id / f"{r.lesson}.json")
    files = {}
    for path in wanted:
        found = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for f in found:
            if f.is_file() and not f.is_symlink():
                files[f.relative_to(shard).as_posix()] = f.read_bytes()
    return files


def grade_task(course: str, jobs: List[dict], settings: G.Settings, code: str,
               run_id: str) -> dict:
    """One chunk, graded on this worker as a local shard grades it, against the course
    ``course`` (a :class:`CoursePlugin`'s token); returns plain data:
    ``rows`` (dicts), ``files`` (the shard's, see :func:`_shard_files`), ``run_id`` and
    ``index`` (its logs' names), ``judge_seconds``, and where and how long it ran."""
    if code != code_digest():
        raise RuntimeError(f"this worker ({platform.node()}) runs other grading code than the "
                           "coordinator: install the same fpnlab version")
    if settings.sandbox and not sandbox.bwrap_available():
        raise RuntimeError(f"no working bubblewrap on this worker ({platform.node()})")
    start = time.perf_counter()
    if getattr(_THREAD, "slot", None) is None:
        _THREAD.slot = next(_SLOTS)       # a uid and a shard folder per thread
    shard = G.Shard(_course_dir(course), _THREAD.slot, settings, run_id=run_id)
    shard.judge = getattr(_THREAD, "judge", None)     # this thread's judge, lessons read
    try:
        rows = G.grade_chunk(shard, [_job(j) for j in jobs])
        try:
            G.shard_feedback(shard, rows)
        except Exception as e:  # noqa: BLE001 (the grades stand; the pages are missing)
            for r in rows:
                if r.status == G.GRADED:
                    r.detail = G._join(r.detail, f"no feedback: {type(e).__name__}: {e}"[:300])
        files = _shard_files(shard.path, rows)
    finally:
        _THREAD.judge = getattr(shard, "judge", None)  # None after a failure: a new one next time
        shard.close()
        shutil.rmtree(shard.path, ignore_errors=True)
    try:
        from distributed import get_worker
        where = get_worker().address
    except (ImportError, ValueError):
        where = "no worker"
    return {"rows": [asdict(r) for r in rows], "files": files, "run_id": run_id,
            "index": _THREAD.slot, "judge_seconds": getattr(shard, "judge_seconds", 0.0),
            "worker": where, "host": platform.node(), "pid": os.getpid(),
            "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- the coordinator

def merge_result(out: Path, result: dict, chunk: List[G.Job], hashes: Dict[str, str], now: str,
                 merged: set, folder: Path) -> List[G.Row]:
    """Fold one task's ``result`` into OUT; the rows merged. Each job of ``chunk`` gets exactly
    one row (an ``error`` row when the result lacks it); a (student, lesson) already in
    ``merged`` (this run's) is not merged again."""
    expected = {(j.student_id, j.lesson): j for j in chunk}
    rows: Dict[Tuple[str, str], G.Row] = {}
    for data in result.get("rows", []):
        row = G.Row(**data)
        key = (row.student_id, row.lesson)
        if key in expected and key not in merged and key not in rows:
            rows[key] = row
    for key, job in expected.items():
        if key not in rows and key not in merged:
            rows[key] = G.Row(job.student_id, job.lesson, 0.0, G.max_score(out, job.lesson),
                              "error", result.get("error", "the worker returned no row for it"),
                              job.sha256)
    for row in rows.values():
        row.source_sha256, row.graded_at = hashes[row.lesson], now
    materialise(folder, result.get("files", {}))
    G.merge_shard(out, folder, list(rows.values()), result.get("run_id", "dask"),
                  result.get("index", 0),
                  exchange={key: job.exchange for key, job in expected.items()})
    merged.update(rows)
    return list(rows.values())


def run(scheduler, out: Path, todo: List[G.Job], settings: G.Settings, progress: Optional[bool],
        hashes: Dict[str, str], now: str, *, checkpoint: Optional[Callable] = None,
        log: Callable[[str], None] = print) -> Tuple[List[G.Row], float]:
    """Grade ``todo`` on the Dask cluster ``scheduler`` into OUT (see the module's docstring);
    the rows, and the seconds the judge took on the workers."""
    from distributed import as_completed

    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = out / "grading" / "logs" / f"{stamp}-dask.log"
    record.parent.mkdir(parents=True, exist_ok=True)
    with connect(scheduler) as client:
        facts = check_workers(client, settings)
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        ordered = sorted(todo, key=lambda j: (j.student_id, j.lesson))
        chunks = list(G._chunks(ordered, chunk_size(len(ordered), threads)))
        payload = course_payload(out, sorted({j.lesson for j in todo}))
        token = hashlib.sha256(f"{out}{stamp}{os.getpid()}{time.time_ns()}".encode()).hexdigest()[:12]
        plugin = CoursePlugin(payload, token)
        client.register_plugin(plugin, name=plugin.name)
        bar = None
        try:
            futures = {}
            for n, chunk in enumerate(chunks):
                future = client.submit(grade_task, token, [job_data(j) for j in chunk], settings,
                                       code_digest(), f"{stamp}-task{n}", retries=RETRIES,
                                       pure=False, key=f"fpnlab-grade-{token}-{n:05d}")
                futures[future] = (n, chunk)
            where = (f"{len(todo)} notebooks in {len(chunks)} tasks on {len(facts)} Dask workers, "
                     f"{threads} threads ({client.scheduler_info().get('address', scheduler)})")
            log(f"fpnlab grade: {where}")
            with open(record, "a") as rec:
                rec.write(f"{stamp}: {where}\n")
            bar = G._progress_bar(len(todo), progress)
            merged: set = set()
            graded: List[G.Row] = []
            judge_s = merge_s = 0.0
            for future in as_completed(list(futures)):
                n, chunk = futures.pop(future)
                try:
                    result = future.result()
                    line = (f"task {n}: {len(chunk)} notebooks on {result['worker']} "
                            f"({result['host']}, pid {result['pid']}) in {result['seconds']:.1f} s")
                except Exception as e:  # noqa: BLE001 (KilledWorker, a task that raised RETRIES+1 times)
                    why = f"the cluster could not grade it: {type(e).__name__}: {e}"[:300]
                    result = {"error": why}
                    line = f"task {n}: {len(chunk)} notebooks: {why}"
                future.release()
                started = time.perf_counter()
                rows = merge_result(out, result, chunk, hashes, now, merged,
                                    out / "grading" / "shards" / f"dask-{n}")
                merge_s += time.perf_counter() - started
                judge_s += result.get("judge_seconds", 0.0)
                graded.extend(rows)
                with open(record, "a") as rec:
                    rec.write(f"{line}; merged in {time.perf_counter() - started:.2f} s\n")
                if checkpoint is not None:
                    checkpoint(rows)
                if bar is not None and rows:
                    bar.set_postfix_str(f"{rows[-1].student_id}: {rows[-1].status}", refresh=False)
                    bar.update(len(rows))
            with open(record, "a") as rec:
                rec.write(f"merged {len(graded)} notebooks into OUT in {merge_s:.2f} s\n")
        finally:
            if bar is not None:
                bar.close()
            with contextlib.suppress(Exception):          # the course leaves the workers
                client.unregister_worker_plugin(plugin.name)
    return graded, judge_s
