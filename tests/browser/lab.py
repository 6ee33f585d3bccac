"""JupyterLab for the browser tests: the learner lab, on loopback, isolated from the user's settings.

``LabServer`` starts the lab ``fpnlab lessons`` opens (:func:`fpnlab.workspace.lab_command`: the
fpnlab kernel only, no nbgrader extensions, no news, START.ipynb first) from the running
interpreter (the venv's when the tests run as ``.venv/bin/python -m pytest``) on a prepared
workspace in a scratch folder (nothing the browser does can write into the repository), on a
free port with a random token. On top of what users get it only exposes the app to the page
(``window.jupyterapp``), gives the server its own config, data and runtime directories (the
machine's ``~/.jupyter`` cannot change the lab under test), and writes the test's own user
settings from ``overrides.json`` next to this file (no windowing, no autosave) into the
workspace's lab settings. The notebooks' kernel ``fpnlab`` must be registered in the venv
(``make setup`` does it with ``--sys-prefix``); :func:`ensure_kernel` registers it the same way
when it is missing.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional, Tuple

from fpnlab import workspace as learner

HERE = Path(__file__).resolve().parent
OVERRIDES = HERE / "overrides.json"      # the test's user settings: {plugin id: {key: value}}
KERNEL = "fpnlab"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_kernel(name: str = KERNEL) -> str:
    """The kernel spec ``name`` of this interpreter's prefix, registered (``--sys-prefix``) when
    missing. Returns the kernel's Python, which must be this interpreter's environment."""
    spec_dir = Path(sys.prefix) / "share" / "jupyter" / "kernels" / name
    if not (spec_dir / "kernel.json").exists():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name",
                        name, "--display-name", "Python 3 (fpnlab)"], check=True,
                       capture_output=True, text=True)
    argv = json.loads((spec_dir / "kernel.json").read_text())["argv"]
    return argv[0]


class LabServer:
    """``with LabServer(workdir) as lab: lab.url(path)``: the learner lab on the workspace
    ``workdir/workspace`` (prepared with :func:`fpnlab.workspace.prepare` unless given)."""

    def __init__(self, workdir: Path, workspace: Optional[Path] = None,
                 log_path: Optional[Path] = None, startup_timeout: float = 90.0):
        self.workdir = Path(workdir)
        self.workspace = Path(workspace) if workspace else self.workdir / "workspace"
        self.log_path = log_path or self.workdir / "jupyterlab.log"
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "") -> str:
        """A file's page in the lab, or (no path) the lab's front door: its default URL."""
        page = f"/lab/tree/{path}" if path else "/"
        return f"{self.base}{page}?token={self.token}"

    def command(self) -> Tuple[List[str], dict]:
        """The learner lab's argv and environment, with the test's isolation added."""
        argv, env = learner.lab_command(
            self.workspace, port=self.port, browser=False,
            allow_root=hasattr(os, "getuid") and os.getuid() == 0,
            extra=("--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                   "--LabApp.expose_app_in_browser=True"))
        for var in ("JUPYTER_PATH", "JUPYTER_PREFER_ENV_PATH", "JPY_PARENT_PID"):
            env.pop(var, None)
        dirs = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                "JUPYTER_RUNTIME_DIR": "runtime", "IPYTHONDIR": "ipython"}
        for var, sub in dirs.items():
            path = self.workdir / sub
            path.mkdir(parents=True, exist_ok=True)
            env[var] = str(path)
        env["FPNLAB_DEVICE"] = env.get("FPNLAB_DEVICE", "auto")
        env["PYTHONUNBUFFERED"] = "1"
        return argv, env

    def _user_settings(self) -> None:
        """The test's settings as the learner's own (``plugin.jupyterlab-settings`` files)."""
        folder = self.workspace / learner.LAB_STATE / "user-settings"
        for plugin, values in json.loads(OVERRIDES.read_text()).items():
            package, _, name = plugin.partition(":")
            path = folder / package / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=1))

    def start(self) -> "LabServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.workspace / learner.START).exists():
            learner.prepare(self.workspace)
        self._user_settings()
        argv, env = self.command()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, cwd=self.workspace, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        status = f"{self.base}/api/status?token={self.token}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode} while starting:"
                                   f"\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(status, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"JupyterLab did not answer on {self.base} within "
                           f"{self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            self._log.flush()
            return Path(self.log_path).read_text()[-n:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()            # the server shuts its kernels down on SIGTERM
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)  # its own session: the server and its kernels only
            self.proc.wait(timeout=5)
        self._log.close()

    def __enter__(self) -> "LabServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
