"""A lesson opened on a hosted runtime (Google Colab) installs this release of fpnlab itself.

Every lesson's setup cell imports fpnlab; where it is missing, the cell installs
``fpnlab==<this version>`` on a hosted runtime (``FPNLAB_INSTALL`` replaces the spec: here, a
wheel built from the checkout) and anywhere else says how to set up, installing nothing.

The slow tests play the hosted runtime with a fresh venv whose Python sees the course's
dependencies but not fpnlab (a ``.pth`` line naming this venv's site-packages: a plain path
line does not run that folder's own ``.pth`` files, so the checkout's editable fpnlab stays
invisible), registered as a Jupyter kernel, and run the released lesson 01 on it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import fpnlab
from autograder import authoring as A
from freshvenv import FreshVenv, build_wheel

ROOT = Path(__file__).resolve().parent.parent
LESSON = "01-preprocessing"
PIN = re.compile(r'"fpnlab==([^"]+)"')
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def setup_cells():
    for folder in ("solutions", "lessons"):
        for path in sorted((ROOT / folder).glob("*/*.ipynb")):
            nb = nbformat.read(str(path), as_version=4)
            first = next(c for c in nb.cells if c.cell_type == "code")
            yield path.relative_to(ROOT), first.source


@pytest.mark.parametrize("where,source", list(setup_cells()), ids=lambda v: str(v)[:40])
def test_every_setup_cell_pins_this_release(where, source):
    assert "import fpnlab" in source, f"{where}: the first code cell is not the setup cell"
    assert PIN.findall(source) == [fpnlab.__version__], (
        f"{where}: the setup cell installs {PIN.findall(source)}, this release is "
        f"{fpnlab.__version__}: run `make release` after changing the version")
    assert source == A.SETUP_SOURCE


def _run_setup(monkeypatch, env: dict) -> list:
    """The setup cell's install step here, with fpnlab made unimportable and pip replaced:
    returns the pip commands it ran."""
    ran = []
    saved = sys.modules["fpnlab"]

    def pip(cmd, check):
        ran.append(cmd)
        monkeypatch.setitem(sys.modules, "fpnlab", saved)   # "installed"

    monkeypatch.setitem(sys.modules, "fpnlab", None)         # import fpnlab: ModuleNotFoundError
    monkeypatch.setattr(subprocess, "run", pip)
    for var in ("COLAB_RELEASE_TAG", "COLAB_GPU", "FPNLAB_INSTALL"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    install = A.SETUP_SOURCE.split("from fpnlab.device")[0]   # not the seeding and device part
    exec(compile(install, "<setup>", "exec"), {})
    return ran


def test_the_setup_cell_installs_only_on_a_hosted_runtime(monkeypatch):
    pinned = f"fpnlab=={fpnlab.__version__}"
    assert _run_setup(monkeypatch, {"COLAB_RELEASE_TAG": "x"})[0][1:] == [
        "-m", "pip", "install", "-q", pinned]
    assert _run_setup(monkeypatch, {"COLAB_GPU": "1"})[0][-1] == pinned
    assert _run_setup(monkeypatch, {"COLAB_GPU": "1", "FPNLAB_INSTALL": "/w/fpnlab.whl"}
                      )[0][-1] == "/w/fpnlab.whl"
    with pytest.raises(ModuleNotFoundError, match=rf"`make lab`.*`pip install {pinned}`"):
        _run_setup(monkeypatch, {"FPNLAB_INSTALL": "/w/fpnlab.whl"})
    monkeypatch.setitem(sys.modules, "fpnlab", fpnlab)       # installed: nothing to do
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("installed again"))
    exec(compile(A.SETUP_SOURCE.split("from fpnlab.device")[0], "<setup>", "exec"), {})


# ----------------------------------------------------------------------------- a hosted runtime

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


class Runtime(FreshVenv):
    """A fresh venv without fpnlab, as a Jupyter kernel named ``hosted``."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.jupyter = root / "jupyter"
        spec = self.jupyter / "kernels" / "hosted"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(
            '{"argv": ["%s", "-m", "ipykernel_launcher", "-f", "{connection_file}"], '
            '"display_name": "hosted", "language": "python"}' % self.python)

    def execute(self, nb, monkeypatch, env: dict) -> nbformat.NotebookNode:
        from nbclient import NotebookClient

        monkeypatch.setenv("JUPYTER_PATH", str(self.jupyter))
        kernel_env = {k: v for k, v in os.environ.items()
                      if not k.startswith(("COLAB_", "FPNLAB_", "PIP_", "VIRTUAL_ENV", "PYTHONPATH"))}
        kernel_env.update(env, PATH=os.pathsep.join([str(self.python.parent), kernel_env["PATH"]]))
        client = NotebookClient(nb, kernel_name="hosted", timeout=600, allow_errors=True,
                                resources={"metadata": {"path": str(ROOT / "lessons" / LESSON)}})
        client.execute(env=kernel_env)
        return nb


