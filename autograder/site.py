"""`make site`: the course as a static website (Jupyter Book 1), built from the released lessons.

    python -m autograder.site [--out DIR]    # default build/site; the pages are in DIR/_build/html
    python -m autograder.site --serve 8000   # read it on http://127.0.0.1:8000/

``DIR/_build/html`` is a plain static web site (relative links only: any host, any sub-path,
or the files opened from disk). Jupyter Book 1 is Sphinx with sphinx-book-theme and myst-nb, all
Python packages from PyPI with their assets bundled: the build and the pages need no network (a
page loads nothing from another host, :func:`check_offline`). Jupyter Book 2 is not used: its
HTML theme is only distributed from GitHub (mystmd downloads it at build time). The steps:

1. **Guard** (:func:`check_sources`): refuse to build (exit 2) when a notebook that would be
   published carries solution code: every answer cell of ``lessons/`` must hold nbgrader's stub
   (``c.ClearSolutions.code_stub`` of ``autograder/nbgrader_config.py``), no ``BEGIN SOLUTION`` or
   ``BEGIN HIDDEN TESTS`` marker may be left, and no distinctive line of a solution region or a
   hidden test of ``solutions/`` may occur in any published notebook.
2. Copy ``lessons/*/*.ipynb`` and ``explore/shape-explorer.ipynb`` (never ``solutions/``) into DIR.
3. Execute each copy with nbclient on the ``fpnlab`` kernel, on the CPU, errors allowed, several
   notebooks at a time (:func:`execute`).
4. Clean (:func:`clean`): no outputs on answer cells (nbgrader ``solution``), test cells
   (``grade``) and the cells that report the tests' results, no error outputs anywhere; widget
   views become static snapshots (their HTML and images, :func:`widget_snapshot`) and the widget
   state is dropped; the answer and test cells are tagged ``exercise`` and ``test`` (the page
   marks them with the classes ``tag_exercise`` and ``tag_test``); each notebook's ``# Title``
   moves to its first cell, so that it heads the page (:func:`lift_title`).
5. Write DIR/_config.yml (``site/_config.yml``), DIR/_toc.yml (the index, the lessons in course
   order, the explorer) and DIR/index.md (``site/index.md`` with the course map).
6. ``jupyter-book build --builder html`` in DIR (Sphinx; it executes nothing), then the guard
   again over every file it wrote (:func:`check_site`), and :func:`check_offline`.
"""
from __future__ import annotations

import argparse
import functools
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
DEFAULT_OUT = ROOT / "build" / "site"
EXPLORER = Path("explore") / "shape-explorer.ipynb"
KERNEL = "fpnlab"
COURSE_MAP_MARK = "<!-- course map: written here by autograder/site.py -->"
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_MARKERS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
MIN_SECRET = 16      # shorter lines (`return x`, `pass`) are not evidence of a leak
# Cells that report the learner's test results (``fpnlab.judge.summary``): test cells too.
TEST_REPORT = re.compile(r"\bjudge\.summary\(")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
EXERCISE_TAG, TEST_TAG = "exercise", "test"     # on the page: class="cell tag_exercise ..."
# Files of the built site that hold no course text (the theme's bundles, images, fonts).
NOT_TEXT = {".js", ".css", ".map", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".ico",
            ".woff", ".woff2", ".ttf", ".eot", ".wasm", ".inv", ".gz", ".zip", ".pickle"}


class SiteError(RuntimeError):
    """The site cannot be built: the message says which file, what is wrong and what to do."""


def _log(message: str) -> None:
    print(f"site: {message}", flush=True)


# --- 1. the guard ---------------------------------------------------------------------------

def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _read(path: Path):
    import nbformat

    return nbformat.read(str(path), as_version=4)


