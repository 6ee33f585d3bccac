"""A Jupyter kernel wrapped in bubblewrap, for grading code nobody has reviewed.

``fpnlab grade`` writes a kernelspec whose ``argv`` runs ``python -m fpnlab.sandbox kernel -f
{connection_file}``. That launcher runs *outside* the sandbox with the grader's rights and:

1. when started as root, the kernel still runs as an unprivileged uid (root is exempt from
   ``RLIMIT_NPROC``), one uid per grading worker so one student's fork bomb cannot starve
   another worker's kernel; the sandbox goes into a cgroup of its own (memory, processes:
   :class:`Cgroup`) and a user namespace of its own in which no further user namespace can be
   made (``enter``);
2. starts ``bwrap`` with every namespace unshared (no network, own PIDs, own users), a read-only
   view of the system, Python and the ``fpnlab`` package only (no repository, no course
   directory, no gradebook, no submissions, no home, not even the grader's runtime folder), a
   private ``/tmp`` and home folder (size-limited tmpfs) as the only writable places. With no
   network, ZMQ cannot use TCP: the grader sets ``KernelManager.transport`` to ``ipc``, this
   launcher binds the kernel's unix sockets itself in the grader's private runtime folder and
   hands the kernel their descriptors (ZMQ ``USE_FD``) together with a copy of the connection
   file: nothing the kernel can write is ever followed, chowned or read by the grader;
3. inside, ``python -m fpnlab.sandbox limits ...`` sets the rlimits (memory, processes,
   file size, CPU time, open files, no core files) and execs the kernel, so the process limit
   counts only the sandbox's own processes;
4. kills the whole sandbox after a wall-clock limit and writes what happened (``ok``, ``timeout``,
   ``killed`` with the signal) to ``FPNLAB_SANDBOX_STATUS``/``<student>--<lesson>.json`` (nbgrader
   starts each kernel in ``autograded/<student>/<lesson>``).

With ``Limits.warm`` (what ``fpnlab grade`` uses) steps 1 to 3 run once per student: the sandbox
holds a Python that has imported torch, which forks a kernel per notebook
(:mod:`fpnlab.warmkernel`) and kills every other process of the sandbox when a kernel ends; the
launcher asks it for a kernel and waits for its exit code, and stops the whole sandbox on a
timeout or before another student's notebook.

Settings come from ``FPNLAB_SANDBOX_*`` environment variables, set by the grader in nbgrader's
environment; none of them reaches the learner's code (the sandbox starts from an empty
environment). Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BWRAP = "/usr/bin/bwrap"
HOME = "/home/learner"          # the learner's scratch folder, as the sandbox sees it
DEFAULT_UID = 200000            # the kernel's uid when grading runs as root (the grader adds to it)
ENV_PREFIX = "FPNLAB_SANDBOX_"
# Environment the kernel gets (everything else is cleared: NBGRADER_EXECUTION, JPY_PARENT_PID ...).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
PASS_VARS = ("LANG", "LC_ALL", "FPNLAB_DEVICE", "CUDA_VISIBLE_DEVICES", "TZ")


@dataclass
class Limits:
    """Per-kernel limits. ``memory`` in bytes, ``nproc`` processes + threads."""

    timeout: float = 600.0         # wall clock, whole notebook (seconds)
    memory: int = 6 << 30          # RLIMIT_DATA (+ RLIMIT_AS without GPUs; torch maps ~2 GiB)
    nproc: int = 256               # RLIMIT_NPROC inside the sandbox's own user namespace
    fsize: int = 64 << 20          # RLIMIT_FSIZE: largest file the kernel may write
    scratch: int = 256 << 20       # size of each writable tmpfs (/tmp, the home folder): RAM
    nofile: int = 1024
    cpu: Optional[int] = None      # RLIMIT_CPU seconds (default: timeout + 30)
    sandbox: bool = True           # False only with --unsafe-no-sandbox: rlimits and timeout only
    uid: Optional[int] = None      # the unprivileged uid to run as when started as root
    warm: bool = False             # one warm sandbox per student, a forked kernel per notebook
    readable: List[str] = field(default_factory=list)   # extra read-only paths to show

    def to_env(self) -> Dict[str, str]:
        return {ENV_PREFIX + "LIMITS": json.dumps(asdict(self))}

    @classmethod
    def from_env(cls, env=os.environ) -> "Limits":
        raw = env.get(ENV_PREFIX + "LIMITS")
        return cls(**json.loads(raw)) if raw else cls()


def bwrap_available() -> Optional[str]:
    """The bwrap binary when it is installed and can create namespaces here, else None."""
    path = shutil.which("bwrap") or (BWRAP if os.path.exists(BWRAP) else None)
    if not path:
        return None
    probe = subprocess.run([path, "--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"],
                           capture_output=True, timeout=30)
    return path if probe.returncode == 0 else None


@lru_cache(maxsize=None)
def _bwrap_disables_userns(bwrap: str) -> bool:
    """Whether this bwrap (0.8 and later, run without root) can forbid user namespaces inside."""
    probe = subprocess.run([bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
                            "--ro-bind", "/", "/", "--", "/bin/true"], capture_output=True, timeout=30)
    return probe.returncode == 0


# ----------------------------------------------------------------------------- cgroups

CGROUP_FS = "/sys/fs/cgroup"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class Cgroup:
    """The cgroup(s) of one sandbox, made by the root launcher before the sandbox starts and
    removed with it: a memory limit that counts everything the sandbox holds (what rlimits do
    not: ``memfd_create``, files in its tmpfs, page cache), a process limit, and a way to kill all
    of it at once. cgroup v2 (``memory.max``, ``pids.max``, ``cgroup.kill``) or v1 as a hybrid
    host mounts it (``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes``, ``pids.max``,
    the freezer); each one a child of the launcher's own cgroup in its hierarchy."""

    def __init__(self, version: int, dirs: Dict[str, str]):
        self.version, self.dirs = version, dirs

    # --- making one
    @staticmethod
    def _own() -> Dict[str, str]:
        own = {}
        for line in _read("/proc/self/cgroup").splitlines():
            num, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
        return own

    @classmethod
    def create(cls, memory: int, nproc: int) -> Tuple[Optional["Cgroup"], str]:
        """A new cgroup limited to ``memory`` bytes and ``nproc`` tasks, and the line the grading
        log shows; (None, why) where this host has no cgroup this process can write."""
        if os.geteuid() != 0:
            return None, "limits: rlimits only (no writable cgroup)"
        name = f"fpnlab-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            own = cls._own()
        except (OSError, ValueError):
            return None, "limits: rlimits only (no writable cgroup)"
        made: Optional[Cgroup] = None
        try:
            if os.path.exists(os.path.join(CGROUP_FS, "cgroup.controllers")) and "" in own:
                made = cls._create_v2(os.path.join(CGROUP_FS, own[""].lstrip("/")), name, memory, nproc)
                return made, (f"limits: cgroup v2 memory+pids (memory.max {memory >> 20} MB, "
                              f"pids.max {nproc}), and the rlimits")
            made = cls._create_v1(own, name, memory, nproc)
            return made, (f"limits: cgroup v1 memory+pids (memory.limit_in_bytes {memory >> 20} MB"
                          f"{', swap included' if made.dirs.get('memsw') else ''}, pids.max {nproc}"
                          f"{', freezer' if 'freezer' in made.dirs else ''}), and the rlimits")
        except OSError as e:
            if made is not None:
                made.remove()
            return None, f"limits: rlimits only (no writable cgroup: {e.strerror or e})"

    @classmethod
    def _create_v2(cls, parent: str, name: str, memory: int, nproc: int) -> "Cgroup":
        enabled = _read(os.path.join(parent, "cgroup.subtree_control")).split()
        if not {"memory", "pids"} <= set(enabled):
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
        path = os.path.join(parent, name)
        os.mkdir(path)
        made = cls(2, {"unified": path})
        _write(os.path.join(path, "memory.max"), str(memory))
        if os.path.exists(os.path.join(path, "memory.swap.max")):
            _write(os.path.join(path, "memory.swap.max"), "0")
        _write(os.path.join(path, "pids.max"), str(nproc))
        return made

    @classmethod
    def _create_v1(cls, own: Dict[str, str], name: str, memory: int, nproc: int) -> "Cgroup":
        dirs: Dict[str, str] = {}
        for controller in ("memory", "pids", "freezer"):
            top = os.path.join(CGROUP_FS, controller)
            if controller not in own or not os.path.isdir(top):
                if controller == "freezer":
                    continue
                raise OSError(0, f"no v1 {controller} controller")
            path = os.path.join(top, own[controller].lstrip("/"), name)
            os.mkdir(path)
            dirs[controller] = path
        made = cls(1, dirs)
        try:
            _write(os.path.join(dirs["memory"], "memory.limit_in_bytes"), str(memory))
            memsw = os.path.join(dirs["memory"], "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                try:
                    _write(memsw, str(memory))          # no escape into swap
                    made.dirs["memsw"] = memsw
                except OSError:
                    pass
            _write(os.path.join(dirs["pids"], "pids.max"), str(nproc))
        except OSError:
            made.remove()
            raise
        return made

    # --- using one
    def procs_files(self) -> List[str]:
        return [os.path.join(d, "cgroup.procs") for k, d in self.dirs.items() if k != "memsw"]

    def to_list(self) -> List[str]:
        return [self.version, self.dirs]

    @classmethod
    def from_list(cls, data) -> Optional["Cgroup"]:
        try:
            return cls(int(data[0]), {str(k): str(v) for k, v in dict(data[1]).items()})
        except (TypeError, ValueError, IndexError, KeyError):
            return None

    def pids(self) -> List[int]:
        found = set()
        for f in self.procs_files():
            try:
                found.update(int(x) for x in _read(f).split())
            except OSError:
                pass
        return sorted(found)

    def kill(self, wait: float = 5.0) -> None:
        """Kill every process in it (frozen first, so none can fork away) and wait for them."""
        deadline = time.monotonic() + wait
        kill_file = os.path.join(self.dirs.get("unified", ""), "cgroup.kill")
        freezer = self.dirs.get("freezer")
        while self.pids() and time.monotonic() < deadline:
            if self.version == 2 and os.path.exists(kill_file):
                try:
                    _write(kill_file, "1")
                except OSError:
                    pass
            else:
                if freezer:
                    try:
                        _write(os.path.join(freezer, "freezer.state"), "FROZEN")
                    except OSError:
                        pass
                for pid in self.pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                if freezer:
                    try:
                        _write(os.path.join(freezer, "freezer.state"), "THAWED")
                    except OSError:
                        pass
            time.sleep(0.01)

    def remove(self, wait: float = 5.0) -> None:
        """Kill what is left in it, then remove it."""
        self.kill(wait)
        deadline = time.monotonic() + wait
        for key, path in self.dirs.items():
            if key == "memsw":
                continue
            while os.path.isdir(path):
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)


