"""The course website (`make site`, ``autograder/site.py``, Jupyter Book 1): built once into a
scratch folder, then read as files and in headless Debian Chromium served from localhost.

The build needs no network and takes 45 s on two idle cores, up to 90 s on a busy machine: the 8
notebooks executed on the CPU (about 35 s of CPU time), then Sphinx (a few seconds). Checked: every lesson has its page, in course order
(the course map and the sidebar), under its own title; a lesson page opened in Chromium shows its
title and a drawing from a demonstration cell, and loads nothing from any host but localhost; no
line of a solution or a hidden test of ``solutions/`` is in any file of the site; no exercise or
test cell shows an output, and no cell an error. Fast tests check that the builder's guards refuse
a release with a solution in it, a built page with one, and a page that would load from a CDN.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest

from autograder import site
from browser.lab import CHROMIUM, CHROMIUM_ARGS, ensure_kernel
from conftest import requires

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("*/*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*/*.ipynb"))
HAS_BROWSER = ((Path(CHROMIUM).exists() or shutil.which("chromium") is not None)
               and importlib.util.find_spec("playwright") is not None)
NEEDS_BROWSER = requires(HAS_BROWSER, "needs Debian chromium and the playwright package "
                         "(`make system`, pip install -r requirements.txt)")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr"}


def _title(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    return next(line[2:].strip() for c in nb.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("# "))


def _page(built: Path, notebook: Path) -> Path:
    """The page of a notebook of the repository: lessons/x/x.ipynb -> lessons/x/x.html."""
    return built / notebook.relative_to(ROOT).with_suffix(".html")


def _secret_lines() -> set:
    """Distinctive lines of the solution regions and hidden tests of solutions/: 20 characters
    or more, and not in text that is public anyway (a lesson's own text, which may quote a line
    of the answer in an exercise's instructions, also without its backticks; the reference
    trace the lessons print)."""
    public = "\n".join(p.read_text() for p in LESSONS)
    public += "\n".join(p.read_text() for p in (ROOT / "fpnlab" / "data").glob("*.txt"))
    public += "\n" + public.replace("`", "").replace("*", "")
    lines = set()
    for path in SOLUTIONS:
        for cell in nbformat.read(str(path), as_version=4).cells:
            inside = False
            for line in cell.source.splitlines():
                if re.match(r"\s*### BEGIN (SOLUTION|HIDDEN TESTS)", line):
                    inside = True
                elif re.match(r"\s*### END (SOLUTION|HIDDEN TESTS)", line):
                    inside = False
                elif inside and len(line.strip()) >= 20:
                    lines.add(line.strip())
    return {line for line in lines if line not in public and json.dumps(line)[1:-1] not in public}


class _Page(HTMLParser):
    """What the tests read of a page: its text, its <title>, the <h1>s of its article, the links
    in the article and in the sidebar, and its notebook cells (classes, with or without an output)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.title, self.h1 = [], "", []
        self.article_links, self.nav_links, self.cells = [], [], []
        self._stack = []        # (tag, classes) of the open elements

    def _inside(self, what) -> bool:
        return any(what(tag, classes) for tag, classes in self._stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "a" and a.get("href"):
            if self._inside(lambda t, c: t == "article"):
                self.article_links.append(a["href"])
            if self._inside(lambda t, c: "bd-docs-nav" in c):
                self.nav_links.append(a["href"])
        if tag == "div" and "cell" in classes:
            self.cells.append({"classes": classes, "output": False, "error": False})
        if self.cells and self._inside(lambda t, c: "cell" in c):
            if "cell_output" in classes:
                self.cells[-1]["output"] = True
            if "traceback" in classes:
                self.cells[-1]["error"] = True
        if tag == "h1" and self._inside(lambda t, c: t == "article"):   # not the print copy
            self.h1.append("")
        if tag not in VOID:
            self._stack.append((tag, classes))

    def handle_endtag(self, tag):
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break

    def handle_data(self, data):
        self.parts.append(data)
        if self._inside(lambda t, c: t == "title"):
            self.title += data
        if self._inside(lambda t, c: t == "h1") and self._inside(
                lambda t, c: t == "article") and not self._inside(lambda t, c: "headerlink" in c):
            self.h1[-1] += data

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _read_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _readable(path: Path) -> str:
    """The file as text, plus what a reader sees of it: an HTML page's text (code highlighted
    span by span joins up again), a JSON file's strings."""
    raw = path.read_text(errors="replace")
    if path.suffix == ".html":
        return raw + "\n" + _read_page(path).text
    if path.suffix in (".json", ".ipynb"):
        strings = []

        def walk(v):
            if isinstance(v, str):
                strings.append(v)
            elif isinstance(v, dict):
                [walk(x) for x in v.values()]
            elif isinstance(v, list):
                [walk(x) for x in v]
        walk(json.loads(raw))
        return raw + "\n" + "\n".join(strings)
    return raw


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The site, built once for this module: ``<scratch>/site/_build/html``."""
    ensure_kernel()
    return site.build(tmp_path_factory.mktemp("site") / "site")


@pytest.mark.slow
def test_every_lesson_has_its_page_in_course_order(built):
    pages = [_page(built, p) for p in LESSONS + [ROOT / site.EXPLORER]]
    for notebook, path in zip(LESSONS + [ROOT / site.EXPLORER], pages):
        assert path.is_file(), f"no page for {notebook.relative_to(ROOT)}: {path}"
        page = _read_page(path)
        title = _title(notebook)
        assert page.title.startswith(title), (path, page.title)
        assert [h.strip() for h in page.h1] == [title], (path, page.h1)
    index = _read_page(built / "index.html")
    want = [p.relative_to(built).as_posix() for p in pages]
    course_map = [h for h in index.article_links if h in want]
    assert course_map[:len(LESSONS)] == want[:len(LESSONS)], (
        f"the course map does not link every lesson in order: {course_map}")
    assert [h for h in index.nav_links if h in want] == want, (
        f"the sidebar does not list the lessons, then the explorer: {index.nav_links}")


@pytest.mark.slow
def test_no_solution_code_anywhere_in_the_site(built):
    secrets = _secret_lines()
    assert len(secrets) > 50, "the solutions' secret lines were not found"
    leaks, read = [], 0
    for path in sorted(p for p in built.rglob("*") if p.is_file()):
        if path.suffix in (".png", ".jpg", ".webp", ".ico", ".woff", ".woff2", ".ttf", ".map",
                           ".inv", ".eot"):
            continue
        read += 1
        text = _readable(path)
        leaks += [f"{path.relative_to(built)}: {line!r}" for line in secrets if line in text]
    assert read > 50
    assert not leaks, "\n".join(leaks[:20])
    assert not site.remote_loads(built)


@pytest.mark.slow
def test_exercise_and_test_cells_show_no_output_and_no_cell_an_error(built):
    for lesson in LESSONS + [ROOT / site.EXPLORER]:
        page = _read_page(_page(built, lesson))
        name = lesson.name
        assert page.cells, name
        assert not [c for c in page.cells if c["error"]], f"{name}: a cell shows an error"
        quiet = [c for c in page.cells if {"tag_exercise", "tag_test"} & set(c["classes"])]
        assert not [c for c in quiet if c["output"]], f"{name}: an exercise/test cell has output"
        expected = 0
        for c in nbformat.read(str(lesson), as_version=4).cells:
            meta = c.metadata.get("nbgrader", {})
            if c.cell_type == "code" and (meta.get("solution") or meta.get("grade")
                                          or site.TEST_REPORT.search(c.source)):
                expected += 1
        assert len(quiet) == expected, f"{name}: {len(quiet)} exercise/test cells, {expected}"
        assert any(c["output"] for c in page.cells), f"{name}: no cell shows an output"
        assert "Traceback (most recent call last)" not in page.text, name
        assert "NotAnswered" not in page.text, name


@pytest.mark.slow
@pytest.mark.browser
@NEEDS_BROWSER
def test_a_lesson_page_in_chromium_shows_its_title_and_a_drawing_offline(built, tmp_path):
    from playwright.sync_api import sync_playwright

    lesson = LESSONS[0]
    title = _title(lesson)
    server = site.serve(built, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    errors, requests = [], []

    def route(r):       # anything not from localhost: recorded, and refused at once
        requests.append(r.request.url)
        if urlsplit(r.request.url).hostname in LOCAL_HOSTS:
            r.continue_()
        else:
            r.abort()

    t0 = time.monotonic()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, headless=True,
                                         args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.route("**/*", route)
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/", wait_until="load", timeout=30_000)
            page.locator("article").get_by_role("link", name=title, exact=True).first.click()
            page.wait_for_url(re.compile(re.escape(_page(built, lesson).name)), timeout=30_000)
            page.wait_for_load_state("networkidle", timeout=30_000)
            assert page.title().startswith(title)
            heading = page.locator("article h1").first.inner_text()
            assert heading.replace("#", "").strip() == title
            drawing = page.locator("article div.cell:not(.tag_exercise):not(.tag_test) "
                                   ".cell_output img").first
            drawing.scroll_into_view_if_needed(timeout=10_000)
            page.wait_for_function("e => e.complete && e.naturalWidth > 100",
                                   arg=drawing.element_handle(), timeout=10_000)
            assert drawing.is_visible()
            assert page.locator(".cell.tag_exercise .cell_output, .cell.tag_test .cell_output, "
                                ".traceback").count() == 0
            assert page.locator(".cell.tag_exercise").count() > 0
            page.screenshot(path=str(tmp_path / "lesson.png"))
            text = page.locator("article").inner_text()
            assert "Traceback" not in text and "NotAnswered" not in text
            browser.close()
    finally:
        server.shutdown()
    assert time.monotonic() - t0 < 60
    assert not errors, errors
    elsewhere = sorted({u for u in requests if urlsplit(u).hostname not in LOCAL_HOSTS})
    assert not elsewhere, f"the pages loaded from other hosts: {elsewhere}"
    assert any(u.endswith(".png") for u in requests), requests


def test_the_builder_refuses_a_release_with_a_solution_in_it(tmp_path):
    for part in ("lessons", "solutions", "explore", "fpnlab/data"):
        shutil.copytree(ROOT / part, tmp_path / part)
    name = "05-p6p7"
    solution = nbformat.read(str(ROOT / "solutions" / name / f"{name}.ipynb"), as_version=4)
    answer = next(c.source for c in solution.cells if c.metadata.get("nbgrader", {}).get("solution"))
    path = tmp_path / "lessons" / name / f"{name}.ipynb"
    release = nbformat.read(str(path), as_version=4)
    cell = next(c for c in release.cells if c.metadata.get("nbgrader", {}).get("solution"))
    cell.source = "\n".join(line for line in answer.splitlines() if "###" not in line)
    nbformat.write(release, str(path))
    with pytest.raises(site.SiteError, match="refusing to build the site") as err:
        site.build(tmp_path / "out", root=tmp_path)
    assert "05-p6p7.ipynb" in str(err.value) and "stub" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_the_builder_refuses_a_page_with_a_solution_line(tmp_path):
    line = next(s for s in sorted(site.secret_lines()) if not set(s) & set("<>&\"'"))
    head, tail = line[:len(line) // 2], line[len(line) // 2:]     # highlighted: split in spans
    (tmp_path / "page.html").write_text(f"<pre><span>{head}</span><span>{tail}</span></pre>")
    with pytest.raises(site.SiteError, match="contains solution code"):
        site.check_site(tmp_path)
    (tmp_path / "page.html").write_text("<p>the release's own text</p>")
    assert site.check_site(tmp_path) == 1


def test_the_builder_refuses_a_page_that_loads_from_another_host(tmp_path):
    (tmp_path / "_static").mkdir()
    ok = ('<link rel="stylesheet" href="_static/theme.css"><link rel="canonical" '
          'href="https://example.org/page.html"><script src="_static/x.js"></script>'
          '<a href="https://github.com/fpnlab/fpnlab">the repository</a><img src="a.png">'
          '<script>const THEBE_JS_URL = "https://unpkg.com/thebe"</script>')
    (tmp_path / "page.html").write_text(ok)
    (tmp_path / "_static" / "theme.css").write_text("a { background: url(../a.png) }")
    site.check_offline(tmp_path)
    bad = {"page.html": '<script async src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/'
                        'tex-chtml.js"></script>',
           "img.html": '<img srcset="b.png 1x, //cdn.example.com/b.png 2x">',
           "font.html": '<style>@import url("https://fonts.googleapis.com/css?family=X");</style>',
           "_static/theme.css": "@font-face { src: url(https://fonts.gstatic.com/x.woff2) }",
           "preload.html": '<link rel="preload" as="font" href="http://cdn.example.com/f.woff">'}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(site.SiteError, match="loads something from the network") as err:
        site.check_offline(tmp_path)
    for name in bad:
        assert name in str(err.value), (name, str(err.value))
