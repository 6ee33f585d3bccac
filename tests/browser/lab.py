"""JupyterLab for the browser test: the venv's, on loopback, isolated from the user's settings.

``LabServer`` starts ``python -m jupyterlab`` from the running interpreter (the venv's when the
tests run as ``.venv/bin/python -m pytest``) on a free port with a random token, in a scratch
root directory that holds a *copy* of the notebook (nothing the browser does can write outputs
into the repository), with its own config, data, runtime, settings and workspace directories and
the ``overrides.json`` next to this file (no news toast, no check for updates, no windowing, no
autosave). The notebooks' kernel ``fpnlab`` must be registered in the venv (``make setup`` does
it with ``--sys-prefix``); :func:`ensure_kernel` registers it the same way when it is missing.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
OVERRIDES = HERE / "overrides.json"
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
    """``with LabServer(workdir, notebooks) as lab: lab.url(path)``."""

    def __init__(self, workdir: Path, notebooks: List[Path], log_path: Optional[Path] = None,
                 startup_timeout: float = 90.0):
        self.workdir = Path(workdir)
        self.notebooks = [Path(n) for n in notebooks]
        self.log_path = log_path or self.workdir / "jupyterlab.log"
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/lab/tree/{path}?token={self.token}"

    def _env(self) -> dict:
        env = dict(os.environ)
        for var in ("JUPYTER_PATH", "JUPYTER_PREFER_ENV_PATH", "JPY_PARENT_PID"):
            env.pop(var, None)
        dirs = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                "JUPYTER_RUNTIME_DIR": "runtime", "JUPYTERLAB_SETTINGS_DIR": "user-settings",
                "JUPYTERLAB_WORKSPACES_DIR": "workspaces", "IPYTHONDIR": "ipython"}
        for var, sub in dirs.items():
            path = self.workdir / sub
            path.mkdir(parents=True, exist_ok=True)
            env[var] = str(path)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env["FPNLAB_DEVICE"] = env.get("FPNLAB_DEVICE", "auto")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> "LabServer":
        root = self.workdir / "root"
        root.mkdir(parents=True, exist_ok=True)
        for nb in self.notebooks:
            shutil.copy(nb, root / nb.name)
        app_settings = self.workdir / "app-settings"
        app_settings.mkdir(parents=True, exist_ok=True)
        shutil.copy(OVERRIDES, app_settings / "overrides.json")
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
               f"--port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.app_settings_dir={app_settings}", "--LabApp.expose_app_in_browser=True",
               "--MappingKernelManager.default_kernel_name=" + KERNEL]
        if hasattr(os, "getuid") and os.getuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=root, env=self._env(), stdout=self._log,
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