def cgroup_limits(limits: "Limits") -> Tuple[int, int]:
    """The cgroup's memory (the kernel's memory, plus what the two writable tmpfs may hold, which
    live in RAM) and tasks (the kernel's processes, plus the sandbox's own few)."""
    return limits.memory + 2 * limits.scratch, limits.nproc + 16


# ----------------------------------------------------------------------------- user namespaces

CLONE_NEWUSER = 0x10000000


def _unshare(flags: int) -> None:
    if hasattr(os, "unshare"):
        os.unshare(flags)
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _identity_userns() -> None:
    """(As root.) Move this process into a new user namespace that maps every uid to itself, and
    allow no user namespace below it: root keeps its rights over the host's files (it sets up
    bwrap's mounts), the uid the kernel switches to keeps counting against ``RLIMIT_NPROC``, and
    neither ``unshare -r`` nor ``CLONE_NEWUSER`` works for anything inside.

    bwrap's own ``--disable-userns`` needs ``--unshare-user``, which as root maps only root, and
    the kernel's uid could then not exist; so as root this step does it for bwrap."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    helper = os.fork()
    if helper == 0:                         # stays outside: it writes the maps of its parent
        code = 1
        try:
            os.close(ready_w)
            os.close(done_r)
            if os.read(ready_r, 1) == b"u":
                parent = os.getppid()
                for name in ("uid_map", "gid_map"):
                    _write(f"/proc/{parent}/{name}", "0 0 4294967295\n")
                os.write(done_w, b"y")
                code = 0
        finally:
            os._exit(code)
    os.close(ready_r)
    os.close(done_w)
    try:
        try:
            _unshare(CLONE_NEWUSER)
        except OSError:
            os.write(ready_w, b"n")
            raise
        os.write(ready_w, b"u")
        if os.read(done_r, 1) != b"y":       # inside, but unmapped: nothing can go on from here
            raise RuntimeError("could not write the uid/gid maps of the new user namespace")
    finally:
        os.close(ready_w)
        os.close(done_r)
        os.waitpid(helper, 0)


def userns_blocked() -> bool:
    """Whether this process cannot make a user namespace (checked in a throwaway child)."""
    pid = os.fork()
    if pid == 0:
        try:
            _unshare(CLONE_NEWUSER)
            os._exit(1)
        except OSError:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def enter(cgroups: List[str], userns: bool, command: List[str]) -> None:
    """The step between the launcher and bwrap: join the sandbox's cgroup, (as root) a user
    namespace that allows none below it, then exec ``command``."""
    for procs in cgroups:
        _write(procs, str(os.getpid()))
    if userns:
        try:
            _identity_userns()
            _write("/proc/sys/user/max_user_namespaces", "0\n")
        except OSError as e:
            # bwrap still runs (as root, in the host's user namespace or in an identity-mapped
            # one); the grading log says that the learner's code could make one.
            print(f"fpnlab sandbox: user namespaces: NOT blocked inside ({e})", file=sys.stderr)
        except RuntimeError as e:
            print(f"fpnlab sandbox: {e}", file=sys.stderr)
            raise SystemExit(3)
        else:
            print("fpnlab sandbox: user namespaces: blocked inside (max_user_namespaces 0)",
                  file=sys.stderr)
    os.execv(command[0], command)


def _system_binds() -> List[str]:
    args: List[str] = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    return args


def _python_paths() -> List[str]:
    """Folders the kernel needs to read: the interpreter, the venv, the fpnlab package."""
    import fpnlab

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)),
             str(Path(fpnlab.__file__).resolve().parent)}
    # Interpreter prefixes are typically under /usr already; skip those to keep the view small.
    return sorted(p for p in paths if p and not p.startswith("/usr/"))


def bwrap_command(bwrap: str, limits: Limits, inner: List[str], as_root: bool = False) -> List[str]:
    """The bwrap argv that runs ``inner`` in the sandbox. No folder of the host is writable in
    it: the kernel gets its sockets as descriptors and its connection file as data."""
    if as_root:
        # Real root is exempt from RLIMIT_NPROC, and ``--unshare-user`` made by root maps only root:
        # keep the mounts privileged (in the identity-mapped user namespace of ``enter``, which
        # allows no other below it), and let the inner step switch to ``limits.uid``.
        unshare = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                   "--unshare-cgroup-try", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        unshare = ["--unshare-all"]
        if _bwrap_disables_userns(bwrap):
            unshare += ["--unshare-user", "--disable-userns"]
    # The writable places are tmpfs of a fixed size (they live in RAM, which no rlimit counts).
    size = str(limits.scratch)
    args = [bwrap, *unshare, "--die-with-parent", "--new-session", "--clearenv",
            *_system_binds(),
            "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
            "--size", str(1 << 20), "--tmpfs", "/home",
            "--perms", "1777", "--size", size, "--tmpfs", HOME,
            "--size", str(16 << 20), "--tmpfs", "/run",
            "--size", str(16 << 20), "--tmpfs", "/var", "--perms", "1777", "--dir", "/var/tmp"]
    made = {"/", "/tmp", "/home", "/run", "/var", "/usr", "/etc", "/proc", "/dev"}
    for p in _python_paths() + list(limits.readable):
        # bwrap makes missing parents 0700; the kernel's uid must be able to walk through them.
        for parent in reversed(Path(p).parents):
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind-try", p, p]
    gpus = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    for dev in gpus:                      # CUDA when the grading machine has a GPU
        args += ["--dev-bind", dev, dev]
    if gpus:
        args += ["--ro-bind-try", "/sys", "/sys"]
    args += ["--chdir", HOME]
    env = {"HOME": HOME, "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
           "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONNOUSERSITE": "1", "TMPDIR": "/tmp", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    for var in THREAD_VARS:
        env[var] = os.environ.get(var, "1")
    for var in PASS_VARS:
        if var in os.environ:
            env[var] = os.environ[var]
    for k, v in env.items():
        args += ["--setenv", k, v]
    return args + ["--", *inner]


def _limits_argv(limits: Limits, uid: Optional[int] = None) -> List[str]:
    cpu = limits.cpu if limits.cpu is not None else int(limits.timeout) + 30
    argv = [sys.executable, "-m", "fpnlab.sandbox", "limits", "--as", str(limits.memory),
            "--nproc", str(limits.nproc), "--fsize", str(limits.fsize),
            "--nofile", str(limits.nofile), "--cpu", str(cpu)]
    if uid is not None:
        argv += ["--uid", str(uid)]
    return argv + ["--"]


def _write_status(path: Optional[str], **status) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, path)


def _die_with_parent():
    """preexec_fn: the child dies with this launcher, even when the launcher is SIGKILLed."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover (not glibc)
        pass


