"""Warm kernels: one sandbox per student whose Python imports torch once, then forks a kernel for
each of that student's notebooks.

Every graded notebook would otherwise pay the floor (start Python, import torch and torchvision:
about 3 s on a laptop CPU) before its first cell; one student's whole course paid it seven times.
Here the launcher (:func:`autograder.sandbox.launch`, outside the sandbox) starts, for a student,
``bwrap ... python -m autograder.sandbox limits ... -- python -m autograder.warmkernel serve SOCKET``:
the same sandbox, limits and unprivileged uid as a cold kernel. That process (the *zygote*)
imports torch, torchvision, ipykernel and fpnlab, then listens on a unix socket the launcher
bound in the grader's private runtime folder and handed over as a descriptor (the sandbox never
sees that folder). For each notebook the launcher sends ``{"connection", "args", "sockets"}``
with the descriptors of the kernel's five ZMQ sockets (bound by the launcher too); the zygote
forks, the child becomes an ipykernel in its own session on those sockets, and the zygote
answers ``{"pid"}`` then, when the kernel ends, ``{"exit": code}``.

What students share and what they do not:

* A zygote serves one student only. The launcher kills it (the whole sandbox) before another
  student's notebook starts, so nothing of one student (files in ``/tmp``, processes) ever meets
  another's code.
* A student's notebooks share that student's sandbox: a file one notebook leaves in ``/tmp`` is
  there for the next. That gives a student no power over their grade that their own code inside
  the graded kernel does not already have.
* When a kernel ends, the zygote kills every other process of the sandbox (``kill(-1)``: all
  processes of its uid but itself and the sandbox's init, whatever session or process group
  they moved to) and waits until they are gone before it answers ``{"exit"}``; so nothing a
  notebook started meets the next notebook. The zygote is not dumpable: a kernel of the same uid
  cannot read or write its memory.

The zygote leaves by itself after ``IDLE`` seconds without a request; the grader kills it after
each nbgrader run (:func:`stop`). Nothing here runs with the grader's rights except the client.
"""
from __future__ import annotations

import json
import os
import select
import tempfile
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

SOCKET_NAME = "warm.sock"
STATE_NAME = "warm.json"     # in the grader's status folder: the sandbox cannot reach it
IDLE = 120.0                 # seconds a zygote waits for its next notebook
PRELOAD = ("torch", "torchvision", "numpy", "ipykernel.kernelapp", "fpnlab", "fpnlab.checks",
           "fpnlab.device", "fpnlab.oracle", "fpnlab.reference", "fpnlab.shapes", "fpnlab.tracing",
           "autograder.sandbox")


# ----------------------------------------------------------------------------- inside the sandbox

def preload() -> None:
    """Import what every kernel needs. It leaves the process single-threaded (a fork copies only
    the calling thread) and CUDA uninitialised (a forked child could not use it)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


def _set_dumpable(value: int) -> None:
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, value, 0, 0, 0)     # PR_SET_DUMPABLE
    except (OSError, AttributeError):  # pragma: no cover (not glibc)
        pass


def _read_request(conn: socket.socket) -> Tuple[dict, List[int]]:
    """One request line and the descriptors that came with it."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 16)
    try:
        while not data.endswith(b"\n"):
            more = conn.recv(1 << 16)
            if not more or len(data) > 1 << 20:
                raise ValueError("incomplete request")
            data += more
        request = json.loads(data)
        if not isinstance(request, dict):
            raise ValueError("not a request")
    except (ValueError, OSError):
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def serve(listen_fd: int, idle: float = IDLE) -> int:
    """The zygote: :func:`preload`, serve on the listening socket ``listen_fd``, fork one kernel
    per request, one at a time, and clear the sandbox after each."""
    _set_dumpable(0)            # a kernel (same uid) may not ptrace it or write /proc/<pid>/mem
    preload()
    if sys.modules["torch"].cuda.is_initialized():
        # A process that has initialised CUDA cannot hand it to a forked child: the kernels
        # would lose the GPU. (Nothing in PRELOAD does; this says so if that ever changes.)
        print("fpnlab warm kernel: CUDA was initialised while preloading; use --cold-kernels",
              file=sys.stderr)
        return 3
    server = socket.socket(fileno=listen_fd)
    server.set_inheritable(False)
    last = time.monotonic()
    child: Optional[Tuple[int, socket.socket]] = None
    while True:
        ready, _, _ = select.select([server] + ([child[1]] if child else []), [], [], 0.05)
        if child:
            pid, conn = child
            gone, status = os.waitpid(pid, os.WNOHANG)
            if gone:
                _end(pid, conn, os.waitstatus_to_exitcode(status))
                child, last = None, time.monotonic()
            elif conn in ready and not conn.recv(1):
                # The launcher is gone (killed): so goes its kernel.
                _end(pid, conn, _reap(pid))
                child, last = None, time.monotonic()
        if server in ready:
            conn, _ = server.accept()
            if child:                                 # a kernel the grader gave up on
                _end(child[0], child[1], _reap(child[0]))
                child = None
            _send(conn, {"ready": True})
            try:
                conn.settimeout(10)                   # a request is one line, sent at once
                request, fds = _read_request(conn)
                conn.settimeout(None)
            except (ValueError, OSError):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:                              # the kernel
                server.close()
                conn.close()
                _become_kernel(request, dict(zip(request.get("sockets", []), fds)))
            for fd in fds:
                os.close(fd)
            _send(conn, {"pid": pid})
            child = (pid, conn)
        elif not child and time.monotonic() - last > idle:
            server.close()
            return 0


