"""`fpnlab lessons`: the learner's own copy of the course, and the JupyterLab that opens it.

The released notebooks (``lessons/``, ``explore/``) belong to the course: tracked in the
repository, updated by ``git pull``. A learner works in a *workspace*, a folder outside the
tracked tree that holds copies laid out the same way (so a lesson still finds its siblings at
``../NN-name/NN-name.ipynb``)::

    workspace/                  <checkout>/workspace (git-ignored), else ~/fpnlab; $FPNLAB_WORKSPACE
      START.ipynb               the course map, made by fpnlab lessons
      lessons/01-preprocessing/01-preprocessing.ipynb ...
      lessons/03-body/backups/03-body-20261201-120000.ipynb    what --reset 03 kept
      explore/shape-explorer.ipynb
      .fpnlab-workspace.json    the sha256 of each released file when it was copied
      .fpnlab/lab/              JupyterLab's settings and layouts for this workspace

A learner's notebook is never overwritten: a file already in the workspace stays as it is, a
release that changed since it was copied is reported (``--reset`` gets it and keeps a backup),
and a new lesson is copied in.

The learner lab (:func:`lab_command`) is JupyterLab on the workspace with the course's kernel
only, none of nbgrader's instructor parts, no news, and ``START.ipynb`` as its first page. Its
settings are package data in ``fpnlab/lab/``: ``page_config.json`` (disabled lab extensions) and
``overrides.json`` (setting defaults), read through ``--LabApp.app_settings_dir``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Tuple

PACKAGE = Path(__file__).resolve().parent
LAB_CONFIG = PACKAGE / "lab"
KERNEL = "fpnlab"
START = "START.ipynb"
MANIFEST = ".fpnlab-workspace.json"
LAB_STATE = Path(".fpnlab") / "lab"
EXPLORE = "explore"
# nbgrader 0.9.6's server extensions: the formgrader and the assignment and course lists (its lab
# extension, @jupyter/nbgrader, is disabled by fpnlab/lab/page_config.json).
NBGRADER_SERVER_EXTENSIONS = (
    "nbgrader.server_extensions.formgrader",
    "nbgrader.server_extensions.validate_assignment",
    "nbgrader.server_extensions.assignment_list",
    "nbgrader.server_extensions.course_list",
)

# What each stage builds, one line for the start page (the README's course map says more).
BUILDS = {
    "01-preprocessing": "the resize rule, BGR255 normalisation and padding to a multiple of 32",
    "02-stem": "the conv output-size formula, FrozenBatchNorm2d and the ResNet stem",
    "03-body": "the bottleneck, the four stages and the ResNet-50 body (C2..C5)",
    "04-fpn": "the FPN's lateral and output blocks and the top-down pathway (P3..P5)",
    "05-p6p7": "LastLevelP6P7: the P6 and P7 levels above the pyramid",
    "06-backbone": "build_resnet_fpn_p3p7_backbone(cfg), run on the sample photo and traced",
    "07-deployment": "nearest x2 as a deconvolution, Eltwise, Caffe pooling and an ONNX export",
    "08-levels": "what each level sees and costs: receptive fields, multiply-adds, memory, anchors",
    "09-detector": "your backbone with COCO weights detects objects; the GPU lab",
}


class WorkspaceError(Exception):
    """The workspace cannot be made or changed; nothing in it was lost."""


def checkout_root() -> Optional[Path]:
    """The repository folder when fpnlab runs from a checkout (its parent holds ``lessons/``)."""
    top = PACKAGE.parent
    return top if (top / "lessons").is_dir() else None


def release_root() -> Path:
    """A folder with the released ``lessons/`` and ``explore/``: the copy an installed wheel
    carries (``fpnlab/_course``), else the checkout's top folder."""
    bundled = PACKAGE / "_course"
    if bundled.is_dir():
        return bundled
    top = checkout_root()
    if top is None:
        raise WorkspaceError(f"no released lessons: neither {bundled} nor "
                             f"{PACKAGE.parent / 'lessons'} exists (reinstall fpnlab, or run it "
                             "from the course repository)")
    return top


def default_workspace() -> Path:
    """$FPNLAB_WORKSPACE, else ``workspace/`` at the top of a checkout, else ``~/fpnlab``."""
    if os.environ.get("FPNLAB_WORKSPACE"):
        return Path(os.environ["FPNLAB_WORKSPACE"]).expanduser()
    top = checkout_root()
    return top / "workspace" if top is not None else Path.home() / "fpnlab"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def released_files(root: Path) -> Dict[str, Path]:
    """``{relative path: file}`` for every released file: lessons/NN-name/*, explore/*."""
    files = {}
    folders = [d for d in sorted((root / "lessons").iterdir()) if d.is_dir()] + [root / EXPLORE]
    for folder in folders:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                files[f.relative_to(root).as_posix()] = f
    return files


