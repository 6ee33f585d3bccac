"""The sandbox against a learner who attacks the grader itself, in ONE warm grading batch of a
two-lesson toy course (one worker: every student below goes through the same shard, its runtime
folder and its nbgrader process, one after another).

Each student is a probe: a daemon that outlives its notebook (``setsid``), a kernel that fills
every place it can write, one that plants symbolic links for the launcher to follow, one that
makes a user namespace, one that hides memory in ``memfd`` files, one that floods its notebook
with tracebacks. Each test checks a concrete outcome (status and score, a file's ownership, disk
space, a notebook's size); the good student graded after them all shows the shard still works.
"""
from __future__ import annotations

import ast
import json
import os
import tempfile
import threading
import uuid
from pathlib import Path

import nbformat
import pytest

from autograder import grade as G
from autograder import sandbox
from conftest import requires
from grading import toy

pytestmark = [pytest.mark.slow, requires(sandbox.bwrap_available() is not None, "needs bubblewrap")]

LESSON_B = toy.LESSON + "-b"
TOKEN = f"fpnlab-probe-{uuid.uuid4().hex}"       # in the daemons' argv: this run's processes only
MEMORY = 5 << 30                                 # torch and torchvision fit; the memfd probe does not

def _say(what: str, value: str) -> str:
    # The autograded notebook keeps no output of the kernel (the judge rewrites it): the probes
    # write what they saw to the kernel's own stderr, which is the warm sandbox's log.
    return f"print({'PROBE ' + what!r}, {value}, file=sys.__stderr__, flush=True)"


DAEMON_CODE = (
    "import time\n"
    "for _ in range(600):\n"
    "    open('/tmp/daemon-alive', 'w').write(str(time.time()))\n"
    "    time.sleep(0.1)\n")

# One daemon with a session of its own, one double-forked that calls setsid() itself; full marks
# only when both run (and write their marker in /tmp) at the end of the cell.
DAEMONS = f'''
import os, subprocess, sys, time
code = {DAEMON_CODE!r}
popen = subprocess.Popen([sys.executable, "-c", code, {TOKEN!r}], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
read, write = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(write, os.readlink("/proc/self").encode())
        os.execv(sys.executable, [sys.executable, "-c", code, {TOKEN!r}])
    os._exit(0)
forked = int(os.read(read, 32))
open("/tmp/daemon.pids", "w").write(f"{{popen.pid}} {{forked}}")
time.sleep(1)
alive = [p for p in (popen.pid, forked) if os.path.exists(f"/proc/{{p}}")]
{_say("daemons started", "alive")}
if len(alive) != 2 or time.time() - float(open("/tmp/daemon-alive").read()) > 0.5:
    raise RuntimeError("the probe could not start its daemons")
''' + toy.SOLUTION

# The same student's next notebook: full marks only when the file the first notebook left names
# two processes, and neither is alive nor still writing.
DAEMONS_GONE = f'''
import os, sys, time
pids = [int(p) for p in open("/tmp/daemon.pids").read().split()]
alive = [p for p in pids if os.path.exists(f"/proc/{{p}}")]
before = os.stat("/tmp/daemon-alive").st_mtime
time.sleep(0.5)
still_writing = os.stat("/tmp/daemon-alive").st_mtime != before
{_say("daemons gone", "pids, alive, still_writing")}
if len(pids) != 2 or alive or still_writing:
    raise RuntimeError(f"the daemons {{alive}} of the first notebook survived into this one")
''' + toy.SOLUTION

