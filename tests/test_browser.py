"""The learner lab and the widgets in a real JupyterLab, driven by headless Debian Chromium through
Playwright. Both tests start the lab ``fpnlab lessons`` opens, on a scratch workspace
(``tests/browser/lab.py``).

The explorer test opens ``explore/shape-explorer.ipynb`` (the workspace's copy), runs every cell
on the venv's ``fpnlab`` kernel, waits for the explorer, types a new height and width, and checks
that the P7 shape on the page becomes the one :func:`fpnlab.shapes.stage_shapes` gives.

The learner-lab test opens the lab's front door (the start page), checks that no instructor part
of nbgrader, no other kernel and no news reach the learner, and follows the start page's link to
lesson 01 (:func:`learner_lab` and :func:`open_lesson`, for walks that go on from there).
Screenshots, the browser console and the server log go to ``test-artifacts/browser/``
(``learner/`` for the learner lab).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from conftest import in_ci, requires
from fpnlab import workspace as learner
from fpnlab.reference import reference_shapes
from fpnlab.shapes import REFERENCE, format_shape, stage_shapes

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "explore" / "shape-explorer.ipynb"
ARTIFACTS = ROOT / "test-artifacts" / "browser"

_spec = importlib.util.spec_from_file_location("fpnlab_browser_lab",
                                               Path(__file__).parent / "browser" / "lab.py")
lab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab)

pytestmark = pytest.mark.browser

# Console messages that are not errors of the widgets: resources the offline lab cannot fetch.
IGNORED_CONSOLE = re.compile(r"Failed to load resource|favicon|net::ERR_", re.I)


def _need(condition: bool, reason: str) -> None:
    """Skip when a browser piece is missing on a workstation; fail in CI (CI=true)."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the browser test must run; `make system` installs it)")
    pytest.skip(reason)


def _p7(height: int, width: int) -> str:
    return format_shape(stage_shapes(height, width, REFERENCE)["P7"])


def _cell_text(page, stage: str, column: str) -> str:
    loc = page.locator(f'.fpnlab-explorer tr[data-stage="{stage}"] td.fpnlab-{column}')
    return loc.first.inner_text().strip()


def _set_int(page, name: str, value: int) -> None:
    box = page.locator(f".fpnlab-explorer .fpnlab-{name} input").first
    box.scroll_into_view_if_needed()
    box.fill(str(value))
    box.press("Enter")
    box.evaluate("e => e.blur()")


KERNEL_IDLE = """() => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!(k && k.status === 'idle' && w.context.isReady);
}"""


def _idle(page, timeout_ms: int = 90_000) -> None:
    """Wait until the notebook's kernel is idle (every queued update has been drawn)."""
    page.wait_for_timeout(300)      # let the comm message reach the kernel first
    page.wait_for_function(KERNEL_IDLE, timeout=timeout_ms)


def _pyramid_src(page) -> str:
    return page.locator(".fpnlab-explorer img.fpnlab-pyramid").first.get_attribute("src") or ""