def code_stub() -> str:
    """nbgrader's replacement for a solution region, from the course's nbgrader config."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT / "autograder")).load_config()
    return config.ClearSolutions.code_stub["python"]


def _regions(source: str, markers) -> tuple:
    """(the lines between each pair of ``markers`` of ``source``, the lines outside them)."""
    begin, end = markers
    inside, outside, within = [], [], False
    for line in source.splitlines():
        if line.strip().startswith(begin):
            within = True
        elif line.strip().startswith(end):
            within = False
        else:
            (inside if within else outside).append(line)
    return inside, outside


def _split(solution_nb):
    """(secret lines, public text) of one source notebook: the stripped lines of its solution
    regions and hidden tests (a solution cell without markers is a solution as a whole), and the
    text of everything else, markdown included."""
    secret, public = set(), []
    for cell in solution_nb.cells:
        meta, source = _nbgrader(cell), cell.source
        if meta.get("solution") and SOLUTION_MARKERS[0] not in source:
            secret |= set(source.splitlines())
            continue
        hidden, rest = _regions(source, HIDDEN_MARKERS)
        solution, rest = _regions("\n".join(rest), SOLUTION_MARKERS)
        secret |= set(hidden) | set(solution)
        public += rest
    return {line.strip() for line in secret}, "\n".join(public)


def secret_lines(root: Path = ROOT) -> set:
    """The distinctive lines of the course's solutions and hidden tests (``solutions/``).

    Left out: lines shorter than ``MIN_SECRET`` characters (``return x``, ``pass``) and lines
    found in what is public anyway: the source notebooks outside their secret regions (a
    ``def forward(self, x):``, an exercise text that quotes ``self.use_P5 = in_channels ==
    out_channels``, also as a page shows it, without the backticks) and the reference trace in
    ``fpnlab/data`` that the lessons print."""
    secret, public = set(), []
    for path in sorted((root / "solutions").glob("*/*.ipynb")):
        s, text = _split(_read(path))
        secret |= s
        public.append(text)
    public += [p.read_text() for p in sorted((root / "fpnlab" / "data").glob("*.txt"))]
    public_text = "\n".join(public)
    public_text += "\n" + re.sub(r"[`*]", "", public_text)    # markdown as a page shows it
    return {line for line in secret if len(line) >= MIN_SECRET and not line.startswith("###")
            and line not in public_text}


def lesson_notebooks(root: Path = ROOT) -> List[Path]:
    """The released lessons, in course order (their folders' names: 01-..., 02-...)."""
    return sorted((root / "lessons").glob("*/*.ipynb"), key=lambda p: (p.parent.name, p.name))


def check_sources(root: Path = ROOT, stub: Optional[str] = None) -> None:
    """Raise :class:`SiteError` if a notebook to publish has solution code or hidden tests."""
    stub_lines = [line.strip() for line in (stub or code_stub()).splitlines()]
    secrets = secret_lines(root)
    problems = []
    for path in lesson_notebooks(root) + [root / EXPLORER]:
        name = path.relative_to(root)
        for i, cell in enumerate(_read(path).cells):
            meta, source = _nbgrader(cell), cell.source
            lines = [line.strip() for line in source.splitlines()]
            where = f"{name}, cell {i} ({meta.get('grade_id', cell.get('id', '?'))})"
            for marker in SOLUTION_MARKERS + HIDDEN_MARKERS:
                if marker in source:
                    problems.append(f"{where}: has the marker {marker!r}")
            if meta.get("solution") and cell.cell_type == "code" and not _has_stub(lines,
                                                                                  stub_lines):
                problems.append(f"{where}: an answer cell without nbgrader's stub "
                                f"{' / '.join(stub_lines)!r}")
            problems += [f"{where}: a line of a solution or hidden test of solutions/: {line!r}"
                         for line in sorted(secrets) if line in source]
    if problems:
        raise SiteError("refusing to build the site: a notebook to publish carries solution code "
                        "(regenerate the release with `make release`):\n  "
                        + "\n  ".join(problems[:20]))


def _has_stub(lines: List[str], stub: List[str]) -> bool:
    """The stub's lines, one after the other (indented as the region was), somewhere in a cell."""
    return any(lines[i:i + len(stub)] == stub for i in range(len(lines)))


class _Text(HTMLParser):
    """The text of an HTML page: syntax highlighting splits code into spans, text joins it."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: List[str] = []

    def handle_data(self, data):
        self.parts.append(data)


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def page_text(path: Path) -> str:
    """What a reader or a crawler can get out of one file of the site, as plain text."""
    raw = path.read_text(errors="replace")
    if path.suffix == ".html":
        parser = _Text()
        parser.feed(raw)
        return raw + "\n" + "".join(parser.parts)
    if path.suffix in (".json", ".ipynb"):
        try:
            return raw + "\n" + "\n".join(_strings(json.loads(raw)))
        except ValueError:
            return raw
    return raw


def check_site(html_dir: Path, root: Path = ROOT) -> int:
    """Raise :class:`SiteError` if a line of a solution or hidden test is in a built file;
    returns the number of files read."""
    secrets = secret_lines(root)
    problems, count = [], 0
    for path in sorted(p for p in Path(html_dir).rglob("*") if p.is_file()):
        if path.suffix.lower() in NOT_TEXT:
            continue
        count += 1
        text = page_text(path)
        problems += [f"{path.relative_to(html_dir)}: {line!r}" for line in sorted(secrets)
                     if line in text or html.escape(line) in text]
    if problems:
        raise SiteError("the built site contains solution code; delete it:\n  "
                        + "\n  ".join(problems[:20]))
    return count


# --- 2-4. copy, execute, clean ----------------------------------------------------------------

def kernel_env() -> Dict[str, str]:
    """The kernels' environment: CPU only, and matplotlib's inline backend (pytest sets Agg)."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    env.update(FPNLAB_DEVICE="cpu", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


def execute(path: Path, timeout: int = 900) -> float:
    """Run one notebook in place, top to bottom, errors allowed; returns the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    from fpnlab.selfcheck import unix_sockets

    t0 = time.monotonic()
    nb = _read(path)
    with tempfile.TemporaryDirectory(prefix="fpnlab-site-") as sockets:
        client = NotebookClient(nb, kernel_name=KERNEL, timeout=timeout, startup_timeout=180,
                                allow_errors=True, record_timing=False, config=unix_sockets(sockets),
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute(env=kernel_env())
        except Exception as err:   # no kernel, a kernel that died, a cell past the time limit
            hint = (f"; is the `{KERNEL}` kernel registered? (make setup)"
                    if type(err).__name__ == "NoSuchKernel" else "")
            raise SiteError(f"executing {path} failed: {type(err).__name__}: {err}{hint}") from err
    nbformat.write(nb, str(path))
    return time.monotonic() - t0


def _widget_png(model: dict) -> Optional[str]:
    for buf in model.get("buffers", []):
        if buf.get("path") == ["value"] and buf.get("encoding", "base64") == "base64":
            return buf["data"]
    value = model["state"].get("value")
    return value if isinstance(value, str) and value else None


def widget_snapshot(model_id: str, state: dict) -> List[dict]:
    """Static outputs for one widget view from the saved widget state: its images as
    ``image/png`` outputs, everything else (HTML, labels, the controls' values) as ``text/html``.
    A static page has no kernel, so the snapshot shows the widgets as they were drawn."""
    outputs: List[dict] = []
    fragments: List[str] = []

    def flush():
        if fragments:
            outputs.append({"output_type": "display_data", "metadata": {},
                            "data": {"text/html": "<div>" + "\n".join(fragments) + "</div>"}})
            fragments.clear()

    def visit(mid: str):
        model = state.get(mid)
        if model is None:
            return
        name, s = model.get("model_name", ""), model.get("state", {})
        if "children" in s:
            for child in s["children"]:
                visit(child.replace("IPY_MODEL_", ""))
        elif name == "ImageModel":
            data = _widget_png(model)
            if data and s.get("format", "png") == "png":
                flush()
                what = " ".join(c.replace("fpnlab-", "") for c in s.get("_dom_classes", []))
                outputs.append({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": data,
                                         "text/plain": f"{what or 'a widget'}'s image"}})
        elif name in ("HTMLModel", "HTMLMathModel"):
            if s.get("value"):
                fragments.append(s["value"])
        elif name == "LabelModel":
            fragments.append(f"<p>{html.escape(str(s.get('value', '')))}</p>")
        elif "description" in s and ("value" in s or "index" in s):
            value = s.get("value")
            if value is None and s.get("_options_labels") and s.get("index") is not None:
                value = s["_options_labels"][s["index"]]
            fragments.append(f"<code>{html.escape(str(s['description']))} = "
                             f"{html.escape(str(value))}</code>")
        elif name == "OutputModel":
            flush()
            outputs.extend(o for o in s.get("outputs", []) if o.get("output_type") != "error")

    visit(model_id)
    flush()
    return outputs


def clean(nb) -> None:
    """In place: no outputs on answer cells, test cells and test reports (tagged ``exercise``
    and ``test``), no error outputs, widget views as static snapshots, no widget state."""
    import nbformat

    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = _nbgrader(cell)
        if meta.get("solution") or meta.get("grade") or TEST_REPORT.search(cell.source):
            cell.outputs, cell.execution_count = [], None
            tag = EXERCISE_TAG if meta.get("solution") else TEST_TAG
            tags = cell.metadata.setdefault("tags", [])
            if tag not in tags:
                tags.append(tag)
            continue
        kept = []
        for out in cell.outputs:
            if out.get("output_type") == "error":
                continue
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view:
                kept += widget_snapshot(view["model_id"], state)
            else:
                kept.append(out)
        cell.outputs = [nbformat.from_dict(o) for o in kept]


def lift_title(nb) -> Optional[str]:
    """Move the notebook's ``# Title`` line into a markdown cell of its own at the top, so that
    it heads the page and names it (the lessons open with their setup cell, which would
    otherwise come before the title). Returns the title."""
    import nbformat

    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        for j, line in enumerate(lines):
            if line.startswith("# "):
                title = line[2:].strip()
                rest = "\n".join(lines[:j] + lines[j + 1:]).strip("\n")
                if rest:
                    cell.source = rest
                else:
                    del nb.cells[i]
                nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title}"))
                return title
    return None


EXPLORER_NOTE = ("```{note}\nOn this page the widgets are snapshots of how they first drew. Open "
                 "the notebook in JupyterLab (`make lab`) to change their controls.\n```")


def prepare(out: Path, root: Path = ROOT, workers: Optional[int] = None,
            log: Callable[[str], None] = _log) -> List[Path]:
    """Copy the notebooks to publish into ``out``, execute and clean them; returns them."""
    import nbformat

    paths = []
    for src in lesson_notebooks(root) + [root / EXPLORER]:
        dest = out / src.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        paths.append(dest)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        for path, seconds in zip(paths, pool.map(execute, paths)):
            log(f"executed {path.relative_to(out)} in {seconds:.1f} s")
    log(f"executed {len(paths)} notebooks in {time.monotonic() - t0:.1f} s ({workers} at a time)")
    for path in paths:
        nb = _read(path)
        clean(nb)
        if path.relative_to(out) == EXPLORER:       # after its introduction
            first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown")
            nb.cells.insert(first + 1, nbformat.v4.new_markdown_cell(EXPLORER_NOTE))
        lift_title(nb)
        nbformat.write(nb, str(path))
    return paths


# --- 5. configuration and index ---------------------------------------------------------------

def _title(nb, fallback: str) -> str:
    """A notebook's title: its first ``# `` heading."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return fallback


def course_map(out: Path, lessons: List[Path]) -> str:
    """The index page's table: one row per lesson, in course order, linking its page."""
    rows = ["| stage | lesson | exercises |", "|---|---|---|"]
    for i, path in enumerate(lessons, 1):
        nb = _read(path)
        exercises = sum(1 for c in nb.cells if _nbgrader(c).get("solution"))
        title = _title(nb, path.stem).replace("|", "\\|")
        rows.append(f"| {i} | [{title}]({path.relative_to(out).as_posix()}) | {exercises} |")
    return "\n".join(rows)


def _docname(path: Path, out: Path) -> str:
    return path.relative_to(out).with_suffix("").as_posix()


def write_config(out: Path, lessons: List[Path]) -> None:
    """DIR/_config.yml (site/_config.yml), DIR/_toc.yml (the course order), DIR/index.md (+ the
    course map) and the favicon."""
    import yaml
    from PIL import Image, ImageOps

    config = yaml.safe_load((SITE / "_config.yml").read_text())
    header = "# Written by autograder/site.py from site/_config.yml: edit that file instead.\n"
    (out / "_config.yml").write_text(header + yaml.safe_dump(config, sort_keys=False,
                                                             allow_unicode=True))
    toc = {"format": "jb-book", "root": "index", "parts": [
        {"caption": "Lessons", "chapters": [{"file": _docname(p, out)} for p in lessons]},
        {"caption": "Explore", "chapters": [{"file": EXPLORER.with_suffix("").as_posix()}]},
    ]}
    (out / "_toc.yml").write_text("# Written by autograder/site.py: the course order.\n"
                                  + yaml.safe_dump(toc, sort_keys=False))
    index = (SITE / "index.md").read_text()
    if COURSE_MAP_MARK not in index:
        raise SiteError(f"site/index.md: the line {COURSE_MAP_MARK!r} is missing (the course map "
                        "goes there)")
    (out / "index.md").write_text(index.replace(COURSE_MAP_MARK, course_map(out, lessons)))
    favicon = config.get("html", {}).get("favicon")
    if favicon:
        with Image.open(ROOT / "docs" / "pyramid.png") as img:
            ImageOps.fit(img.convert("RGBA"), (64, 64)).save(out / favicon)


# --- 6. Jupyter Book (Sphinx), and what the pages load -----------------------------------------

def _run(argv: List[str], cwd: Path, what: str, env: Optional[dict] = None,
         log: Callable[[str], None] = _log) -> str:
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SiteError(f"{what} failed ({' '.join(argv)}, exit {proc.returncode}, in {cwd}):\n"
                        f"{proc.stdout[-6000:]}")
    log(f"{what}: {time.monotonic() - t0:.1f} s")
    return proc.stdout


def jupyter_book(out: Path, log: Callable[[str], None] = _log) -> Path:
    """``jupyter-book build --builder html`` of ``out``; returns the folder of the pages."""
    env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1")
    code = "import sys; from jupyter_book.cli.main import main; sys.exit(main())"
    output = _run([sys.executable, "-c", code, "build", str(out), "--builder", "html"], out,
                  "jupyter-book build --builder html", env=env, log=log)
    for line in output.splitlines():
        if "WARNING" in line or "ERROR" in line:
            log(line.strip())
    html_dir = out / "_build" / "html"
    if not (html_dir / "index.html").exists():
        raise SiteError(f"jupyter-book wrote no {html_dir / 'index.html'}:\n{output[-4000:]}")
    return html_dir


# What a browser fetches on its own when it opens a page (links it follows only when clicked,
# <a href>, are not in it): element -> the attributes that load something.
LOADS = {"script": ("src",), "img": ("src", "srcset"), "source": ("src", "srcset"),
         "iframe": ("src",), "frame": ("src",), "embed": ("src",), "object": ("data",),
         "video": ("src", "poster"), "audio": ("src",), "track": ("src",), "input": ("src",),
         "link": ("href", "imagesrcset"), "image": ("href", "xlink:href"), "use": ("href",)}
LINK_NOT_LOADED = {"canonical", "alternate", "author", "license", "help", "next", "prev",
                   "index", "search", "top", "up", "copyright", "bookmark", "external"}
REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.\-]*:)?//", re.I)
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""", re.I)


class _Loads(HTMLParser):
    """The URLs a page loads when it opens: its scripts, styles, images, frames, CSS urls."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.urls: List[str] = []
        self._style = False

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "style":
            self._style = True
        if "style" in a:
            self.urls += [u or i for u, i in CSS_URL.findall(a["style"])]
        if tag == "link" and set(a.get("rel", "").lower().split()) <= LINK_NOT_LOADED \
                and a.get("rel"):
            return
        for attr in LOADS.get(tag, ()):
            value = a.get(attr, "")
            if "srcset" in attr:
                self.urls += [part.split()[0] for part in value.split(",") if part.strip()]
            elif value:
                self.urls.append(value)

    def handle_endtag(self, tag):
        if tag == "style":
            self._style = False

    def handle_data(self, data):
        if self._style:
            self.urls += [u or i for u, i in CSS_URL.findall(data)]