def run(request_fd: int) -> None:
    """A cold kernel: the request (as :func:`serve` gets it) comes on ``request_fd``, with the
    descriptor numbers of its sockets as this process inherited them."""
    with os.fdopen(request_fd) as f:
        request = json.load(f)
    sockets = request.get("sockets") or {}
    _become_kernel(request, {str(a): int(fd) for a, fd in sockets.items()}, fork=False)


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall((json.dumps(message) + "\n").encode())
    except OSError:
        pass


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)                # the kernel's session: it and what it left
    except (ProcessLookupError, PermissionError):
        pass


def _others() -> List[int]:
    """Processes of the sandbox other than this one and its init, zombies left out."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                found.append(int(name))
    return found


def _in_sandbox() -> bool:
    """True in bwrap's PID namespace (its init is pid 1 there)."""
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0]) == b"bwrap"
    except OSError:
        return False


def clear_sandbox(wait: float = 5.0) -> List[int]:
    """Kill every process this zygote may signal, but itself and the sandbox's init: what a
    kernel started, even after ``setsid()`` or a double fork. Returns those still there after
    ``wait`` seconds (none, unless they cannot be killed)."""
    if not _in_sandbox():
        return []                                     # kill(-1) out there would hit the grader's user
    deadline = time.monotonic() + wait
    while True:
        try:
            os.kill(-1, signal.SIGKILL)               # not ourselves, not pid 1 of the namespace
        except (ProcessLookupError, PermissionError):
            pass
        while True:                                   # reap our own children
            try:
                gone, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not gone:
                break
        left = _others()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def _end(pid: int, conn: socket.socket, code: int) -> None:
    _kill_session(pid)
    left = clear_sandbox()
    if left:
        print(f"fpnlab warm kernel: processes {left} outlived the kernel", file=sys.stderr)
    _send(conn, {"exit": code, **({"left": left} if left else {})})
    conn.close()


def _reap(pid: int) -> int:
    """Kill a kernel still running and return its exit code."""
    _kill_session(pid)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _use_fds(sockets: Dict[str, int]) -> None:
    """ipykernel binds ``ipc://<runtime>/k-<port>``: bind those ZMQ sockets to the descriptors
    the launcher made instead (ZMQ_USE_FD); nothing is created on any file system."""
    import zmq
    from zmq.sugar.socket import Socket

    original = Socket.bind

    def bind(self, addr, *args, **kwargs):
        fd = sockets.get(addr if isinstance(addr, str) else addr.decode())
        if fd is not None:
            self.setsockopt(zmq.USE_FD, fd)
        return original(self, addr, *args, **kwargs)

    Socket.bind = bind