@pytest.fixture
def runtime(tmp_path) -> Runtime:
    rt = Runtime(tmp_path)
    assert rt.imports("fpnlab").returncode != 0, "the checkout's fpnlab is visible in the fresh venv"
    assert rt.imports("torch").returncode == 0, rt.imports("torch").stderr[-2000:]
    return rt


def _release() -> nbformat.NotebookNode:
    return nbformat.read(str(next((ROOT / "lessons" / LESSON).glob("*.ipynb"))), as_version=4)


def _meta(c) -> dict:
    return c.metadata.get("nbgrader", {})


def _errors(c) -> list:
    return [o for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.slow
def test_a_hosted_runtime_installs_this_release_and_runs_the_lesson(runtime, wheel, monkeypatch):
    before = set(os.listdir(runtime.site))
    nb = runtime.execute(_release(), monkeypatch, {"COLAB_RELEASE_TAG": "test",
                                                   "FPNLAB_INSTALL": str(wheel),
                                                   "PIP_NO_INDEX": "1"})   # nothing downloads
    setup = nb.cells[0]
    assert not _errors(setup), ANSI.sub("", "\n".join(_errors(setup)[0]["traceback"]))
    where = runtime.imports("fpnlab")
    assert where.returncode == 0 and where.stdout.startswith(str(runtime.site)), where
    added = set(os.listdir(runtime.site)) - before
    assert {n.split("-")[0] for n in added} <= {"fpnlab", "autograder"}, (
        f"pip installed more than fpnlab (the dependencies were there): {sorted(added)}")
    given = [c for c in nb.cells if c.cell_type == "code"
             and not _meta(c).get("solution") and not _meta(c).get("grade")]
    broken = {_meta(c).get("grade_id"): ANSI.sub("", "\n".join(e["traceback"]))[-800:]
              for c in given for e in _errors(c)}
    assert not broken, broken
    assert "0 of" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)   # the summary ran
    tests = [c for c in nb.cells if _meta(c).get("grade")]
    assert all("not answered yet" in _errors(c)[0]["evalue"] for c in tests)


@pytest.mark.slow
def test_elsewhere_a_missing_fpnlab_is_one_clear_error_and_nothing_is_installed(runtime, wheel,
                                                                                monkeypatch):
    before = set(os.listdir(runtime.site))
    nb = _release()
    nb.cells = nb.cells[:1]
    runtime.execute(nb, monkeypatch, {"FPNLAB_INSTALL": str(wheel), "PIP_NO_INDEX": "1"})
    (error,) = _errors(nb.cells[0])
    assert error["ename"] == "ModuleNotFoundError"
    assert "`make lab`" in error["evalue"] and f"`pip install fpnlab=={fpnlab.__version__}`" in error["evalue"]
    assert set(os.listdir(runtime.site)) == before and runtime.imports("fpnlab").returncode != 0


def test_the_readme_opens_every_lesson_in_colab_from_one_repository_url():
    readme = (ROOT / "README.md").read_text()
    home = re.search(r"public home is (https://github\.com/([\w.-]+/[\w.-]+))\b", readme)
    assert home, "README: the 'Hosted notebooks' section names the repository's public home"
    url, repo = home.group(1).rstrip("."), home.group(2).rstrip(".")
    assert readme.count("https://github.com/") == 1, "README: the repository URL in one place"
    for path in sorted((ROOT / "lessons").glob("*/*.ipynb")):
        link = (f"https://colab.research.google.com/github/{repo}/blob/main/"
                f"{path.relative_to(ROOT).as_posix()}")
        assert f"[Open in Colab]({link})" in readme, f"README: no Colab link for {path.name}"
    meta = (ROOT / "pyproject.toml").read_text()
    assert f'Homepage = "{url}"' in meta or "Homepage" not in meta
