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


# The notebook at ``path`` is open and ITS OWN kernel is attached and idle. Running its cells
# any earlier is what opened the modal 'Select Kernel' dialog (issue #16): from the moment a
# notebook shows its cells until JupyterLab has read its kernelspec (after a checkpoint request),
# the session has no kernel preference, so a cell run finds no kernel to start and asks. Waiting
# for "the current widget's kernel is idle" is not enough either: the current widget can be
# another document (the start page, a tab restored by the workspace).
NOTEBOOK_KERNEL_READY = """(path) => {
    const app = window.jupyterapp;
    if (!app) return false;
    const w = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === path);
    const s = w && w.sessionContext;
    const k = s && s.session && s.session.kernel;
    return !!(w && w.context.isReady && s.isReady && !s.hasNoKernel && s.kernelPreference.name
              && k && k.status === 'idle' && k.connectionStatus === 'connected'
              && app.shell.currentWidget === w);
}"""

# Every dialog the page shows, from its first paint on (an init script of the browser context).
DIALOG_WATCH = """(() => {
    window.__fpnlabDialogs = [];
    const seen = new WeakSet();
    const look = () => document.querySelectorAll('.jp-Dialog').forEach(d => {
        if (seen.has(d)) return;
        seen.add(d);
        window.__fpnlabDialogs.push((d.innerText || '').slice(0, 200));
    });
    const start = () => new MutationObserver(look).observe(document.body,
                                                           {childList: true, subtree: true});
    if (document.body) start(); else document.addEventListener('DOMContentLoaded', start);
})();"""

# Timestamps (performance.now(), ms) of the inputs and of what the explorer shows: the image and
# resized rows of the table and the picture's caption after every change of the widget's DOM, and
# each load of a new picture (the caption is set before the picture: at a load it names it).
TIMING_PROBE = """() => {
    const root = document.querySelector('.fpnlab-explorer');
    const log = window.__fpnlabLog = [];
    const cell = stage => {
        const td = root.querySelector(`tr[data-stage="${stage}"] td.fpnlab-engine`);
        return td ? td.textContent.trim() : '';
    };
    const state = () => {
        const caption = root.querySelector('.fpnlab-pyramid-caption');
        return [cell('image') + ' ' + cell('resized'),
                caption ? caption.textContent.trim() : null];
    };
    new MutationObserver(() => log.push(['dom', performance.now(), ...state()])).observe(
        root, {childList: true, subtree: true, characterData: true});
    root.addEventListener('load', e => {
        if (e.target.classList && e.target.classList.contains('fpnlab-pyramid'))
            log.push(['load', performance.now(), ...state()]);
    }, true);
    for (const type of ['keydown', 'pointermove'])
        document.addEventListener(type, () => log.push(['input', performance.now()]), true);
    return true;
}"""


def _run_all(page) -> None:
    """Run every cell; not awaited, so a modal dialog cannot hang the test."""
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def _dialogs(page) -> List[str]:
    return page.evaluate("() => window.__fpnlabDialogs || []")


def _explorer_change(page, what: str, act, size, config=REFERENCE,
                     timeout: float = 30.0) -> dict:
    """Do ``act`` (one input) and time it: input -> the table's image and resized rows show
    ``size``, and input -> a picture captioned for ``size`` has loaded (the last input before the
    table showed it: for a drag, the last move). ``size`` None: the sliders say."""
    from fpnlab import widgets

    page.evaluate("() => { window.__fpnlabLog.length = 0; }")
    act()
    if size is None:        # where the sliders are now, on the page
        size = tuple(int(float(page.locator(f".fpnlab-explorer .fpnlab-{n}-slider .noUi-handle")
                               .first.get_attribute("aria-valuenow"))) for n in ("height", "width"))
    res = widgets.explore(*size, min_size=config.min_size, max_size=config.max_size)
    row = f'{format_shape(res.shapes["image"])} {format_shape(res.shapes["resized"])}'
    caption = widgets.picture_label(res)
    deadline = time.monotonic() + timeout
    t_table = t_picture = None
    log: list = []
    while time.monotonic() < deadline and (t_table is None or t_picture is None):
        time.sleep(0.1)
        log = page.evaluate("() => window.__fpnlabLog.slice()")
        first = next((e[1] for e in log if e[0] == "input"), None)
        if first is None:
            continue
        t_table = next((e[1] for e in log if e[0] == "dom" and e[1] >= first and e[2] == row),
                       None)
        t_picture = next((e[1] for e in log if e[0] == "load" and e[1] >= first
                          and e[3] == caption), None)
    inputs = [e[1] for e in log if e[0] == "input" and (t_table is None or e[1] <= t_table)]
    assert inputs, f"{what}: no input event recorded"
    assert t_table is not None, f"{what}: the table never showed {row} ({size})"
    assert t_picture is not None, f"{what}: no picture captioned {caption!r} arrived"
    t_in = inputs[-1]
    return {"change": what, "size": list(size), "min_size": config.min_size,
            "max_size": config.max_size, "input_to_table_s": round((t_table - t_in) / 1000, 4),
            "input_to_picture_s": round((t_picture - t_in) / 1000, 4)}