def unit(rel: str) -> str:
    """The lesson a released file belongs to: ``03-body``, or ``explore`` for the explorer."""
    parts = rel.split("/")
    return parts[1] if parts[0] == "lessons" else parts[0]


def lesson_names(root: Path) -> List[str]:
    return sorted(d.name for d in (root / "lessons").iterdir()
                  if d.is_dir() and not d.name.startswith("."))


def find_lesson(which: str, root: Path) -> str:
    """A lesson by number (``3``, ``03``), full name (``03-body``), name (``body``) or ``explore``."""
    names = lesson_names(root)
    wanted = which.strip().lower()
    if wanted in (EXPLORE, "shape-explorer"):
        return EXPLORE
    for name in names:
        number, _, title = name.partition("-")
        if wanted in (name, title) or (wanted.isdigit() and number.isdigit()
                                        and int(wanted) == int(number)):
            return name
    raise WorkspaceError(f"no lesson {which!r}: give a number or a name of {', '.join(names)}, "
                         f"or {EXPLORE}")


# -- the workspace -------------------------------------------------------------------------------

def _writable_probe(folder: Path) -> None:
    """Create and remove a file in ``folder``: raises OSError where the learner cannot write."""
    fd, name = tempfile.mkstemp(prefix=".fpnlab-probe-", dir=folder)
    os.close(fd)
    os.unlink(name)


def _check(workspace: Path, root: Path) -> Path:
    """The workspace folder, created if missing; WorkspaceError when it cannot be one."""
    ws = workspace.expanduser()
    if ws.exists() and not ws.is_dir():
        raise WorkspaceError(f"{ws} is a file, not a folder: give another workspace folder")
    resolved, release = ws.resolve(), root.resolve()
    inside = [release / "lessons", release / EXPLORE]
    if resolved == release or any(resolved == d or d in resolved.parents for d in inside):
        raise WorkspaceError(f"{ws} is the course's own release folder: the workspace must be "
                             "another folder (the default is workspace/)")
    try:
        ws.mkdir(parents=True, exist_ok=True)
        _writable_probe(ws)
    except OSError as e:
        raise WorkspaceError(f"cannot write in {ws} ({e.strerror or e}): "
                             "give a folder you own") from None
    return ws


