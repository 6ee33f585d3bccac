"""Warm kernels: one sandbox per student whose Python imports torch once, then forks a kernel for
each of that student's notebooks.

Every graded notebook would otherwise pay the floor (start Python, import torch and torchvision:
about 3 s on a laptop CPU) before its first cell; one student's whole course paid it seven times.
Here the launcher (:func:`fpnlab.sandbox.launch`, outside the sandbox) starts, for a student,
``bwrap ... python -m fpnlab.sandbox limits ... -- python -m fpnlab.warmkernel serve SOCKET``:
the same sandbox, limits and unprivileged uid as a cold kernel. That process (the *zygote*)
imports torch, torchvision, ipykernel and fpnlab, then listens on a unix socket in the runtime
folder. For each notebook the launcher sends ``{"connection_file", "args"}``; the zygote forks, the
child becomes an ipykernel in its own session, and the zygote answers ``{"pid"}`` then, when the
kernel ends, ``{"exit": code}``.

What students share and what they do not:

* A zygote serves one student only. The launcher kills it (the whole sandbox) before another
  student's notebook starts, so nothing of one student (files in ``/tmp``, processes) ever meets
  another's code.
* A student's notebooks share that student's sandbox: a file one notebook leaves in ``/tmp`` is
  there for the next. That gives a student no power over their grade that their own code inside
  the graded kernel does not already have.
* When a kernel ends, the zygote kills what is left of its session before the next notebook.

The zygote leaves by itself after ``IDLE`` seconds without a request; the grader kills it after
each nbgrader run (:func:`stop`). Nothing here runs with the grader's rights except the client.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

SOCKET_NAME = "warm.sock"
STATE_NAME = "warm.json"     # in the grader's status folder: the sandbox cannot reach it
IDLE = 120.0                 # seconds a zygote waits for its next notebook
PRELOAD = ("torch", "torchvision", "numpy", "ipykernel.kernelapp", "fpnlab", "fpnlab.checks",
           "fpnlab.device", "fpnlab.oracle", "fpnlab.reference", "fpnlab.shapes", "fpnlab.tracing",
           "fpnlab.sandbox")


# ----------------------------------------------------------------------------- inside the sandbox

def preload() -> None:
    """Import what every kernel needs. It leaves the process single-threaded (a fork copies only
    the calling thread) and CUDA uninitialised (a forked child could not use it)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


def serve(path: str, idle: float = IDLE) -> int:
    """The zygote: :func:`preload`, listen on ``path``, fork one kernel per request, one at a time."""
    preload()
    if sys.modules["torch"].cuda.is_initialized():
        # A process that has initialised CUDA cannot hand it to a forked child: the kernels
        # would lose the GPU. (Nothing in PRELOAD does; this says so if that ever changes.)
        print("fpnlab warm kernel: CUDA was initialised while preloading; use --cold-kernels",
              file=sys.stderr)
        return 3
    if os.path.lexists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
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
            try:
                conn.settimeout(10)                   # a request is one line, sent at once
                request = json.loads(conn.makefile("r").readline())
                conn.settimeout(None)
            except (ValueError, OSError):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:                              # the kernel
                server.close()
                conn.close()
                _become_kernel(request)
            _send(conn, {"pid": pid})
            child = (pid, conn)
        elif not child and time.monotonic() - last > idle:
            server.close()
            try:
                os.unlink(path)
            except OSError:                           # the grader removed the folder
                pass
            return 0


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


def _end(pid: int, conn: socket.socket, code: int) -> None:
    _kill_session(pid)
    _send(conn, {"exit": code})
    conn.close()


def _reap(pid: int) -> int:
    """Kill a kernel still running and return its exit code."""
    _kill_session(pid)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _become_kernel(request: dict) -> None:
    """In the forked child: a session of its own, then ipykernel as ``ipykernel_launcher`` runs it."""
    code = 1
    try:
        os.setsid()
        os.chdir(os.environ.get("HOME", "/"))
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["ipykernel_launcher", "-f", request["connection_file"], *request.get("args", [])]
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
            return b"fpnlab.warmkernel" in f.read()
    except OSError:
        return False


def stop(state_folder: Optional[str], wait: float = 5.0) -> None:
    """Kill the zygote this status folder records (the whole sandbox), if it still runs, and wait
    (up to ``wait`` seconds) until its keeper is gone, so that nothing of it outlives this call."""
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
    Path(state_folder, STATE_NAME).unlink(missing_ok=True)


def connect(student: str, state_folder: str, runtime: str, command: list,
            log_path: Optional[str], startup: float = 120.0) -> socket.socket:
    """A connection to ``student``'s zygote, started with ``command`` (the bwrap argv) when there
    is none; another student's zygote is stopped first. Raises ``OSError`` when it cannot start."""
    path = os.path.join(runtime, SOCKET_NAME)
    state = _read_state(state_folder)
    proc: Optional[subprocess.Popen] = None
    if state.get("student") != student or not _alive(state.get("pid", -1)):
        stop(state_folder)
        if os.path.lexists(path):
            os.unlink(path)
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        # bwrap kills the sandbox when its parent dies (--die-with-parent), and this launcher
        # ends with the notebook: a small keeper process of its own session is bwrap's parent.
        proc = subprocess.Popen([sys.executable, "-m", "fpnlab.warmkernel", "keep", "--", *command],
                                cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        if log_path:
            log.close()
        state = {"student": student, "pid": proc.pid}
        tmp = Path(state_folder, STATE_NAME + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, Path(state_folder, STATE_NAME))
    deadline = time.monotonic() + startup
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            # (a process just started may not have exec'd bwrap yet: ask Popen, not /proc)
            if (proc.poll() is not None) if proc is not None else not _alive(state["pid"]):
                stop(state_folder)
                raise OSError(f"the warm sandbox of {student} ended while starting: "
                              f"{_last_line(log_path)}") from None
            if time.monotonic() > deadline:
                stop(state_folder)
                raise OSError(f"the warm sandbox of {student} did not start in {startup:.0f} s")
            time.sleep(0.02)


def keep(command: list) -> int:
    """The keeper: run ``command`` (bwrap, which dies with its parent) and wait for it; killing
    the keeper kills the sandbox."""
    proc = subprocess.Popen(command)
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
    if len(argv) == 2 and argv[0] == "serve":
        return serve(argv[1])
    if len(argv) > 2 and argv[:2] == ["keep", "--"]:
        return keep(argv[2:])
    print("usage: python -m fpnlab.warmkernel serve SOCKET | keep -- COMMAND... "
          "(started by fpnlab.sandbox)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