def remote_loads(html_dir: Path) -> List[str]:
    """``file: url`` for each thing that a page or a style sheet of the site would load from
    another host (a CDN's MathJax, a web font, an analytics script)."""
    found = []
    for path in sorted(p for p in Path(html_dir).rglob("*") if p.is_file()):
        if path.suffix == ".html":
            parser = _Loads()
            parser.feed(path.read_text(errors="replace"))
            urls = parser.urls
        elif path.suffix == ".css":
            urls = [u or i for u, i in CSS_URL.findall(path.read_text(errors="replace"))]
        else:
            continue
        found += [f"{path.relative_to(html_dir)}: {url}" for url in urls if REMOTE.match(url)]
    return found


def check_offline(html_dir: Path) -> None:
    """Raise :class:`SiteError` if a page would load anything from another host when opened."""
    found = remote_loads(html_dir)
    if found:
        raise SiteError("a page of the site loads something from the network (the site must "
                        "work offline; math, for one, would need a bundled MathJax: the course "
                        "has none):\n  " + "\n  ".join(found[:20]))


# --- serving ----------------------------------------------------------------------------------

class PageHandler(SimpleHTTPRequestHandler):
    """A static file server that keeps quiet."""

    def log_message(self, format, *args):      # noqa: A002 (the base class's name)
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)   # a browser that left is no error