def _read_manifest(ws: Path) -> dict:
    try:
        data = json.loads((ws / MANIFEST).read_text())
    except (OSError, ValueError):
        return {"files": {}}
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return {"files": {}}
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file: a crash leaves the old file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = os.umask(0)
    os.umask(mask)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~mask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)            # mkstemp makes 0600: give it the mode a plain copy gets
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_manifest(ws: Path, manifest: dict) -> None:
    _write_atomic(ws / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


@dataclass
class Report:
    """What :func:`prepare` did: which lessons it copied, which have a newer release."""

    workspace: Path
    added: List[str] = field(default_factory=list)      # lessons copied in (new or missing)
    newer: List[str] = field(default_factory=list)      # lessons whose release changed since copied
    start_backup: Optional[Path] = None                 # where an edited START.ipynb went

    def lines(self) -> List[str]:
        out = [f"fpnlab lessons: your workspace is {self.workspace}"]
        if self.added:
            out.append(f"  copied: {', '.join(self.added)}")
        for name in self.newer:
            number = name.split("-")[0]
            what = "the explorer" if name == EXPLORE else f"lesson {name}"
            out.append(f"  {what} has a newer release; `{command(self.workspace)} --reset "
                       f"{number}` gets it, keeping your file as a backup")
        if self.start_backup:
            out.append(f"  {START} is made by fpnlab lessons; your edited copy is kept as "
                       f"{self.start_backup.relative_to(self.workspace)}")
        out.append(f"  start with {START}")
        return out


def command(workspace: Path) -> str:
    """How to run ``fpnlab lessons`` on this workspace: its folder named unless it is the default."""
    try:
        default = Path(workspace).resolve() == default_workspace().resolve()
    except OSError:
        default = False
    return "fpnlab lessons" if default else f"fpnlab lessons {workspace}"


def prepare(workspace: Path, root: Optional[Path] = None) -> Report:
    """Copy into ``workspace`` every released file it lacks, report the lessons whose release
    changed since they were copied (leaving the learner's file as it is), write the start page."""
    root = root or release_root()
    ws = _check(workspace, root)
    manifest = _read_manifest(ws)
    report = Report(ws)
    try:
        for rel, src in released_files(root).items():
            dest, released = ws / rel, _sha256(src)
            copied = manifest["files"].get(rel, {}).get("sha256")
            if not dest.exists():
                _write_atomic(dest, src.read_bytes())
                manifest["files"][rel] = {"sha256": released}
                if unit(rel) not in report.added:
                    report.added.append(unit(rel))
            elif copied is None and _sha256(dest) == released:
                manifest["files"][rel] = {"sha256": released}     # a copy made by hand
            elif copied != released and unit(rel) not in report.newer:
                report.newer.append(unit(rel))
        _write_manifest(ws, manifest)             # the copies are recorded before the page
        report.start_backup = write_start_page(ws, root, manifest)
        _write_manifest(ws, manifest)
    except OSError as e:
        raise WorkspaceError(f"cannot write in {ws} ({e.strerror or e}): your files are as "
                             "they were") from None
    return report


def _backup_path(dest: Path, stamp: str) -> Path:
    folder = dest.parent / "backups"
    candidate = folder / f"{dest.stem}-{stamp}{dest.suffix}"
    n = 1
    while candidate.exists():
        candidate = folder / f"{dest.stem}-{stamp}-{n}{dest.suffix}"
        n += 1
    return candidate


def reset(workspace: Path, which: str, root: Optional[Path] = None,
          now: Optional[datetime] = None) -> List[Tuple[Path, Optional[Path]]]:
    """Restore one lesson (or the explorer) from the release. The learner's file is first copied
    to ``backups/<name>-<YYYYmmdd-HHMMSS>.ipynb`` next to it (unless it equals the release).
    Returns ``[(restored file, its backup or None)]``."""
    root = root or release_root()
    name = find_lesson(which, root)
    ws = _check(workspace, root)
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    manifest = _read_manifest(ws)
    done = []
    try:
        for rel, src in released_files(root).items():
            if unit(rel) != name:
                continue
            dest, data = ws / rel, src.read_bytes()
            backup = None
            if dest.exists() and dest.read_bytes() != data:
                backup = _backup_path(dest, stamp)
                backup.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(dest, backup)
                if backup.read_bytes() != dest.read_bytes():
                    raise OSError(f"the backup {backup} differs from {dest}")
            _write_atomic(dest, data)
            manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest()}
            done.append((dest, backup))
        _write_manifest(ws, manifest)
    except OSError as e:
        raise WorkspaceError(f"cannot reset {name} in {ws} ({e.strerror or e}); "
                             "your file is as it was or in its backup") from None
    return done


# -- the start page ------------------------------------------------------------------------------

HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def title(notebook: Path) -> str:
    """The first markdown heading of a notebook (its file name when it has none)."""
    try:
        cells = json.loads(notebook.read_text()).get("cells", [])
    except (OSError, ValueError):
        cells = []
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            m = HEADING.search("".join(source) if isinstance(source, list) else source)
            if m:
                return m.group(1)
    return notebook.stem


def start_page_sources(root: Path, run: str = "fpnlab lessons") -> List[str]:
    """The start page's markdown cells: the course map with a link to each lesson; ``run`` is
    how to run ``fpnlab lessons`` on this workspace."""
    rows = ["| | lesson | you build |", "|---|---|---|"]
    for name in lesson_names(root):
        notebooks = sorted((root / "lessons" / name).glob("*.ipynb"))
        if not notebooks:
            continue
        link = f"lessons/{name}/{notebooks[0].name}"
        heading = title(notebooks[0]).replace("|", "\\|")
        rows.append(f"| {name.split('-')[0]} | [{heading}]({link}) | "
                    f"{BUILDS.get(name, '')} |")
    explorers = sorted((root / EXPLORE).glob("*.ipynb"))
    first = lesson_names(root)[0] if lesson_names(root) else "01"
    intro = ("# fpnlab: start here\n\n"
             "You build, stage by stage, the backbone of a one-stage detector: the ResNet-50 body, "
             "the FPN and its P6/P7 levels, each checked against a reference trace of tensor "
             "shapes. Open the lessons in order; every exercise is followed by a test cell that "
             "says what is wrong.\n\n"
             "This folder is your workspace: your work is saved here, in your own copies of the "
             "lessons, and a course update never overwrites them.")
    course = "## The course\n\n" + "\n".join(rows)
    extra = []
    if explorers:
        extra.append(f"[{title(explorers[0])}]({EXPLORE}/{explorers[0].name}): every widget, "
                     "for any image size and configuration (not graded).")
    extra += [
        "**Check a lesson** from a terminal: "
        f"`fpnlab check lessons/{first}/{first}.ipynb` runs it and says which tests pass.",
        f"**Start a lesson again**: `{run} --reset {first.split('-')[0]}` restores it "
        f"from the course and keeps your file in the lesson's `backups/` folder; `{run}` "
        "also says when a lesson has a newer release. Close the lesson's tab first (or use "
        "File > Reload Notebook from Disk afterwards).",
        "This page is made by `fpnlab lessons` and rewritten on each run: keep your notes in "
        "the lessons.",
    ]
    return [intro, course, "## Also\n\n" + "\n\n".join(f"- {e}" for e in extra)]