def _wait_text(page, stage: str, column: str, expected: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        try:
            got = _cell_text(page, stage, column)
        except Exception:  # the table is being replaced
            got = None
        if got == expected:
            return got
        time.sleep(0.2)
    return got


def test_shape_explorer_in_jupyterlab(tmp_path):
    _need(Path(lab.CHROMIUM).exists() or shutil.which("chromium") is not None,
          "Debian chromium is not installed (apt-get install chromium)")
    _need(importlib.util.find_spec("playwright") is not None,
          "the playwright Python package is not installed (pip install -r requirements.txt)")
    from playwright.sync_api import sync_playwright

    kernel_python = lab.ensure_kernel()
    assert Path(kernel_python).exists(), f"the fpnlab kernel runs {kernel_python}, which is missing"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*"):
        if old.is_file():
            old.unlink()
    executable = lab.CHROMIUM if Path(lab.CHROMIUM).exists() else shutil.which("chromium")

    console, page_errors = [], []
    t0 = time.monotonic()
    with lab.LabServer(tmp_path, log_path=ARTIFACTS / "jupyterlab.log") as server, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=lab.CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        try:
            page.goto(server.url(f"explore/{NOTEBOOK.name}"), wait_until="domcontentloaded",
                      timeout=60_000)
            # the app (exposed with --LabApp.expose_app_in_browser) with the notebook open and
            # its kernel idle: then run every cell
            page.wait_for_function(KERNEL_IDLE, timeout=90_000)
            kernel_name = page.evaluate(
                "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.name")
            assert kernel_name == lab.KERNEL, f"the notebook runs on kernel {kernel_name!r}"
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            explorer = page.locator(".fpnlab-explorer table.fpnlab-shapes")
            explorer.first.wait_for(state="attached", timeout=90_000)
            explorer.first.scroll_into_view_if_needed()
            h0, w0 = reference_shapes()["image"][1:]   # the notebook's sample photo: the trace's input
            assert _wait_text(page, "P7", "engine", _p7(h0, w0)) == _p7(h0, w0)
            assert _cell_text(page, "P7", "model") == _p7(h0, w0)
            page.locator(".fpnlab-explorer img.fpnlab-pyramid").first.wait_for(
                state="visible", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "1-explorer.png"))
            picture = _pyramid_src(page)

            # new height and width: the engine's and the model's P7 follow, the pyramid redraws
            h1, w1 = 600, 1500   # resized 480x1200, padded 480x1216
            _set_int(page, "height", h1)
            _set_int(page, "width", w1)
            expected = _p7(h1, w1)
            assert expected != _p7(h0, w0)
            got = _wait_text(page, "P7", "engine", expected)
            _idle(page)
            page.locator(".fpnlab-explorer").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "2-explorer-600x1500.png"))
            assert got == expected, f"P7 on the page is {got!r}, the shape engine says {expected!r}"
            assert _wait_text(page, "P7", "model", expected) == expected
            assert _cell_text(page, "padded", "engine") == format_shape(
                stage_shapes(h1, w1, REFERENCE)["padded"])
            assert _pyramid_src(page) != picture, "the pyramid was not redrawn"

            # no padding: the top-down addition fails, the explorer says where and why
            page.locator(".fpnlab-explorer .fpnlab-size-divisible select").first.select_option(
                label="0")
            failing = page.locator('.fpnlab-explorer tr[data-stage="P4"][data-status="error"]')
            failing.first.wait_for(state="attached", timeout=60_000)
            why = page.locator(".fpnlab-explorer .fpnlab-error").first.inner_text()
            assert "P4: the top-down addition is impossible" in why, why
            _idle(page)
            page.screenshot(path=str(ARTIFACTS / "3-explorer-no-padding.png"))
            page.locator(".fpnlab-explorer .fpnlab-size-divisible select").first.select_option(
                label="32")
            assert _wait_text(page, "P7", "engine", expected) == expected

            # a bad value shows a message in the widget, not a traceback
            _set_int(page, "height", 10)
            msg = page.locator(".fpnlab-explorer .fpnlab-messages")
            msg.first.wait_for(state="visible", timeout=30_000)
            assert "height must be between 32 and 1600, got 10" in msg.first.inner_text()
            _idle(page)
            page.screenshot(path=str(ARTIFACTS / "4-explorer-bad-height.png"))

            # the other widgets of the notebook rendered too (the last cell finishes last)
            diff = page.locator(".fpnlab-trace-diff .fpnlab-diff-summary")
            diff.first.wait_for(state="attached", timeout=90_000)
            diff.first.scroll_into_view_if_needed()
            assert "First divergence at padded" in diff.first.inner_text()
            page.screenshot(path=str(ARTIFACTS / "5-trace-diff.png"))
            fmaps = page.locator(".fpnlab-feature-maps img")
            fmaps.first.wait_for(state="attached", timeout=30_000)
            fmaps.first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "6-feature-maps.png"))
            errors_in_outputs = page.locator(".jp-OutputArea-output[data-mime-type="
                                             "'application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors_in_outputs.all_inner_texts() if "Traceback" in t]
            assert not tracebacks, f"a cell raised:\n{tracebacks[0][-2000:]}"

            toasts = page.locator(".Toastify__toast").all_inner_texts()
            assert not [t for t in toasts if re.search(r"news|update", t, re.I)], \
                f"a news/update toast is shown: {toasts}"
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"))
            raise
        finally:
            (ARTIFACTS / "console.json").write_text(json.dumps(
                {"console": console, "page_errors": page_errors,
                 "seconds": round(time.monotonic() - t0, 1)}, indent=1))
            browser.close()

    errors = [t for kind, t in console if kind == "error" and not IGNORED_CONSOLE.search(t)]
    widget_errors = [t for t in errors + page_errors
                     if re.search(r"widget|fpnlab|ipywidgets|jupyter-widgets|comm", t, re.I)]
    assert not widget_errors, f"console errors from the widgets: {widget_errors}"
    assert not page_errors, f"uncaught errors in the page: {page_errors}"


def test_missing_browser_skips_on_a_workstation_and_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the browser test must run"):
        _need(False, "Debian chromium is not installed")
    monkeypatch.setenv("CI", "1")                 # what some CI services set
    with pytest.raises(pytest.fail.Exception, match="the browser test must run"):
        _need(False, "Debian chromium is not installed")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="Debian chromium is not installed"):
        _need(False, "Debian chromium is not installed")
    _need(True, "present: nothing happens")