# A kernel that fills every place it can write, plants links for the launcher (root) to follow
# wherever it can, and tries to make a user namespace. Full marks only when it could fill its
# own tmpfs, nothing more than a tmpfs anywhere, and made no user namespace.
PROBES = '''
import ctypes, errno, json, os, subprocess, sys
from ipykernel.connect import get_connection_file
conn = get_connection_file()
info = json.load(open(conn))
runtime = os.path.dirname(info.get("ip", "") or "/nonexistent/x")
places = {os.getcwd(), "/tmp", os.path.expanduser("~"), "/var/tmp", os.path.dirname(conn),
          runtime, "/run", "/dev/shm", "/"}
block = bytes(32 << 20)
filled = {}
for place in sorted(places):
    total = 0
    try:
        os.makedirs(place, exist_ok=True)
        for i in range(48):                            # up to 1.5 GB a place
            with open(os.path.join(place, f".fill-{i}"), "wb") as f:
                f.write(block)
            total += len(block)
    except OSError:
        pass
    filled[place] = total >> 20
    for i in range(48):
        try:
            os.unlink(os.path.join(place, f".fill-{i}"))
        except OSError:
            pass
print("PROBE filled", filled, file=sys.__stderr__, flush=True)

links = []
for folder in {os.path.dirname(conn), runtime, "/tmp"}:
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    names |= {os.path.basename(conn), "k.json", "warm.sock"} | {f"k-{i}" for i in range(1, 16)}
    for name in names:
        path = os.path.join(folder, name)
        try:
            if os.path.lexists(path) and not os.path.isdir(path):
                os.unlink(path)
            os.symlink(VICTIM, path)
            links.append(path)
        except OSError:
            pass
print("PROBE links", len(links), file=sys.__stderr__, flush=True)

libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    os._exit(0 if libc.unshare(0x10000000) == 0 else 100 + ctypes.get_errno())
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
tool = subprocess.run(["unshare", "-r", "true"], capture_output=True, text=True)
userns = (code, errno.errorcode.get(code - 100), tool.returncode)
print("PROBE userns", userns, file=sys.__stderr__, flush=True)

if filled["/tmp"] < 128 or max(filled.values()) > 256:
    raise RuntimeError(f"filled {filled}")
if not links:
    raise RuntimeError("the probe planted no link")
if code == 0 or userns[1] not in ("EPERM", "ENOSPC", "EACCES") or tool.returncode == 0:
    raise RuntimeError(f"made a user namespace: {userns}")
''' + toy.SOLUTION

# Memory that no rlimit counts: memfd files (each under RLIMIT_FSIZE), 1 GB beyond --memory-gb.
MEMFD = f'''
import os
chunk = bytes(60 << 20)
fds = []
for i in range(({MEMORY} + (1 << 30)) // len(chunk) + 1):
    fd = os.memfd_create(f"hidden-{{i}}")
    os.write(fd, chunk)
    fds.append(fd)
''' + toy.SOLUTION


def _errors_notebook():
    """40 cells that raise an exception of 1 MB each, one that shows 40 such tracebacks and one
    that prints 3 MB to stderr, before a correct answer."""
    nb = toy.with_answer(toy.SOLUTION)
    at = next(i for i, c in enumerate(nb.cells)
              if c.metadata.get("nbgrader", {}).get("grade_id") == "pad-to")
    cells = [nbformat.v4.new_code_cell("raise ValueError('E' * (1 << 20))") for _ in range(40)]
    cells.append(nbformat.v4.new_code_cell(
        "for _ in range(40):\n    try:\n        raise KeyError('K' * (1 << 20))\n"
        "    except KeyError:\n        get_ipython().showtraceback()"))
    cells.append(nbformat.v4.new_code_cell("import sys\nsys.stderr.write('S' * (3 << 20))"))
    nb.cells[at:at] = cells
    return nb


def _kernel_uid() -> int:
    """The kernels' uid when this process grades as root (Shard 0 of this process)."""
    return sandbox.DEFAULT_UID + (os.getpid() % 4096) * 16