def _sources_sha(sources: List[str]) -> str:
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def _notebook_sources(path: Path) -> Optional[List[str]]:
    try:
        cells = json.loads(path.read_text()).get("cells", [])
    except (OSError, ValueError):
        return None
    return ["".join(c.get("source", "")) if isinstance(c.get("source"), list)
            else c.get("source", "") for c in cells]


def write_start_page(ws: Path, root: Path, manifest: dict) -> Optional[Path]:
    """(Re)write ``START.ipynb``. Opening it in the lab only changes its metadata; should its
    cells have been edited, that copy is moved to ``backups/`` first. Returns the backup or None."""
    import nbformat

    sources = start_page_sources(root, command(ws))
    path, backup = ws / START, None
    old = _notebook_sources(path) if path.exists() else None
    if old is not None and old != sources and _sources_sha(old) != manifest.get("start"):
        backup = _backup_path(path, datetime.now().strftime("%Y%m%d-%H%M%S"))
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, backup)
    cells = [nbformat.v4.new_markdown_cell(s, id=f"start-{i}") for i, s in enumerate(sources)]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": KERNEL, "display_name": "Python 3 (fpnlab)", "language": "python"},
        "language_info": {"name": "python"}})
    if old != sources:
        _write_atomic(path, nbformat.writes(nb).encode() + b"\n")
    manifest["start"] = _sources_sha(sources)
    return backup


# -- the learner lab -----------------------------------------------------------------------------

def lab_command(workspace: Path, port: Optional[int] = None, browser: bool = True,
                allow_root: bool = False, extra: Tuple[str, ...] = ()) -> Tuple[List[str], dict]:
    """``(argv, env)`` of the learner lab: JupyterLab on ``workspace`` with the fpnlab kernel
    only, no nbgrader server or lab extensions, no news, ``START.ipynb`` as its first page, and
    its settings and layouts in ``workspace/.fpnlab/lab``."""
    ws = Path(workspace).resolve()
    state = ws / LAB_STATE
    argv = [sys.executable, "-m", "jupyterlab",
            "--ip=127.0.0.1",
            f"--ServerApp.root_dir={ws}",
            f"--LabApp.default_url=/lab/tree/{START}",
            f"--LabApp.app_settings_dir={LAB_CONFIG}",        # page_config.json, overrides.json
            f"--LabApp.user_settings_dir={state / 'user-settings'}",
            f"--LabApp.workspaces_dir={state / 'workspaces'}",
            f"--KernelSpecManager.allowed_kernelspecs={KERNEL}",
            f"--MappingKernelManager.default_kernel_name={KERNEL}"]
    argv += [f"--ServerApp.jpserver_extensions={name}=False" for name in NBGRADER_SERVER_EXTENSIONS]
    if port is not None:
        argv.append(f"--port={port}")
    if not browser:
        argv.append("--no-browser")
    if allow_root:
        argv.append("--allow-root")
    argv += list(extra)
    env = dict(os.environ)
    # the lab's terminals find this environment's python and `fpnlab check` first
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return argv, env


def open_lab(workspace: Path, port: Optional[int] = None, browser: bool = True,
             allow_root: bool = False) -> int:
    """Replace this process with the learner lab on ``workspace`` (its exit status elsewhere)."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        raise WorkspaceError(f"the {KERNEL} kernel is not installed: run `make setup` (or "
                             f"`{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL} "
                             "--display-name 'Python 3 (fpnlab)'`)")
    argv, env = lab_command(workspace, port=port, browser=browser, allow_root=allow_root)
    print(f"fpnlab lessons: opening JupyterLab on {Path(workspace).resolve()} "
          "(instructors: `make lab-instructor` opens the repository with nbgrader)", flush=True)
    os.chdir(workspace)
    if os.name == "posix":
        os.execve(argv[0], argv, env)
    import subprocess  # pragma: no cover - not POSIX
    return subprocess.call(argv, env=env)