def _drag(page, name: str, dx: float, steps: int = 8) -> None:
    handle = page.locator(f".fpnlab-explorer .fpnlab-{name}-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, steps + 1):
        page.mouse.move(x + dx * i / steps, y)
        page.wait_for_timeout(25)
    page.mouse.up()


def _key(page, name: str, key: str) -> None:
    page.locator(f".fpnlab-explorer .fpnlab-{name}-slider .noUi-handle").first.press(key)


def _time_the_explorer(page, h0: int, w0: int) -> List[dict]:
    """Input -> table and input -> picture for slider steps, drags and number boxes, at the
    trace's size and at 1333x1333 (with the reference resize, then with min_size 1333)."""
    big = REFERENCE.max_size      # the longest side the resize keeps
    page.evaluate(TIMING_PROBE)
    changes = []
    for i in range(3):
        changes.append(_explorer_change(page, "height slider, arrow key",
                                        lambda: _key(page, "height", "ArrowRight"),
                                        (h0 + i + 1, w0)))
    for dx in (40, -25):
        changes.append(_explorer_change(page, "width slider, drag",
                                        lambda: _drag(page, "width", dx), None))
    changes.append(_explorer_change(page, "height box, Enter",
                                    lambda: _set_int(page, "height", big), None))
    changes.append(_explorer_change(page, "width box, Enter",
                                    lambda: _set_int(page, "width", big), (big, big)))
    for key in ("PageUp", "PageDown"):
        changes.append(_explorer_change(page, f"height slider at {big}x{big}, {key}",
                                        lambda: _key(page, "height", key), None))
    changes.append(_explorer_change(page, f"width slider at {big}x{big}, drag",
                                    lambda: _drag(page, "width", -30), None))
    resized_big = REFERENCE.with_(min_size=big)
    _set_int(page, "width", big)
    _set_int(page, "height", big)
    changes.append(_explorer_change(page, f"min_size box {big} (resized {big}x{big})",
                                    lambda: _set_int(page, "min-size", big), (big, big),
                                    resized_big))
    changes.append(_explorer_change(page, f"width slider, drag, resized to {big}",
                                    lambda: _drag(page, "width", -30), None, resized_big))
    _set_int(page, "min-size", REFERENCE.min_size)
    return changes


DRAWINGS = {   # lesson -> the call its drawing cell makes (fpnlab.plots' defaults)
    "01-preprocessing": 'pyramid_image(h, w, image=sample_image(), levels=())',
    "04-fpn": 'pyramid_image(h, w, image=sample_image(), levels=("P3", "P4", "P5"))',
}


def _lesson_drawings(page, workspace: Path) -> dict:
    """Lessons 01's and 04's drawings as the lab shows them (their cells' own calls, in a scratch
    notebook of the workspace): a screenshot of each, and its drawn and shown widths."""
    import nbformat

    cells = [nbformat.v4.new_code_cell(
        "from fpnlab.images import sample_image\nfrom fpnlab.plots import pyramid_image\n"
        "from fpnlab.reference import reference_shapes\n_, h, w = reference_shapes()['image']")]
    cells += [nbformat.v4.new_code_cell(call) for call in DRAWINGS.values()]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": lab.KERNEL, "display_name": "Python 3 (fpnlab)",
                       "language": "python"}})
    path = "drawings.ipynb"
    nbformat.write(nb, str(workspace / path))
    page.evaluate(f"() => {{ window.jupyterapp.commands.execute('docmanager:open', "
                  f"{{path: '{path}'}}); }}")
    page.wait_for_function(NOTEBOOK_KERNEL_READY, arg=path, timeout=90_000)
    _run_all(page)
    out = {}
    images = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img")
    images.nth(len(DRAWINGS) - 1).wait_for(state="visible", timeout=60_000)
    for i, lesson in enumerate(DRAWINGS):
        img = images.nth(i)
        img.scroll_into_view_if_needed()
        img.screenshot(path=str(ARTIFACTS / f"lesson-{lesson}-drawing.png"))
        out[lesson] = img.evaluate("e => ({drawn_px: [e.naturalWidth, e.naturalHeight], "
                                   "shown_px: [e.clientWidth, e.clientHeight]})")
        assert out[lesson]["drawn_px"][0] > 0, f"lesson {lesson}'s drawing did not load"
    return out


