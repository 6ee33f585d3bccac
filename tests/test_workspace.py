"""`fpnlab lessons`: the learner's workspace (copies, updates, resets, the start page) and the
configuration of the learner lab. No browser: tests/test_browser.py walks the lab itself."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import requires
from fpnlab import cli
from fpnlab import workspace as W

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted(d.name for d in (ROOT / "lessons").iterdir() if d.is_dir())
FIRST = f"lessons/{LESSONS[0]}/{LESSONS[0]}.ipynb"


@pytest.fixture
def release(tmp_path, monkeypatch) -> Path:
    """A copy of the course's release that a test may change, used as fpnlab's release."""
    root = tmp_path / "release"
    for part in ("lessons", W.EXPLORE):
        shutil.copytree(ROOT / part, root / part)
    monkeypatch.setattr(W, "release_root", lambda: root)
    return root


def lessons(ws: Path, *more: str, reset: str = None):
    """``fpnlab lessons WS --no-open`` (or ``--reset``): the exit status."""
    argv = ["lessons", str(ws), *more] + (["--reset", reset] if reset else ["--no-open"])
    return cli.main(argv)


def files(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes: what a failed command must leave as it was."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def answer(path: Path, text: str = "# my answer") -> bytes:
    """The learner writes in the notebook's first code cell; returns the file's new bytes."""
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    cell["source"] = text
    path.write_text(json.dumps(nb, indent=1))
    return path.read_bytes()


def new_release(path: Path, text: str = "A clearer explanation.") -> bytes:
    """The course changes a released notebook: one more markdown cell."""
    nb = json.loads(path.read_text())
    nb["cells"].append({"cell_type": "markdown", "id": "added", "metadata": {}, "source": text})
    path.write_text(json.dumps(nb, indent=1))
    return path.read_bytes()


def test_first_run_copies_every_released_notebook(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert lessons(ws) == 0
    out = capsys.readouterr().out
    released = W.released_files(ROOT)
    assert {f"lessons/{n}/{n}.ipynb" for n in LESSONS} | {"explore/shape-explorer.ipynb"} <= set(released)
    for rel, src in released.items():
        assert (ws / rel).read_bytes() == src.read_bytes(), rel
    manifest = json.loads((ws / W.MANIFEST).read_text())
    assert set(manifest["files"]) == set(released)
    assert (ws / W.START).exists()
    assert f"your workspace is {ws}" in out and "copied: " + ", ".join(LESSONS) in out
    assert (ws / FIRST).stat().st_mode & 0o044, "the copy is readable like a plain copy"


def test_a_second_run_leaves_the_learners_notebook_as_it_is(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert lessons(ws) == 0
    mine = answer(ws / FIRST)
    capsys.readouterr()
    assert lessons(ws) == 0
    out = capsys.readouterr().out
    assert (ws / FIRST).read_bytes() == mine
    assert "copied" not in out and "newer release" not in out


def test_a_changed_release_is_reported_and_not_copied_over(tmp_path, release, capsys):
    ws = tmp_path / "ws"
    assert lessons(ws) == 0
    body, stem = "lessons/03-body/03-body.ipynb", "lessons/02-stem/02-stem.ipynb"
    mine = answer(ws / body)
    untouched = (ws / stem).read_bytes()
    new_release(release / body)
    new_release(release / stem)
    capsys.readouterr()
    assert lessons(ws) == 0
    out = capsys.readouterr().out
    assert (ws / body).read_bytes() == mine                       # the learner's work stays
    assert (ws / stem).read_bytes() == untouched                  # even an untouched copy stays
    assert (f"lesson 03-body has a newer release; `fpnlab lessons {ws} --reset 03` gets it, "
            "keeping your file as a backup") in out
    assert "lesson 02-stem has a newer release" in out
    assert "01-preprocessing" not in out
    assert lessons(ws) == 0                                       # said again until it is reset
    assert "lesson 03-body has a newer release" in capsys.readouterr().out


def test_a_new_lesson_is_copied_in(tmp_path, release, capsys):
    ws = tmp_path / "ws"
    assert lessons(ws) == 0
    mine = answer(ws / FIRST)
    new = release / "lessons" / "08-heads" / "08-heads.ipynb"
    new.parent.mkdir()
    shutil.copy(release / FIRST, new)
    new_release(new)
    capsys.readouterr()
    assert lessons(ws) == 0
    out = capsys.readouterr().out
    assert "copied: 08-heads" in out
    assert (ws / "lessons/08-heads/08-heads.ipynb").read_bytes() == new.read_bytes()
    assert (ws / FIRST).read_bytes() == mine
    assert "(lessons/08-heads/08-heads.ipynb)" in _start_text(ws)


def test_reset_keeps_a_backup_and_restores_the_release(tmp_path, release, capsys):
    ws = tmp_path / "ws"
    body = "lessons/03-body/03-body.ipynb"
    assert lessons(ws) == 0
    mine = answer(ws / body)
    released = new_release(release / body)
    capsys.readouterr()
    assert lessons(ws, reset="03") == 0
    out = capsys.readouterr().out
    backups = list((ws / "lessons/03-body/backups").iterdir())
    assert len(backups) == 1 and backups[0].read_bytes() == mine
    assert re.fullmatch(r"03-body-\d{8}-\d{6}\.ipynb", backups[0].name), backups[0].name
    assert str(backups[0]) in out and "restored from the release" in out
    assert (ws / body).read_bytes() == released
    assert "newer release" not in out
    capsys.readouterr()
    assert lessons(ws) == 0
    assert "newer release" not in capsys.readouterr().out
    # by full name and by a bare number: the same lesson; a file equal to the release needs no backup
    for name in ("03-body", "3", "body"):
        assert lessons(ws, reset=name) == 0
    assert len(list((ws / "lessons/03-body/backups").iterdir())) == 1
    assert "(it equalled the release)" in capsys.readouterr().out


def test_resets_in_the_same_second_keep_every_backup(tmp_path, release):
    ws = tmp_path / "ws"
    W.prepare(ws)
    now = datetime(2026, 12, 1, 12, 0, 0)
    firsts = []
    for n in range(2):
        firsts.append(answer(ws / FIRST, f"# try {n}"))
        [(restored, backup)] = W.reset(ws, "01", now=now)
        assert restored == ws / FIRST and backup.read_bytes() == firsts[-1]
    kept = {p.name for p in (ws / "lessons" / LESSONS[0] / "backups").iterdir()}
    assert kept == {f"{LESSONS[0]}-20261201-120000.ipynb", f"{LESSONS[0]}-20261201-120000-1.ipynb"}


def test_reset_of_the_explorer_and_into_an_empty_workspace(tmp_path, release, capsys):
    ws = tmp_path / "fresh"
    assert lessons(ws, reset="explore") == 0          # no workspace yet: made, then reset
    assert (ws / "explore/shape-explorer.ipynb").exists() and (ws / FIRST).exists()
    assert not (ws / "explore/backups").exists()


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("fpnlab lessons: ") and "\n" not in err, captured.err
    assert "Traceback" not in captured.out + captured.err
    return err


def test_bad_inputs_exit_2_with_one_line_and_lose_nothing(tmp_path, monkeypatch, capsys):
    ws = tmp_path / "ws"
    assert lessons(ws) == 0
    answer(ws / FIRST)
    before = files(ws)
    capsys.readouterr()

    assert lessons(ws, reset="42") == 2
    assert "no lesson '42'" in _one_line_error(capsys) and files(ws) == before
    assert lessons(ws, reset="nope") == 2
    assert LESSONS[0] in _one_line_error(capsys) and files(ws) == before

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert lessons(a_file) == 2
    assert "is a file, not a folder" in _one_line_error(capsys)
    assert a_file.read_text() == "mine"
    assert lessons(a_file / "ws") == 2
    assert "cannot write in" in _one_line_error(capsys)

    assert lessons(ROOT / "lessons") == 2                  # never into the release itself
    assert "release folder" in _one_line_error(capsys)
    assert lessons(ROOT) == 2
    _one_line_error(capsys)

    ws.chmod(0o555)
    try:
        if os.geteuid() == 0:                              # root writes anywhere: as a learner would fail
            def refuse(folder):
                raise PermissionError(13, "Permission denied", str(folder))
            monkeypatch.setattr(W, "_writable_probe", refuse)
        assert lessons(ws) == 2
        assert "cannot write in" in _one_line_error(capsys)
        assert lessons(ws, reset="01") == 2
        assert "cannot write in" in _one_line_error(capsys)
    finally:
        ws.chmod(0o755)
    assert files(ws) == before


def _start_text(ws: Path) -> str:
    nb = json.loads((ws / W.START).read_text())
    assert all(c["cell_type"] == "markdown" for c in nb["cells"]), "START.ipynb is markdown only"
    return "\n".join("".join(c["source"]) for c in nb["cells"])


def test_the_start_page_links_every_lesson_and_says_how_to_reset(tmp_path):
    ws = tmp_path / "ws"
    assert lessons(ws) == 0
    text = _start_text(ws)
    links = re.findall(r"\[([^\]]+)\]\(([^)]+)\)", text)
    targets = [t for _, t in links]
    for name in LESSONS:
        rel = f"lessons/{name}/{name}.ipynb"
        assert rel in targets, f"the start page has no link to {rel}"
        assert (ws / rel).exists()
        title = W.title(ROOT / rel)
        assert title.startswith("Stage "), title                    # the notebook's own heading
        assert re.search(rf"^\| {name[:2]} \| \[{re.escape(title)}\]\({rel}\) \| \S", text, re.M), name
    assert "explore/shape-explorer.ipynb" in targets
    assert f"`fpnlab lessons {ws} --reset 01`" in text
    assert all(not t.startswith(("/", "http")) for t in targets), "links are relative"
    nb = json.loads((ws / W.START).read_text())
    assert nb["metadata"]["kernelspec"]["name"] == W.KERNEL


def test_every_lesson_has_a_line_on_the_start_page():
    missing = [n for n in LESSONS if not W.BUILDS.get(n)]
    assert not missing, f"add what {missing} build(s) to fpnlab.workspace.BUILDS"


def test_the_start_page_is_refreshed_and_an_edited_one_kept(tmp_path, release, capsys):
    ws = tmp_path / "ws"
    assert lessons(ws) == 0
    start = ws / W.START
    nb = json.loads(start.read_text())
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11"}   # what the lab saves
    start.write_text(json.dumps(nb))
    saved = start.read_bytes()
    assert lessons(ws) == 0
    assert start.read_bytes() == saved, "an unchanged page is left alone"
    new = release / "lessons" / "08-heads" / "08-heads.ipynb"
    new.parent.mkdir()
    shutil.copy(release / FIRST, new)
    assert lessons(ws) == 0
    assert "08-heads" in _start_text(ws), "the page follows the release"
    nb = json.loads(start.read_text())
    nb["cells"][0]["source"] = "my notes"
    start.write_text(json.dumps(nb))
    edited = start.read_bytes()
    capsys.readouterr()
    assert lessons(ws) == 0
    out = capsys.readouterr().out
    [kept] = list((ws / "backups").iterdir())
    assert kept.read_bytes() == edited and str(kept.relative_to(ws)) in out
    assert "my notes" not in _start_text(ws)


def test_default_workspace_and_release(tmp_path, monkeypatch):
    monkeypatch.delenv("FPNLAB_WORKSPACE", raising=False)
    assert W.release_root() == ROOT
    assert W.default_workspace() == ROOT / "workspace"
    assert "/workspace/" in (ROOT / ".gitignore").read_text().splitlines()
    monkeypatch.setenv("FPNLAB_WORKSPACE", str(tmp_path / "mine"))
    assert W.default_workspace() == tmp_path / "mine"
    assert W.command(tmp_path / "mine") == "fpnlab lessons"
    monkeypatch.delenv("FPNLAB_WORKSPACE")
    # an installed wheel: the course is package data, the workspace ~/fpnlab
    package = tmp_path / "site-packages" / "fpnlab"
    (package / "_course" / "lessons").mkdir(parents=True)
    monkeypatch.setattr(W, "PACKAGE", package)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert W.release_root() == package / "_course"
    assert W.default_workspace() == tmp_path / "home" / "fpnlab"
    shutil.rmtree(package / "_course")
    with pytest.raises(W.WorkspaceError, match="no released lessons"):
        W.release_root()


def _lab_config(argv):
    from jupyter_server.serverapp import ServerApp

    assert argv[:3] == [sys.executable, "-m", "jupyterlab"]
    app = ServerApp()
    app.parse_command_line(argv[3:])
    return app.config


def test_the_learner_lab_has_the_course_kernel_only_no_nbgrader_no_news(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_core.paths import jupyter_config_path, jupyter_path
    from jupyter_server.extension.config import ExtensionConfigManager
    from jupyterlab_server.config import get_federated_extensions

    ws = tmp_path / "ws"
    W.prepare(ws)
    argv, env = W.lab_command(ws, port=8899, browser=False, allow_root=True)
    config = _lab_config(argv)
    lab, server = config.LabApp, config.ServerApp
    assert server.root_dir == str(ws.resolve()) and server.port == 8899
    assert server.ip == "127.0.0.1" and server.open_browser is False
    assert lab.default_url == f"/lab/tree/{W.START}"
    assert Path(lab.user_settings_dir).is_relative_to(ws.resolve())
    assert Path(lab.workspaces_dir).is_relative_to(ws.resolve())

    # kernels: the course's only, also as the default
    assert config.KernelSpecManager.allowed_kernelspecs == {W.KERNEL}
    assert config.MappingKernelManager.default_kernel_name == W.KERNEL
    specs = KernelSpecManager(config=config).find_kernel_specs()
    assert list(specs) == [W.KERNEL], "run `make setup`: it installs the fpnlab kernel"

    # nbgrader's server extensions: every one this environment enables is switched off
    enabled = ExtensionConfigManager(read_config_path=jupyter_config_path()).get_jpserver_extensions()
    nbgrader = {name for name in enabled if name.startswith("nbgrader")}
    assert nbgrader == set(W.NBGRADER_SERVER_EXTENSIONS), "nbgrader's server extensions changed"
    assert server.jpserver_extensions == {name: False for name in nbgrader}

    # nbgrader's lab extension: disabled in the course's page config
    assert Path(lab.app_settings_dir) == W.LAB_CONFIG
    page = json.loads((W.LAB_CONFIG / "page_config.json").read_text())
    installed = get_federated_extensions(jupyter_path("labextensions"))
    for name in [n for n in installed if "nbgrader" in n] or ["@jupyter/nbgrader"]:
        assert name in page["disabledExtensions"], name

    # no news, no check for updates
    overrides = json.loads((W.LAB_CONFIG / "overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"] == {
        "fetchNews": "false", "checkForUpdates": False}
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_the_cli_refuses_to_open_without_the_kernel(tmp_path, monkeypatch, capsys):
    from jupyter_client import kernelspec

    monkeypatch.setattr(kernelspec.KernelSpecManager, "find_kernel_specs", lambda self: {})
    assert cli.main(["lessons", str(tmp_path / "ws"), "--no-browser"]) == 2
    assert "the fpnlab kernel is not installed" in _one_line_error(capsys)
    assert (tmp_path / "ws" / W.START).exists()


@requires(shutil.which("make") is not None, "needs make")
def test_make_lab_opens_the_learner_lab_and_lab_instructor_the_repository():
    def dry(target):
        return subprocess.run(["make", "-n", "-o", "setup", "-o", ".venv/.fpnlab-setup", target,
                               "LAB_PORT=8899"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    learner = dry("lab")
    assert "-m fpnlab.cli lessons" in learner and "--port=8899" in learner
    instructor = dry("lab-instructor")
    assert "jupyter lab" in instructor and f"--ServerApp.root_dir=\"{ROOT}\"" in instructor
    assert "--port=8899" in instructor and "fpnlab.cli lessons" not in instructor


@pytest.mark.slow
def test_check_runs_a_workspace_notebook(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert lessons(ws) == 0
    before = (ws / FIRST).read_bytes()
    capsys.readouterr()
    assert cli.main(["check", str(ws / FIRST)]) == 1          # the blank release: nothing passes
    out = capsys.readouterr().out
    assert "not answered yet" in out
    assert re.search(r"0 of \d+ visible tests pass", out), out
    assert (ws / FIRST).read_bytes() == before
