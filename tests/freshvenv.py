"""A wheel built from the checkout, and a fresh venv that sees the course's dependencies but not
the checkout's fpnlab, for the tests that install the package as a stranger would.

The fresh venv sees this venv's site-packages through a ``.pth`` line: a plain path line does not
run that folder's own ``.pth`` files, so the checkout's editable fpnlab (installed through one)
stays invisible, and pip finds every declared dependency satisfied without downloading torch
again."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}: {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def build_wheel(out: Path) -> Path:
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--disable-pip-version-check", "-w", str(out), str(ROOT)], cwd=out)
    (path,) = out.glob("fpnlab-*.whl")
    return path


class FreshVenv:
    """``root``/venv: a new venv, the course's dependencies visible, fpnlab not."""

    def __init__(self, root: Path):
        base = shutil.which("python3.11") or sys.executable
        self.venv = root / "venv"
        run([base, "-m", "venv", str(self.venv)])
        self.bin = self.venv / "bin"
        self.python = self.bin / "python"
        self.site = Path(run([str(self.python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
        (self.site / "course-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # the venv's own old setuptools would shadow the one torch needs (and no index may
        # replace it)
        run([str(self.python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], cwd=root)

    def imports(self, module: str) -> subprocess.CompletedProcess:
        """``import module`` in the venv, from a folder outside the checkout."""
        return subprocess.run([str(self.python), "-c", f"import {module}; print({module}.__file__)"],
                              capture_output=True, text=True, cwd=self.venv)

    def pip_install(self, *args: str) -> subprocess.CompletedProcess:
        return run([str(self.python), "-m", "pip", "install", "-q", "--no-index",
                    "--disable-pip-version-check", *args], cwd=self.venv)