def _reopen_explorer(context, server, page, i: int):
    """Open the explorer again as a learner would, four ways in turn: a new page on its URL
    (kernel kept), the tab closed and opened again from the lab (kernel shut down first: a
    fresh kernel starts), a new page after every kernel is shut down, the tab reopened with its
    kernel kept. Returns the page and how."""
    path = f"explore/{NOTEBOOK.name}"
    how = ("new page, kernel kept", "tab reopened, fresh kernel", "new page, fresh kernel",
           "tab reopened, kernel kept")[i % 4]
    fresh = "fresh kernel" in how
    if how.startswith("new page"):
        if fresh:
            page.evaluate("() => window.jupyterapp.serviceManager.sessions.shutdownAll()")
        page.close()
        page = context.new_page()
        page.goto(server.url(path), wait_until="domcontentloaded", timeout=60_000)
    else:
        page.evaluate("""async ([path, shut]) => {
            const app = window.jupyterapp;
            for (const w of Array.from(app.shell.widgets('main'))) {
                if (!w.context || w.context.path !== path) continue;
                if (shut) await w.sessionContext.shutdown();
                w.context.model.dirty = false;     // no 'Save your work?' question
                w.close();
            }
            app.commands.execute('docmanager:open', {path});
        }""", [path, fresh])
    return page, how