# -- the learner lab -----------------------------------------------------------------------------

LEARNER_ARTIFACTS = ARTIFACTS / "learner"
HAS_BROWSER = ((Path(lab.CHROMIUM).exists() or shutil.which("chromium") is not None)
               and importlib.util.find_spec("playwright") is not None)
NEEDS_BROWSER = requires(HAS_BROWSER, "needs Debian chromium and the playwright package "
                         "(`make system`, pip install -r requirements.txt)")

NOTEBOOK_READY = """(path) => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    return !!(w && w.context && w.context.path === path && w.context.isReady
              && w.content && w.content.widgets && w.content.widgets.length > 0);
}"""


@dataclass
class LearnerLab:
    """A learner lab on a workspace and a Chromium page on it (see :func:`learner_lab`)."""

    server: Any
    page: Any
    workspace: Path
    artifacts: Path
    console: List[tuple] = field(default_factory=list)
    page_errors: List[str] = field(default_factory=list)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"{name}.png"))

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def main_area(self) -> List[str]:
        """The labels of the documents and panels open in the main area."""
        return self.evaluate("() => Array.from(window.jupyterapp.shell.widgets('main'))"
                             ".map(w => w.title.label)")


@contextmanager
def learner_lab(workdir: Path, workspace: Optional[Path] = None,
                artifacts: Path = LEARNER_ARTIFACTS) -> Iterator[LearnerLab]:
    """The lab ``fpnlab lessons`` opens, on ``workspace`` (default ``workdir/workspace``, made
    with :func:`fpnlab.workspace.prepare` when it has no start page), and a headless Chromium page
    at its front door, with the start page open and rendered. On a failure the page is saved as
    ``failure.png``; the console and the server log are kept in ``artifacts``."""
    from playwright.sync_api import sync_playwright

    kernel_python = lab.ensure_kernel()
    assert Path(kernel_python).exists(), f"the fpnlab kernel runs {kernel_python}, which is missing"
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.glob("*"):
        old.unlink()
    executable = lab.CHROMIUM if Path(lab.CHROMIUM).exists() else shutil.which("chromium")
    t0 = time.monotonic()
    with lab.LabServer(workdir, workspace, log_path=artifacts / "jupyterlab.log") as server, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=lab.CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        session = LearnerLab(server, page, server.workspace, artifacts)
        page.on("console", lambda m: session.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: session.page_errors.append(str(e)))
        try:
            page.goto(server.url(), wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_function(NOTEBOOK_READY, arg=learner.START, timeout=90_000)
            page.locator(".jp-RenderedMarkdown a:not(.jp-InternalAnchorLink)").first.wait_for(
                state="visible", timeout=30_000)
            yield session
        except Exception:
            session.shot("failure")
            raise
        finally:
            (artifacts / "console.json").write_text(json.dumps(
                {"console": session.console, "page_errors": session.page_errors,
                 "seconds": round(time.monotonic() - t0, 1)}, indent=1))
            browser.close()


def open_lesson(session: LearnerLab, lesson: str = "01-preprocessing") -> str:
    """Follow the start page's link to ``lesson``: waits until the lesson is the current
    document and its kernel is idle. Returns the lesson's path in the workspace."""
    path = f"lessons/{lesson}/{lesson}.ipynb"
    page = session.page
    page.wait_for_function(NOTEBOOK_READY, arg=learner.START, timeout=30_000)
    name = learner.title(session.workspace / path)
    link = page.locator(".jp-RenderedMarkdown a:not(.jp-InternalAnchorLink)", has_text=name)
    assert link.count() == 1, f"the start page has {link.count()} links named {name!r}"
    link.first.click()
    page.wait_for_function(NOTEBOOK_READY, arg=path, timeout=60_000)
    page.wait_for_function(KERNEL_IDLE, timeout=90_000)
    return path


ON_THE_PAGE = """() => {
    const app = window.jupyterapp;
    const config = JSON.parse(document.getElementById('jupyter-config-data').textContent);
    return {
        disabled: config.disabledExtensions,
        plugins: app.listPlugins().filter(id => id.startsWith('@jupyter/nbgrader')),
        commands: app.commands.listCommands().filter(id => id.startsWith('nbgrader:')),
        runAll: app.commands.hasCommand('notebook:run-all-cells'),
        menus: Array.from(document.querySelectorAll('.lm-MenuBar-itemLabel')).map(e => e.textContent),
        kernelspecs: Object.keys(app.serviceManager.kernelspecs.specs.kernelspecs),
    };
}"""

NEWS_SETTING = """async () => {
    const s = await window.jupyterapp.serviceManager.settings.fetch(
        '@jupyterlab/apputils-extension:notification');
    const props = s.schema.properties;
    return {fetchNews: props.fetchNews.default, checkForUpdates: props.checkForUpdates.default,
            raw: s.raw};
}"""

LAUNCHER_CARDS = """() => Array.from(document.querySelectorAll('.jp-Launcher .jp-LauncherCard'))
    .map(c => [c.getAttribute('data-category'), c.querySelector('.jp-LauncherCard-label').textContent])"""


@pytest.mark.slow
@NEEDS_BROWSER
def test_learner_lab_starts_on_the_start_page_with_the_course_only(tmp_path):
    with learner_lab(tmp_path) as session:
        page, server = session.page, session.server
        assert page.url.startswith(f"{server.base}/lab/tree/{learner.START}"), page.url
        page.evaluate("() => window.jupyterapp.restored")
        assert session.main_area() == [learner.START], "the lab opened more than the start page"
        session.shot("1-start")

        seen = session.evaluate(ON_THE_PAGE)
        assert "@jupyter/nbgrader" in seen["disabled"], seen["disabled"]
        assert seen["plugins"] == [] and seen["commands"] == [], seen
        assert seen["runAll"], "the check for commands saw none of JupyterLab's own"
        assert "File" in seen["menus"] and "Nbgrader" not in seen["menus"], seen["menus"]
        assert page.locator("text=Create Assignment").count() == 0
        assert page.locator('[title*="Create Assignment"], [title*="Nbgrader"]').count() == 0
        assert seen["kernelspecs"] == [learner.KERNEL], seen["kernelspecs"]
        for url in ("/formgrader", "/formgraders"):   # nbgrader's server extensions: not loaded
            status = page.request.get(f"{server.base}{url}?token={server.token}").status
            assert status == 404, f"{url} answers {status}: an nbgrader server extension is on"
        listing = page.request.get(f"{server.base}/api/contents?token={server.token}").json()
        assert {c["name"] for c in listing["content"]} == {learner.START, "lessons", "explore"}

        news = session.evaluate(NEWS_SETTING)
        assert news["fetchNews"] == "false" and news["checkForUpdates"] is False, news
        page.wait_for_timeout(3000)        # the news question comes a moment after the start
        toasts = page.locator(".Toastify__toast").all_inner_texts()
        assert toasts == [], f"a notification is shown: {toasts}"

        page.evaluate("() => window.jupyterapp.commands.execute('launcher:create')")
        page.locator(".jp-Launcher .jp-LauncherCard").first.wait_for(state="visible")
        cards = session.evaluate(LAUNCHER_CARDS)
        session.shot("2-launcher")
        kernels = {category: [label for c, label in cards if c == category]
                   for category in ("Notebook", "Console")}
        assert kernels == {"Notebook": ["Python 3 (fpnlab)"], "Console": ["Python 3 (fpnlab)"]}, cards
        page.evaluate("() => window.jupyterapp.commands.execute('application:close')")
        page.wait_for_function("() => !document.querySelector('.jp-Launcher')")

        path = open_lesson(session, "01-preprocessing")
        kernel = session.evaluate(
            "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.name")
        assert kernel == learner.KERNEL, f"lesson 01 runs on kernel {kernel!r}"
        session.shot("3-lesson-01")
        assert session.main_area() == [learner.START, Path(path).name]
        assert page.locator(".Toastify__toast").all_inner_texts() == []
    assert not session.page_errors, f"uncaught errors in the page: {session.page_errors}"