def launch(kernel_argv: List[str], connection_file: str, limits: Limits,
           status_path: Optional[str] = None) -> int:
    """Run ``kernel_argv`` under the limits (and bwrap unless disabled); return its exit code."""
    connection_file = os.path.abspath(connection_file)
    connection_dir = os.path.dirname(connection_file)
    # Without the sandbox the kernel keeps the grader's uid (as root: no process limit).
    uid = (limits.uid or DEFAULT_UID) if os.geteuid() == 0 and limits.sandbox else None
    runtime = os.environ.get(ENV_PREFIX + "RUNTIME")
    if limits.sandbox and (not runtime or os.path.realpath(runtime) != os.path.realpath(connection_dir)):
        # The folder is bound into the sandbox (and given to the kernel's uid): only the
        # private runtime folder the grader made for this purpose will do, never /tmp.
        print(f"fpnlab sandbox: connection file {connection_file} is not in the runtime folder "
              f"{runtime} ({ENV_PREFIX}RUNTIME)", file=sys.stderr)
        _write_status(status_path, status="error", detail="connection file outside the runtime folder")
        return 2
    if uid is not None:
        # The kernel runs as ``uid``: it must read its connection file. (The grader made the
        # runtime folder for that uid.)
        os.chown(connection_file, uid, uid)
    state_folder = os.environ.get(ENV_PREFIX + "STATUS")
    if limits.sandbox and limits.warm and state_folder:
        return _launch_warm(kernel_argv, connection_file, limits, uid, status_path, state_folder)
    inner = _limits_argv(limits, uid) + kernel_argv
    if limits.sandbox:
        bwrap = shutil.which("bwrap") or BWRAP
        cmd = bwrap_command(bwrap, connection_dir, limits, inner, as_root=uid is not None)
        cwd = "/"
    else:
        cmd, cwd = inner, os.getcwd()
    env = None if limits.sandbox else {k: v for k, v in os.environ.items()
                                       if not k.startswith(ENV_PREFIX)
                                       and k not in ("NBGRADER_EXECUTION", "JPY_PARENT_PID")}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, preexec_fn=_die_with_parent,
                            start_new_session=True)

    def stop(signum, _frame):
        _kill(proc)
        _write_status(status_path, status="stopped", signal=signum,
                      seconds=round(time.monotonic() - start, 2))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # interrupts travel as kernel messages
    try:
        code = proc.wait(timeout=limits.timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        _write_status(status_path, status="timeout", seconds=round(time.monotonic() - start, 2),
                      limit=limits.timeout)
        code = -signal.SIGKILL
    else:
        _report_exit(status_path, code, round(time.monotonic() - start, 2))
    return code


def _report_exit(status_path: Optional[str], code: int, took: float) -> None:
    """``ok`` with the exit code, or ``killed`` with the signal (negative or 128 + signal)."""
    if code < 0 or code >= 128:
        sig = -code if code < 0 else code - 128
        _write_status(status_path, status="killed", signal=sig, seconds=took)
    else:
        _write_status(status_path, status="ok", exit_code=code, seconds=took)


def _launch_warm(kernel_argv: List[str], connection_file: str, limits: Limits, uid: Optional[int],
                 status_path: Optional[str], state_folder: str) -> int:
    """:func:`launch` through the student's warm sandbox (:mod:`fpnlab.warmkernel`)."""
    from . import warmkernel

    runtime = os.path.dirname(connection_file)
    student = Path.cwd().parent.name          # nbgrader's autograded/<student>/<lesson>
    inner = _limits_argv(limits, uid) + [sys.executable, "-m", "fpnlab.warmkernel", "serve",
                                         os.path.join(runtime, warmkernel.SOCKET_NAME)]
    bwrap = shutil.which("bwrap") or BWRAP
    command = bwrap_command(bwrap, runtime, limits, inner, as_root=uid is not None)
    logs = Path(state_folder).parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = f"warm-{student}.log"
    start = time.monotonic()
    try:
        sock = warmkernel.connect(student, state_folder, runtime, command, str(logs / log))
    except OSError as e:
        print(f"fpnlab sandbox: {e}", file=sys.stderr)
        _write_status(status_path, status="error", detail=str(e), log=log)
        return 2

    def stop(signum, _frame):
        warmkernel.stop(state_folder)             # the whole sandbox goes
        _write_status(status_path, status="stopped", signal=signum,
                      seconds=round(time.monotonic() - start, 2))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # interrupts travel as kernel messages
    args = kernel_argv[kernel_argv.index("-f") + 2:]           # what follows -f CONNECTION_FILE
    sock.sendall((json.dumps({"connection_file": connection_file, "args": args}) + "\n").encode())
    replies = sock.makefile("r")
    code: Optional[int] = None
    sock.settimeout(max(0.1, limits.timeout - (time.monotonic() - start)))   # 0 = non-blocking
    try:
        for line in replies:
            message = json.loads(line)
            if "exit" in message:
                code = int(message["exit"])
                break
    except (OSError, ValueError):                   # socket.timeout is an OSError
        if time.monotonic() - start >= limits.timeout - 0.5:
            warmkernel.stop(state_folder)
            _write_status(status_path, status="timeout", seconds=round(time.monotonic() - start, 2),
                          limit=limits.timeout)
            return -signal.SIGKILL
    took = round(time.monotonic() - start, 2)
    if code is None:                                # the sandbox died under the kernel
        warmkernel.stop(state_folder)
        _write_status(status_path, status="killed", signal=signal.SIGKILL, seconds=took)
        return -signal.SIGKILL
    _report_exit(status_path, code, took)
    return code


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()


def set_limits(memory: int, nproc: int, fsize: int, nofile: int, cpu: int,
               uid: Optional[int] = None) -> None:
    """Apply the rlimits to this process (inherited by everything it starts), then switch to
    ``uid`` when given (the sandbox started as root)."""
    limits = [(resource.RLIMIT_DATA, memory), (resource.RLIMIT_NPROC, nproc),
              (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, nofile),
              (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_CORE, 0)]
    # RLIMIT_DATA counts what a program writes (malloc, torch's allocator). The address-space
    # limit is stricter, but CUDA reserves far more address space than it uses: only without GPUs.
    if not any(Path("/dev").glob("nvidia*")):
        limits.append((resource.RLIMIT_AS, memory))
    for which, value in limits:
        resource.setrlimit(which, (value, value))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() == 0 or os.geteuid() == 0:  # pragma: no cover (setuid must not fail open)
            raise SystemExit("fpnlab sandbox: could not drop root")


def kernelspec(python: str = sys.executable) -> dict:
    """The kernel.json of the sandboxed kernel (its settings come from the environment)."""
    return {"argv": [python, "-m", "fpnlab.sandbox", "kernel", "-f", "{connection_file}"],
            "display_name": "Python 3 (fpnlab, sandboxed)", "language": "python",
            "interrupt_mode": "message", "metadata": {"debugger": False}}


# ----------------------------------------------------------------------------- integrity
# The grader puts this line at the top of every graded test cell (in its own copy of the
# source; releases never show it), so each test first checks that the learner's code has not
# replaced what the test relies on.
INTEGRITY_LINE = '__import__("fpnlab.sandbox").sandbox.verify()  # fpnlab grader: integrity check'
GUARDED = ("torch", "torch.nn", "torch.nn.functional", "torchvision", "numpy", "math", "builtins")


class IntegrityError(AssertionError):
    """The notebook replaced part of fpnlab, torch or Python the tests rely on."""


def _defined_in_notebook(value, roots) -> bool:
    """True when ``value`` (a function, class, property, partial, bound method or instance) was
    made by code outside the installed libraries: a notebook cell, exec() of a string."""
    import functools
    import types

    seen = 0
    while seen < 5:
        seen += 1
        if isinstance(value, property):
            return any(_defined_in_notebook(f, roots) for f in (value.fget, value.fset) if f)
        if isinstance(value, functools.partial):
            value = value.func
            continue
        if isinstance(value, types.MethodType):
            value = value.__func__
            continue
        break
    if isinstance(value, types.FunctionType):
        filename = value.__code__.co_filename
        return not (os.path.isabs(filename) and filename.startswith(roots))
    if isinstance(value, type):
        return value.__module__ == "__main__"
    if isinstance(value, types.ModuleType):
        return False
    return type(value).__module__ == "__main__"


def tampering() -> List[str]:
    """What the running notebook replaced in fpnlab, torch or builtins (empty when nothing)."""
    import types

    roots = tuple(sorted({os.path.realpath(p) + os.sep for p in _python_paths() + ["/usr/"]}
                         | {p + os.sep for p in _python_paths()}))
    found: List[str] = []
    names = [n for n in list(sys.modules) if n == "fpnlab" or n.startswith("fpnlab.")]
    for name in names + [g for g in GUARDED if g in sys.modules]:
        mod = sys.modules[name]
        if not isinstance(mod, types.ModuleType) or (
                name not in sys.builtin_module_names
                and not str(getattr(mod, "__file__", "") or "").startswith(roots)):
            found.append(f"sys.modules[{name!r}] (replaced by an object made in the notebook)")
            continue
        for attr, value in list(vars(mod).items()):
            if _defined_in_notebook(value, roots):
                found.append(f"{name}.{attr}")
    torch = sys.modules.get("torch")
    if torch is not None:
        for cls in (getattr(torch, "Tensor", None), getattr(torch.nn, "Module", None),
                    getattr(getattr(torch, "_C", None), "TensorBase", None)):
            if isinstance(cls, type):
                for attr, value in list(vars(cls).items()):
                    if _defined_in_notebook(value, roots):
                        found.append(f"{cls.__module__}.{cls.__name__}.{attr}")
    found += _fpnlab_changed(names)
    return sorted(set(found))


def _fpnlab_changed(names: List[str]) -> List[str]:
    """fpnlab functions whose code differs from the file on disk (``f.__code__ = ...``, or a
    name rebound to another fpnlab function)."""
    import importlib.util
    import types

    changed = []
    for name in names:
        mod = sys.modules.get(name)
        path = getattr(mod, "__file__", None)
        if not path or not path.endswith(".py") or name == __name__:
            continue
        spec = importlib.util.spec_from_file_location(f"_fpnlab_fresh_{name}", path)
        fresh = importlib.util.module_from_spec(spec)
        fresh.__package__ = getattr(mod, "__package__", None)
        try:
            spec.loader.exec_module(fresh)
        except Exception:  # noqa: BLE001 (a module that cannot load twice is left unchecked)
            continue
        for attr, want in vars(fresh).items():
            if not isinstance(want, types.FunctionType) or want.__module__ != fresh.__name__:
                continue
            got = getattr(mod, attr, None)
            if not isinstance(got, types.FunctionType) or got.__code__ != want.__code__:
                changed.append(f"{name}.{attr}")
    return changed


def _rebound_globals(user: dict) -> List[str]:
    """Names in the notebook's namespace that should be fpnlab's checks or torch but are not:
    ``check_close = lambda *a, **k: None`` after ``from fpnlab.checks import check_close``."""
    import types

    found = []
    checks = sys.modules.get("fpnlab.checks")
    if checks is not None:
        public = [n for n in vars(checks) if n.startswith("check_") or n in ("CheckError", "no_calls_to")]
        for name in public:
            if name in user and user[name] is not getattr(checks, name):
                found.append(f"{name} (not fpnlab.checks.{name})")
    for name, value in list(user.items()):
        real = sys.modules.get(getattr(value, "__name__", "") or "")
        if name in ("torch", "fpnlab") or isinstance(value, types.ModuleType):
            wanted = {"torch": "torch", "fpnlab": "fpnlab", "F": "torch.nn.functional",
                      "nn": "torch.nn"}.get(name)
            if wanted and wanted in sys.modules and value is not sys.modules[wanted]:
                found.append(f"{name} (not the module {wanted})")
            elif isinstance(value, types.ModuleType) and real is not None and real is not value:
                found.append(f"{name} (a copy of the module {value.__name__})")
    return found


def verify() -> None:
    """Raise :class:`IntegrityError` when the notebook monkeypatched what the tests use."""
    caller = sys._getframe(1).f_globals
    try:
        found = tampering() + _rebound_globals(caller)
    except Exception as e:  # noqa: BLE001 (patched builtins break the check itself)
        raise IntegrityError(f"integrity: the check of fpnlab, torch and Python could not run "
                             f"({type(e).__name__}: {e}): has the notebook replaced builtins? "
                             "(fpnlab grader)") from None
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise IntegrityError(
            f"integrity: the notebook replaced {shown}. Tests use fpnlab, torch and Python as "
            "installed; code that rebinds them cannot earn points (fpnlab grader).")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fpnlab.sandbox", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kernel", help="launch an ipykernel in the sandbox (kernelspec argv)")
    k.add_argument("-f", dest="connection_file", required=True)
    lim = sub.add_parser("limits", help="set rlimits, then exec a command (runs in the sandbox)")
    lim.add_argument("--as", dest="memory", type=int, required=True)
    lim.add_argument("--nproc", type=int, required=True)
    lim.add_argument("--fsize", type=int, required=True)
    lim.add_argument("--nofile", type=int, required=True)
    lim.add_argument("--cpu", type=int, required=True)
    lim.add_argument("--uid", type=int, default=None, help="switch to this uid (started as root)")
    lim.add_argument("command", nargs=argparse.REMAINDER)
    args, extra = p.parse_known_args(argv)
    if args.cmd == "limits":
        args.command += extra
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            p.error("limits: no command to run")
        set_limits(args.memory, args.nproc, args.fsize, args.nofile, args.cpu, args.uid)
        os.execv(command[0], command)
    limits = Limits.from_env()
    extra = [a for a in extra if a.startswith("--") and "=" in a] or ["--HistoryManager.hist_file=:memory:"]
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", args.connection_file, *extra]
    return launch(kernel, args.connection_file, limits, status_file(os.environ.get(ENV_PREFIX + "STATUS")))


def status_file(folder: Optional[str], cwd: Optional[str] = None) -> Optional[str]:
    """Where the launcher reports: one file per notebook, named after nbgrader's working folder
    ``autograded/<student>/<lesson>`` of the kernel."""
    if not folder:
        return None
    here = Path(cwd or os.getcwd())
    return os.path.join(folder, f"{here.parent.name}--{here.name}.json")


if __name__ == "__main__":
    sys.exit(main())