def _become_kernel(request: dict, sockets: Dict[str, int], fork: bool = True) -> None:
    """In the forked child (or a cold kernel): a session of its own, its connection file in the
    sandbox's /tmp, the launcher's sockets, then ipykernel as ``ipykernel_launcher`` runs it."""
    code = 1
    try:
        if fork:
            os.setsid()
            _set_dumpable(1)
        os.chdir(os.environ.get("HOME", "/"))
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in sockets.values():
            os.set_inheritable(fd, False)             # not into the learner's subprocesses
        fd, path = tempfile.mkstemp(prefix=".fpnlab-kernel-", suffix=".json", dir="/tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(request.get("connection", {}), f)
        _use_fds(sockets)
        sys.argv = ["ipykernel_launcher", "-f", path, *request.get("args", [])]
        from ipykernel import kernelapp

        kernelapp.launch_new_instance()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 (report, then leave: never return into the zygote)
        import traceback
        traceback.print_exc()
    finally:
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


# ----------------------------------------------------------------------------- the launcher's side

def _read_state(folder: str) -> dict:
    try:
        return json.loads(Path(folder, STATE_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"autograder.warmkernel" in f.read()
    except OSError:
        return False


def stop(state_folder: Optional[str], wait: float = 5.0) -> None:
    """Kill the zygote this status folder records (the whole sandbox, and everything in its
    cgroup), if it still runs, and wait (up to ``wait`` seconds) until its keeper is gone, so
    that nothing of it outlives this call; remove its cgroup."""
    if not state_folder:
        return
    state = _read_state(state_folder)
    pid = state.get("pid")
    if isinstance(pid, int) and pid > 1 and _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)            # the keeper and bwrap: the sandbox dies
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
    if state.get("cgroup"):
        from .sandbox import Cgroup

        cgroup = Cgroup.from_list(state["cgroup"])
        if cgroup is not None:
            cgroup.remove(wait)
    Path(state_folder, STATE_NAME).unlink(missing_ok=True)


def _listen(path: str) -> socket.socket:
    """The zygote's socket, bound by the launcher in the grader's private runtime folder (the
    sandbox gets the descriptor; nothing in it can replace the file)."""
    if os.path.lexists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(4)
    except OSError:
        server.close()
        raise
    return server


def connect(student: str, state_folder: str, runtime: str,
            command_for: Callable[[int], Tuple[List[str], object, str]],
            log_path: Optional[str], startup: float = 120.0) -> socket.socket:
    """A connection to ``student``'s zygote; when there is none, another student's zygote is
    stopped and one is started with ``command_for(fd)``: the sandbox's argv whose zygote serves on
    descriptor ``fd``, its cgroup (or None) and the line saying which limits apply, written to the
    sandbox's log. Raises ``OSError`` when it cannot start."""
    path = os.path.join(runtime, SOCKET_NAME)
    state = _read_state(state_folder)
    proc: Optional[subprocess.Popen] = None
    if state.get("student") != student or not _alive(state.get("pid", -1)):
        stop(state_folder)
        server = _listen(path)
        try:
            command, cgroup, line = command_for(server.fileno())
            log = open(log_path, "ab") if log_path else subprocess.DEVNULL
            if log_path:
                log.write(f"fpnlab sandbox: {line}\n".encode())
                log.flush()
            # bwrap kills the sandbox when its parent dies (--die-with-parent), and this launcher
            # ends with the notebook: a small keeper process of its own session is bwrap's parent.
            try:
                proc = subprocess.Popen([sys.executable, "-m", "autograder.warmkernel", "keep",
                                         str(server.fileno()), "--", *command],
                                        cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, pass_fds=[server.fileno()])
            except OSError:
                if cgroup is not None:
                    cgroup.remove()
                raise
            finally:
                if log_path:
                    log.close()
        finally:
            server.close()                      # the zygote has it now
        state = {"student": student, "pid": proc.pid}
        if cgroup is not None:
            state["cgroup"] = cgroup.to_list()
        tmp = Path(state_folder, STATE_NAME + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, Path(state_folder, STATE_NAME))
    deadline = time.monotonic() + startup
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)                      # queued until the zygote accepts
    except OSError:
        sock.close()
        sock = None
    while True:
        if sock is not None:
            ready, _, _ = select.select([sock], [], [], 0.05)
            if ready:
                if _read_line(sock).startswith(b'{"ready"'):
                    return sock
                sock.close()                    # the zygote died before it served us
                sock = None
        # (a process just started may not have exec'd bwrap yet: ask Popen, not /proc)
        if sock is None or ((proc.poll() is not None) if proc is not None else not _alive(state["pid"])):
            if sock is not None:
                sock.close()
            stop(state_folder)
            raise OSError(f"the warm sandbox of {student} ended while starting: "
                          f"{_last_line(log_path)}")
        if time.monotonic() > deadline:
            sock.close()
            stop(state_folder)
            raise OSError(f"the warm sandbox of {student} did not start in {startup:.0f} s")


def _read_line(sock: socket.socket) -> bytes:
    """One line, read a byte at a time (what follows stays in the socket for makefile())."""
    line = b""
    while not line.endswith(b"\n") and len(line) < 4096:
        try:
            byte = sock.recv(1)
        except OSError:
            return b""
        if not byte:
            return b""
        line += byte
    return line


def keep(listen_fd: int, command: list) -> int:
    """The keeper: run ``command`` (bwrap, which dies with its parent) with the zygote's listening
    socket ``listen_fd``, and wait for it; killing the keeper kills the sandbox."""
    proc = subprocess.Popen(command, pass_fds=[listen_fd])
    os.close(listen_fd)
    return proc.wait()


def _last_line(path: Optional[str]) -> str:
    """The last non-empty line of a log (the error, when Python died), or ''."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines()]
    except (OSError, TypeError):
        return ""
    return next((ln for ln in reversed(lines) if ln), "")[:300]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[:2] == ["serve", "--fd"]:
        return serve(int(argv[2]))
    if len(argv) == 2 and argv[0] == "run":
        run(int(argv[1]))
        return 1                                      # pragma: no cover (run never returns)
    if len(argv) > 3 and argv[0] == "keep" and argv[2] == "--":
        return keep(int(argv[1]), argv[3:])
    print("usage: python -m autograder.warmkernel serve --fd FD | run FD | keep FD -- COMMAND... "
          "(started by autograder.sandbox)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