def serve(html_dir: Path, port: int = 8000, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A web server for ``html_dir`` on ``host:port`` (0: any free port), not yet started:
    ``server.serve_forever()``; ``server.server_address[1]`` is the port."""
    handler = functools.partial(PageHandler, directory=str(html_dir))
    return _Server((host, port), handler)


# --- the whole build ----------------------------------------------------------------------------

def build(out: Path = DEFAULT_OUT, root: Path = ROOT, workers: Optional[int] = None,
          log: Callable[[str], None] = _log) -> Path:
    """The whole site into ``out``; returns the folder of its pages (``out/_build/html``)."""
    t0 = time.monotonic()
    check_sources(root)
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not ((out / "_config.yml").is_file()
                                                    or (out / "myst.yml").is_file()):
        raise SiteError(f"{out} is not empty and holds no earlier site build: the builder "
                        "empties its folder first, so give it a new one (--out)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    paths = prepare(out, root, workers, log)
    lessons = [p for p in paths if p.relative_to(out).parts[0] == "lessons"]
    write_config(out, lessons)
    html_dir = jupyter_book(out, log)
    files = check_site(html_dir, root)
    log(f"checked {files} files of the site for solution code: none")
    check_offline(html_dir)
    log("checked that no page loads anything from another host")
    log(f"built {html_dir} in {time.monotonic() - t0:.1f} s; to read it: "
        f"python -m autograder.site --out {out} --serve 8000")
    return html_dir


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"build folder (default: {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--workers", type=int, default=None,
                        help="notebooks executed at a time (default: the CPU count, at most 4)")
    parser.add_argument("--serve", type=int, metavar="PORT", default=None,
                        help="do not build: serve the site built in --out on 127.0.0.1:PORT")
    args = parser.parse_args(argv)
    try:
        if args.serve is not None:
            html_dir = args.out.resolve() / "_build" / "html"
            if not (html_dir / "index.html").is_file():
                raise SiteError(f"no site in {html_dir}: build it first (make site)")
            server = serve(html_dir, args.serve)
            print(f"site: http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            return 0
        build(args.out, workers=args.workers)
    except SiteError as err:
        print(f"site: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
