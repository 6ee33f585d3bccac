"""A Jupyter kernel wrapped in bubblewrap, for grading code nobody has reviewed.

``fpnlab grade`` writes a kernelspec whose ``argv`` runs ``python -m autograder.sandbox kernel -f
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
3. inside, ``python -m autograder.sandbox limits ...`` sets the rlimits (memory, processes,
   file size, CPU time, open files, no core files) and execs the kernel, so the process limit
   counts only the sandbox's own processes;
4. kills the whole sandbox after a wall-clock limit and writes what happened (``ok``, ``timeout``,
   ``killed`` with the signal) to ``FPNLAB_SANDBOX_STATUS``/``<student>--<lesson>.json`` (nbgrader
   starts each kernel in ``autograded/<student>/<lesson>``).

With ``Limits.warm`` (what ``fpnlab grade`` uses) steps 1 to 3 run once per student: the sandbox
holds a Python that has imported torch, which forks a kernel per notebook
(:mod:`autograder.warmkernel`) and kills every other process of the sandbox when a kernel ends; the
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
    def create(cls, memory: int, nproc: int, tag: str = "") -> Tuple[Optional["Cgroup"], str]:
        """A new cgroup limited to ``memory`` bytes and ``nproc`` tasks (named ``fpnlab-<tag>-...``:
        the grader passes the kernel's uid), and the line the grading log shows; (None, why)
        where this host has no cgroup this process can write."""
        if os.geteuid() != 0:
            return None, "limits: rlimits only (no writable cgroup)"
        name = f"fpnlab-{tag + '-' if tag else ''}{os.getpid()}-{os.urandom(4).hex()}"
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
    """Folders the kernel needs to read: the interpreter, the venv, the fpnlab package (what the
    notebooks import) and this package (the sandbox's own steps and the warm kernel)."""
    import fpnlab

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)),
             str(Path(fpnlab.__file__).resolve().parent), str(Path(__file__).resolve().parent)}
    # Installed packages may also live in site folders outside the venv (a .pth, a system site);
    # only folders named like one: the import path's other entries (the working directory, a
    # PYTHONPATH) may be the course repository, whose solutions the kernel must never read.
    paths |= {p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")
              and os.path.isdir(p)}
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
    argv = [sys.executable, "-m", "autograder.sandbox", "limits", "--as", str(limits.memory),
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


PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class UnsafePath(Exception):
    """The connection file or its folder is not what the grader made (a link, another owner)."""


def read_connection_file(path: str) -> dict:
    """The connection file jupyter_client wrote, read without following a link: its folder must
    be a private folder of this user, the file a regular file of this user (else
    :class:`UnsafePath`). Nothing else is ever done to it: no chown, no chmod."""
    folder = os.path.dirname(path)
    st = os.lstat(folder)
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise UnsafePath(f"the runtime folder {folder} is not a private folder of this user")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if os.path.islink(path):
            raise UnsafePath(f"the connection file {path} is a symbolic link") from None
        raise UnsafePath(f"the connection file {path} cannot be read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > 1 << 16:
            raise UnsafePath(f"the connection file {path} is not a small file of this user")
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        info = json.loads(data)
    except ValueError:
        raise UnsafePath(f"the connection file {path} is not JSON") from None
    if not isinstance(info, dict):
        raise UnsafePath(f"the connection file {path} is not a JSON object")
    return info


def bind_sockets(info: dict, folder: str) -> Dict[str, socket.socket]:
    """The kernel's five ``ipc`` sockets, bound and listening here, by ZMQ address. They live in
    the grader's private runtime folder, made by this launcher: the kernel gets descriptors only
    (ZMQ ``USE_FD``), and nbgrader connects to sockets nothing in the sandbox can replace."""
    if info.get("transport") != "ipc":
        return {}
    ip = str(info.get("ip", ""))
    if os.path.dirname(os.path.abspath(ip)) != folder:
        raise UnsafePath(f"the kernel's ipc sockets {ip}-* would be outside {folder}")
    made: Dict[str, socket.socket] = {}
    try:
        for key in PORTS:
            path = f"{ip}-{int(info[key])}"
            if os.path.lexists(path):            # left by an earlier kernel of this worker
                os.unlink(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            made["ipc://" + path] = sock
            sock.bind(path)
            sock.listen(64)
    except (OSError, KeyError, ValueError) as e:
        close_sockets(made)
        raise UnsafePath(f"cannot make the kernel's ipc sockets: {e}") from None
    return made


def close_sockets(sockets: Dict[str, socket.socket], unlink: bool = True) -> None:
    for address, sock in sockets.items():
        sock.close()
        path = address[len("ipc://"):]
        try:
            if unlink and stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass


def _enter_argv(cgroup: Optional[Cgroup], as_root: bool) -> List[str]:
    argv = [sys.executable, "-m", "autograder.sandbox", "enter"]
    for procs in (cgroup.procs_files() if cgroup else []):
        argv += ["--cgroup", procs]
    return argv + (["--userns"] if as_root else []) + ["--"]


def _kernel_request(kernel_argv: List[str], info: dict) -> dict:
    """What the kernel needs (the connection info and ipykernel's other arguments)."""
    args = kernel_argv[kernel_argv.index("-f") + 2:] if "-f" in kernel_argv else []
    return {"connection": info, "args": args}


def launch(kernel_argv: List[str], connection_file: str, limits: Limits,
           status_path: Optional[str] = None) -> int:
    """Run ``kernel_argv`` under the limits (and bwrap unless disabled); return its exit code."""
    connection_file = os.path.abspath(connection_file)
    connection_dir = os.path.dirname(connection_file)
    # Without the sandbox the kernel keeps the grader's uid (as root: no process limit).
    uid = (limits.uid or DEFAULT_UID) if os.geteuid() == 0 and limits.sandbox else None
    runtime = os.environ.get(ENV_PREFIX + "RUNTIME")
    if limits.sandbox and (not runtime or os.path.realpath(runtime) != os.path.realpath(connection_dir)):
        # Only the private runtime folder the grader made for this purpose will do, never /tmp.
        print(f"fpnlab sandbox: connection file {connection_file} is not in the runtime folder "
              f"{runtime} ({ENV_PREFIX}RUNTIME)", file=sys.stderr)
        _write_status(status_path, status="error", detail="connection file outside the runtime folder")
        return 2
    if not limits.sandbox:
        return _run(_limits_argv(limits, None) + kernel_argv, os.getcwd(), limits, status_path,
                    env={k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)
                         and k not in ("NBGRADER_EXECUTION", "JPY_PARENT_PID")})
    try:
        info = read_connection_file(connection_file)
        sockets = bind_sockets(info, connection_dir)
    except (UnsafePath, OSError) as e:
        print(f"fpnlab sandbox: {e}", file=sys.stderr)
        _write_status(status_path, status="error", detail=str(e)[:300])
        return 2
    try:
        state_folder = os.environ.get(ENV_PREFIX + "STATUS")
        if limits.warm and state_folder:
            return _launch_warm(kernel_argv, connection_file, limits, uid, status_path,
                                state_folder, info, sockets)
        request = dict(_kernel_request(kernel_argv, info),
                       sockets={a: s.fileno() for a, s in sockets.items()})
        read_end, write_end = os.pipe()
        with os.fdopen(write_end, "w") as f:          # small: the pipe's buffer holds it
            json.dump(request, f)
        if "-f" in kernel_argv:                   # ipykernel: autograder.warmkernel runs it
            inner = [sys.executable, "-m", "autograder.warmkernel", "run", str(read_end)]
        else:                                     # a plain command (tests)
            inner = list(kernel_argv)
        cgroup, line = Cgroup.create(*cgroup_limits(limits), tag=str(uid or os.getuid()))
        print(f"fpnlab sandbox: {line}", file=sys.stderr)
        bwrap = shutil.which("bwrap") or BWRAP
        cmd = _enter_argv(cgroup, uid is not None) + bwrap_command(
            bwrap, limits, _limits_argv(limits, uid) + inner, as_root=uid is not None)
        try:
            return _run(cmd, "/", limits, status_path, env=None,
                        pass_fds=[read_end] + [s.fileno() for s in sockets.values()],
                        after_start=lambda: (os.close(read_end), close_sockets(sockets, unlink=False)),
                        cleanup=cgroup.remove if cgroup else None)
        finally:
            if cgroup:
                cgroup.remove()
    finally:
        close_sockets(sockets)


def _run(cmd: List[str], cwd: str, limits: Limits, status_path: Optional[str], env,
         pass_fds=(), after_start=None, cleanup=None) -> int:
    """Run the sandbox (a cold kernel) and report how it ended."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, preexec_fn=_die_with_parent,
                            start_new_session=True, pass_fds=list(pass_fds))
    if after_start:
        after_start()

    def stop(signum, _frame):
        _kill(proc)
        if cleanup:
            cleanup()
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
                 status_path: Optional[str], state_folder: str, info: dict,
                 sockets: Dict[str, socket.socket]) -> int:
    """:func:`launch` through the student's warm sandbox (:mod:`autograder.warmkernel`)."""
    from . import warmkernel

    runtime = os.path.dirname(connection_file)
    student = Path.cwd().parent.name          # nbgrader's autograded/<student>/<lesson>
    bwrap = shutil.which("bwrap") or BWRAP
    as_root = uid is not None

    def command_for(listen_fd: int):
        """The sandbox's argv (its zygote serves on ``listen_fd``), its cgroup, the log line."""
        cgroup, line = Cgroup.create(*cgroup_limits(limits), tag=str(uid or os.getuid()))
        inner = _limits_argv(limits, uid) + [sys.executable, "-m", "autograder.warmkernel", "serve",
                                             "--fd", str(listen_fd)]
        return _enter_argv(cgroup, as_root) + bwrap_command(bwrap, limits, inner, as_root), cgroup, line

    logs = Path(state_folder).parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = f"warm-{student}.log"
    start = time.monotonic()
    try:
        sock = warmkernel.connect(student, state_folder, runtime, command_for, str(logs / log))
    except OSError as e:
        print(f"fpnlab sandbox: {e}", file=sys.stderr)
        _write_status(status_path, status="error", detail=str(e), log=log)
        return 2

    def stop(signum, _frame):
        warmkernel.stop(state_folder)             # the whole sandbox goes
        close_sockets(sockets)
        _write_status(status_path, status="stopped", signal=signum,
                      seconds=round(time.monotonic() - start, 2))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # interrupts travel as kernel messages
    request = dict(_kernel_request(kernel_argv, info), sockets=list(sockets))
    try:
        socket.send_fds(sock, [(json.dumps(request) + "\n").encode()],
                        [s.fileno() for s in sockets.values()])
    except OSError:
        pass                                       # the zygote died: read below says so
    close_sockets(sockets, unlink=False)           # the kernel holds them now
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
    return {"argv": [python, "-m", "autograder.sandbox", "kernel", "-f", "{connection_file}"],
            "display_name": "Python 3 (fpnlab, sandboxed)", "language": "python",
            "interrupt_mode": "message", "metadata": {"debugger": False}}


def _main_enter(argv: List[str]) -> int:
    """``enter [--cgroup PROCS_FILE]... [--userns] -- COMMAND...`` (see :func:`enter`)."""
    cgroups: List[str] = []
    userns = False
    while argv and argv[0] != "--":
        if argv[0] == "--cgroup" and len(argv) > 1:
            cgroups.append(argv[1])
            argv = argv[2:]
        elif argv[0] == "--userns":
            userns, argv = True, argv[1:]
        else:
            break
    command = argv[1:] if argv[:1] == ["--"] else []
    if not command:
        print("usage: python -m autograder.sandbox enter [--cgroup FILE]... [--userns] -- COMMAND...",
              file=sys.stderr)
        return 2
    enter(cgroups, userns, command)
    return 0                                           # not reached: enter() execs


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["enter"]:
        return _main_enter(argv[1:])
    p = argparse.ArgumentParser(prog="python -m autograder.sandbox", description=__doc__.splitlines()[0])
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