def test_shape_explorer_in_jupyterlab(tmp_path):
    """The explorer in the learner lab: every cell runs on the ``fpnlab`` kernel, the table and
    the picture follow the sliders, the number boxes and the other controls as the shape engine
    says; the time from an input to the updated table and to the redrawn picture is recorded
    (``explorer-timings.json``, medians by ``python -m bench --only widgets``; measured, not
    asserted); lessons 01's and 04's drawings are screenshot as the lab shows them; and the
    explorer, opened again four times, runs all its cells without a 'Select Kernel' dialog."""
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
    path = f"explore/{NOTEBOOK.name}"

    from fpnlab import widgets

    console, page_errors = [], []
    record: dict = {"cpus": os.cpu_count(), "load_average_before": list(os.getloadavg()),
                    "settle_s": widgets.SETTLE_S}
    t0 = time.monotonic()
    with lab.LabServer(tmp_path, log_path=ARTIFACTS / "jupyterlab.log") as server, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=lab.CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_init_script(DIALOG_WATCH)
        context.on("console", lambda m: console.append((m.type, m.text)))
        context.on("weberror", lambda e: page_errors.append(str(e.error)))
        page = context.new_page()
        try:
            page.goto(server.url(path), wait_until="domcontentloaded", timeout=60_000)
            # the app (exposed with --LabApp.expose_app_in_browser) with the explorer open and
            # its own kernel attached and idle: then run every cell
            page.wait_for_function(NOTEBOOK_KERNEL_READY, arg=path, timeout=90_000)
            kernel_name = page.evaluate(
                "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.name")
            assert kernel_name == lab.KERNEL, f"the notebook runs on kernel {kernel_name!r}"
            _run_all(page)

            explorer = page.locator(".fpnlab-explorer table.fpnlab-shapes")
            explorer.first.wait_for(state="attached", timeout=90_000)
            explorer.first.scroll_into_view_if_needed()
            h0, w0 = reference_shapes()["image"][1:]   # the notebook's sample photo: the trace's input
            assert _wait_text(page, "P7", "engine", _p7(h0, w0)) == _p7(h0, w0)
            assert _cell_text(page, "P7", "model") == _p7(h0, w0)
            page.locator(".fpnlab-explorer img.fpnlab-pyramid").first.wait_for(
                state="visible", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "1-explorer.png"))

            # the other widgets of the notebook rendered too (the last cell finishes last)
            diff = page.locator(".fpnlab-trace-diff .fpnlab-diff-summary")
            diff.first.wait_for(state="attached", timeout=90_000)
            assert "First divergence at padded" in diff.first.inner_text()
            fmaps = page.locator(".fpnlab-feature-maps img")
            fmaps.first.wait_for(state="attached", timeout=30_000)
            fmaps.first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "6-feature-maps.png"))
            diff.first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "5-trace-diff.png"))
            _idle(page)

            # input -> table, input -> picture, with nothing else running in the kernel
            page.locator(".fpnlab-explorer").first.scroll_into_view_if_needed()
            changes = _time_the_explorer(page, h0, w0)
            record["changes"] = changes
            from statistics import median
            for key in ("input_to_table_s", "input_to_picture_s"):
                record[f"median_{key}"] = median(c[key] for c in changes)
            page.screenshot(path=str(ARTIFACTS / "2-explorer-timed.png"))

            # new height and width: the engine's and the model's P7 follow, the pyramid redraws
            picture = _pyramid_src(page)
            h1, w1 = 600, 1500   # resized 480x1200, padded 480x1216
            _set_int(page, "height", h1)
            _set_int(page, "width", w1)
            expected = _p7(h1, w1)
            assert expected != _p7(h0, w0)
            got = _wait_text(page, "P7", "engine", expected)
            _idle(page)
            page.locator(".fpnlab-explorer").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "3-explorer-600x1500.png"))
            assert got == expected, f"P7 on the page is {got!r}, the shape engine says {expected!r}"
            assert _wait_text(page, "P7", "model", expected) == expected
            assert _cell_text(page, "padded", "engine") == format_shape(
                stage_shapes(h1, w1, REFERENCE)["padded"])
            assert page.locator(".fpnlab-explorer .fpnlab-height-slider .noUi-handle").first \
                .get_attribute("aria-valuenow").startswith(str(h1)), "the slider did not follow"
            deadline = time.monotonic() + 30
            while _pyramid_src(page) == picture and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _pyramid_src(page) != picture, "the pyramid was not redrawn"

            # no padding: the top-down addition fails, the explorer says where and why
            page.locator(".fpnlab-explorer .fpnlab-size-divisible select").first.select_option(
                label="0")
            failing = page.locator('.fpnlab-explorer tr[data-stage="P4"][data-status="error"]')
            failing.first.wait_for(state="attached", timeout=60_000)
            why = page.locator(".fpnlab-explorer .fpnlab-error").first.inner_text()
            assert "P4: the top-down addition is impossible" in why, why
            _idle(page)
            page.screenshot(path=str(ARTIFACTS / "4-explorer-no-padding.png"))
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

            errors_in_outputs = page.locator(".jp-OutputArea-output[data-mime-type="
                                             "'application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors_in_outputs.all_inner_texts() if "Traceback" in t]
            assert not tracebacks, f"a cell raised:\n{tracebacks[0][-2000:]}"
            toasts = page.locator(".Toastify__toast").all_inner_texts()
            assert not [t for t in toasts if re.search(r"news|update", t, re.I)], \
                f"a news/update toast is shown: {toasts}"

            # lessons 01's and 04's drawings, as the lab shows them
            record["drawings"] = _lesson_drawings(page, server.workspace)

            # open the explorer again, four ways: its cells run, no 'Select Kernel' dialog
            record["reopen"] = []
            assert _dialogs(page) == [], f"a dialog was shown: {_dialogs(page)}"
            for i in range(4):
                start = time.monotonic()
                page, how = _reopen_explorer(context, server, page, i)
                page.wait_for_function(NOTEBOOK_KERNEL_READY, arg=path, timeout=90_000)
                ready = time.monotonic() - start
                _run_all(page)
                assert _wait_text(page, "P7", "engine", _p7(h0, w0)) == _p7(h0, w0), how
                shown = _dialogs(page)
                record["reopen"].append({"how": how, "kernel_ready_s": round(ready, 2),
                                         "dialogs": shown})
                page.screenshot(path=str(ARTIFACTS / f"7-reopened-{i + 1}.png"))
                assert shown == [], f"reopened ({how}): a dialog was shown: {shown}"
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"))
            raise
        finally:
            record["seconds"] = round(time.monotonic() - t0, 1)
            record["load_average_after"] = list(os.getloadavg())
            (ARTIFACTS / "explorer-timings.json").write_text(json.dumps(record, indent=1))
            (ARTIFACTS / "console.json").write_text(json.dumps(
                {"console": console, "page_errors": page_errors,
                 "seconds": round(time.monotonic() - t0, 1)}, indent=1))
            browser.close()

    errors = [t for kind, t in console if kind == "error" and not IGNORED_CONSOLE.search(t)]
    widget_errors = [t for t in errors + page_errors
                     if re.search(r"widget|fpnlab|ipywidgets|jupyter-widgets|comm|setting state",
                                  t, re.I)]
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