def _our_processes() -> list:
    """Processes of this run: the daemons (their argv holds TOKEN) and, as root, anything of the
    kernels' uid."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            mine = TOKEN.encode() in (proc / "cmdline").read_bytes()
            if os.geteuid() == 0:
                uids = next(ln for ln in (proc / "status").read_text().splitlines()
                            if ln.startswith("Uid:")).split()[1:]
                mine = mine or str(_kernel_uid()) in uids
        except (OSError, StopIteration):
            continue
        if mine:
            found.append(proc.name)
    return found


def _cgroups() -> set:
    """The sandbox cgroups of this run (named after the kernels' uid)."""
    return {str(p) for p in Path(sandbox.CGROUP_FS).glob(f"**/fpnlab-{_kernel_uid()}-*") if p.is_dir()}


class DiskWatch:
    """The least free space seen on the file system of the shards' runtime folders."""

    def __init__(self, path: str):
        self.path, self.stop = path, False
        self.start = self.least = self.free()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def run(self):
        while not self.stop:
            self.least = min(self.least, self.free())
            threading.Event().wait(0.1)

    def close(self) -> int:
        self.stop = True
        self.thread.join(2)
        return self.start - self.least


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    from autograder import authoring as A

    base = tmp_path_factory.mktemp("hardening")
    source = base / "solutions"
    for lesson in (toy.LESSON, LESSON_B):
        A.write(toy.source_notebook(), source / lesson / f"{lesson}.ipynb")
    victim = base / "victim.txt"            # a host file the grader owns
    victim.write_text("the grader's file")
    victim.chmod(0o600)
    before = victim.stat()
    subs = base / "submissions"
    students = {                            # graded in this order, one shard
        "a-daemon": toy.with_answer(DAEMONS),
        "b-probes": toy.with_answer(f"VICTIM = {str(victim)!r}\n" + PROBES),
        "c-errors": _errors_notebook(),
        "d-memfd": toy.with_answer(MEMFD),
        "e-good": toy.with_answer(toy.SOLUTION),
    }
    for student, nb in students.items():
        toy.write_submission(subs, student, nb, toy.LESSON, toy.NOTEBOOK)
    toy.write_submission(subs, "a-daemon", toy.with_answer(DAEMONS_GONE), LESSON_B,
                         f"{LESSON_B}.ipynb")
    cgroups = _cgroups()
    watch = DiskWatch(tempfile.gettempdir())
    try:
        rows = G.grade("all", subs, base / "out", workers=1, source=source, progress=False,
                       settings=G.Settings(timeout=60, memory=MEMORY), log=lambda m: None)
    finally:
        dropped = watch.close()
    return {"rows": {(r.student_id, r.lesson): r for r in rows}, "out": base / "out",
            "victim": victim, "before": before, "dropped": dropped,
            "left": _our_processes(), "cgroups": _cgroups() - cgroups}


def _row(batch, student, lesson=toy.LESSON):
    return batch["rows"][(student, lesson)]


def _log(batch, student) -> str:
    logs = sorted((batch["out"] / "grading" / "logs").glob(f"*-warm-{student}.log"))
    assert logs, f"no warm sandbox log for {student}"
    return "\n".join(p.read_text(errors="replace") for p in logs)


def _probe(batch, student, what) -> str:
    """What a probe wrote to its log: the rest of the line after ``PROBE <what>``."""
    log = _log(batch, student)
    assert f"PROBE {what}" in log, log[-2000:]
    return log.split(f"PROBE {what}")[1].splitlines()[0].strip()


def _cgroups_apply() -> bool:
    cgroup, line = sandbox.Cgroup.create(64 << 20, 8)
    if cgroup:
        cgroup.remove()
    return cgroup is not None


def test_a_setsid_daemon_dies_before_the_students_next_notebook(batch):
    r = _row(batch, "a-daemon")
    assert (r.status, r.score) == ("graded", 3.0), (r, _log(batch, "a-daemon")[-2000:])
    r = _row(batch, "a-daemon", LESSON_B)
    assert (r.status, r.score) == ("graded", 3.0), (r, _probe(batch, "a-daemon", "daemons gone"))
    assert _probe(batch, "a-daemon", "daemons gone").endswith("[] False")


def test_nothing_of_the_run_outlives_grading(batch):
    assert batch["left"] == []                      # no daemon, nothing of the kernels' uid
    assert batch["cgroups"] == set()                # every sandbox's cgroup removed


def test_filling_every_writable_place_costs_the_host_no_disk_and_the_next_student_nothing(batch):
    r = _row(batch, "b-probes")
    assert (r.status, r.score) == ("graded", 3.0), (r, _log(batch, "b-probes")[-3000:])
    filled = ast.literal_eval(_probe(batch, "b-probes", "filled"))
    assert filled["/tmp"] >= 128 and max(filled.values()) <= 256, filled
    assert batch["dropped"] < 200 << 20, f"host disk dropped {batch['dropped'] >> 20} MB: {filled}"
    r = _row(batch, "c-errors")                     # the next student of the shard
    assert (r.status, r.score) == ("graded", 3.0), r


def test_links_planted_by_a_kernel_are_never_followed(batch):
    assert int(_probe(batch, "b-probes", "links")) > 0
    now, before = batch["victim"].stat(), batch["before"]
    assert (now.st_uid, now.st_gid, now.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    assert batch["victim"].read_text() == "the grader's file"


def test_a_kernel_cannot_make_a_user_namespace(batch):
    code, name, tool = ast.literal_eval(_probe(batch, "b-probes", "userns"))
    assert code != 0 and name in ("EPERM", "ENOSPC", "EACCES") and tool != 0, (code, name, tool)
    assert _row(batch, "b-probes").score == 3.0


def test_a_flood_of_tracebacks_keeps_the_points_of_the_tests(batch):
    r = _row(batch, "c-errors")
    assert (r.status, r.score) == ("graded", 3.0), r


def test_memory_hidden_in_memfd_counts_where_cgroups_apply(batch):
    r = _row(batch, "d-memfd")
    log = _log(batch, "d-memfd")
    if _cgroups_apply():
        assert "limits: cgroup v" in log and "memory+pids" in log, log[:500]
        assert r.status == "killed" or (r.status, r.score) == ("graded", 0.0), r
    else:
        assert "limits: rlimits only (no writable cgroup" in log, log[:500]
    r = _row(batch, "e-good")                       # the next student of the shard
    assert (r.status, r.score) == ("graded", 3.0), r


def test_the_output_cap_counts_errors_and_streams():
    """40 errors of 1 MB (and 40 more from one cell) and 3 MB of stderr keep about MAX_OUTPUT
    bytes; every cell that raised keeps an error output (it is what fails a test)."""
    capped = G.CappedExecute()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x") for _ in range(42)]
    capped.nb = nb
    capped._fpnlab_bytes = capped._fpnlab_hand_overs = 0
    capped._fpnlab_capped = False
    capped.reset_execution_trackers()
    capped.clear_before_next_output = False

    def msg(kind, **content):
        return {"msg_type": kind, "header": {"msg_type": kind}, "parent_header": {"msg_id": "m"},
                "content": content}

    cells = [[] for _ in nb.cells]
    for i in range(40):
        capped.output(cells[i], msg("error", ename="ValueError", evalue="E" * (1 << 20),
                                    traceback=["E" * (1 << 20), "line"]), None, i)
    for _ in range(40):
        capped.output(cells[40], msg("error", ename="KeyError", evalue="K" * (1 << 20),
                                     traceback=["K" * (1 << 20)]), None, 40)
    capped.output(cells[41], msg("stream", name="stderr", text="S" * (3 << 20)), None, 41)
    size = len(json.dumps(cells))
    assert size < G.MAX_OUTPUT + (100 << 10), size
    for i in range(41):
        assert [o.ename for o in cells[i] if o.output_type == "error"][:1] == (
            ["ValueError"] if i < 40 else ["KeyError"]), i
    assert "dropped" in json.dumps(cells)           # said once, where the cap was reached
    assert len(json.dumps(cells[41])) < 1000        # the 3 MB of stderr past the cap: gone
