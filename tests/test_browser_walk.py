"""A learner's first minutes, in the learner lab in headless Chromium: the start page, lesson 01,
a test run before answering (one line that says so), the answer, the test again (it passes),
and `fpnlab lessons --reset 01` (the release back, the answer kept as a backup)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fpnlab import workspace as learner
from test_browser import KERNEL_IDLE, NEEDS_BROWSER, NOTEBOOK_KERNEL_READY, learner_lab, open_lesson

ROOT = Path(__file__).resolve().parent.parent
LESSON = "01-preprocessing"
ARTIFACTS = ROOT / "test-artifacts" / "browser" / "walk"
EXERCISE, TEST = "resized-size", "resize-trace"     # the lesson's first exercise and its test

# The notebook's cells as the lab holds them: index, grade id, source, outputs (as saved).
CELLS = """() => {
    const nb = window.jupyterapp.shell.currentWidget.content;
    return nb.widgets.map((cell, i) => {
        const meta = cell.model.getMetadata('nbgrader') || {};
        const outputs = cell.model.type === 'code' ? cell.model.outputs.toJSON() : [];
        return {index: i, grade_id: meta.grade_id || null, source: cell.model.sharedModel.getSource(),
                outputs: outputs, shown: cell.node.querySelector('.jp-OutputArea') ?
                    cell.node.querySelector('.jp-OutputArea').innerText : ''};
    });
}"""

RUN_CELL = """async (index) => {
    const app = window.jupyterapp, nb = app.shell.currentWidget.content;
    nb.activeCellIndex = index;
    await app.commands.execute('notebook:run-cell');
}"""

SHOW = """(index) => {
    const cell = window.jupyterapp.shell.currentWidget.content.widgets[index];
    cell.node.scrollIntoView({block: 'center'});
}"""

SET_SOURCE = """([index, text]) => {
    window.jupyterapp.shell.currentWidget.content.widgets[index].model.sharedModel.setSource(text);
}"""


def _cell(cells, grade_id):
    return next(c for c in cells if c["grade_id"] == grade_id)


def _errors(cell):
    return [o for o in cell["outputs"] if o.get("output_type") == "error"]


@pytest.mark.slow
@pytest.mark.browser
@NEEDS_BROWSER
def test_a_learner_runs_a_test_answers_passes_and_resets(tmp_path):
    solution = nbformat.read(str(ROOT / "solutions" / LESSON / f"{LESSON}.ipynb"), as_version=4)
    answer = next(c.source for c in solution.cells
                  if c.metadata.get("nbgrader", {}).get("grade_id") == EXERCISE)
    with learner_lab(tmp_path, artifacts=ARTIFACTS) as session:
        page = session.page
        path = open_lesson(session, LESSON)
        # the lesson's own kernel attached and idle (Run All before that would find no kernel)
        page.wait_for_function(NOTEBOOK_KERNEL_READY, arg=path, timeout=90_000)
        # Run All: it stops at the first test, whose exercise is not answered yet.
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_function(KERNEL_IDLE, timeout=180_000)
        page.wait_for_function(
            "(gid) => { const nb = window.jupyterapp.shell.currentWidget.content;"
            " return nb.widgets.some(c => (c.model.getMetadata('nbgrader') || {}).grade_id === gid"
            " && c.model.outputs && c.model.outputs.length > 0); }", arg=TEST, timeout=180_000)
        cells = session.evaluate(CELLS)
        test = _cell(cells, TEST)
        (error,) = _errors(test)
        shown = test["shown"].strip()
        page.evaluate(SHOW, test["index"])
        page.wait_for_timeout(300)
        session.shot("1-unanswered")
        assert "not answered yet" in shown and "\n" not in shown, shown
        assert "Traceback" not in shown and "fpnlab/" not in shown, shown
        assert error["ename"] == "NotAnswered" or "NotImplementedError" in error["ename"], error

        # The answer, typed into its cell (as a learner pastes it), run, then the test again.
        exercise = _cell(cells, EXERCISE)
        page.evaluate(SET_SOURCE, [exercise["index"], answer])
        page.evaluate(RUN_CELL, exercise["index"])
        page.wait_for_function(KERNEL_IDLE, timeout=60_000)
        page.evaluate(RUN_CELL, test["index"])
        page.wait_for_function(KERNEL_IDLE, timeout=120_000)
        page.wait_for_timeout(500)
        test = _cell(session.evaluate(CELLS), TEST)
        page.evaluate(SHOW, test["index"])
        page.wait_for_timeout(300)
        session.shot("2-answered")
        assert _errors(test) == [], test["shown"]
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty",
                               timeout=30_000)
        saved = session.workspace / path
        assert any(c.source == answer for c in nbformat.read(str(saved), as_version=4).cells)

        # Reset: the release comes back, the answer is kept as a backup.
        reset = subprocess.run([sys.executable, "-m", "fpnlab.cli", "lessons", "--reset", "01",
                                str(session.workspace)], capture_output=True, text=True, timeout=60)
        assert reset.returncode == 0, reset.stderr
        backups = list(saved.parent.glob("backups/*.ipynb"))
        assert len(backups) == 1 and str(backups[0].relative_to(session.workspace)) in reset.stdout
        kept = nbformat.read(str(backups[0]), as_version=4)
        assert any(c.source == answer for c in kept.cells)
        released = (learner.release_root() / "lessons" / LESSON / f"{LESSON}.ipynb").read_text()
        assert nbformat.reads(saved.read_text(), 4).cells == nbformat.reads(released, 4).cells
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:reload')")
        page.wait_for_timeout(1000)
        exercise = _cell(session.evaluate(CELLS), EXERCISE)
        session.shot("3-reset")
        assert "raise NotImplementedError()" in exercise["source"], exercise["source"]
    assert not session.page_errors, session.page_errors
