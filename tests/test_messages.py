"""What a learner reads in their own kernel: a failing check is its message alone, an unanswered
exercise says so in one line, and a lesson's last cell adds up the visible tests' points.

The fast tests play the notebook here (``run_test`` in local mode, cells compiled under names
that are not files, as IPython names them); the slow ones run the released lesson 01 with
nbclient on the ``fpnlab`` kernel, blank, with one wrong answer and with the solution's answers.
"""
from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import nbformat
import pytest
import torch

from autograder import authoring as A
from fpnlab import judge as J
from fpnlab import selfcheck
from fpnlab.checks import CheckError, check_close, check_shape, diagnose
from fpnlab.judge import NotAnswered, error_text, run_test, summary, unanswered
from fpnlab.reference import reference_shapes

ROOT = Path(__file__).resolve().parent.parent
LESSON = "01-preprocessing"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(autouse=True)
def fresh_records():
    J._results.clear()
    yield
    J._results.clear()
    J.local()


def cell(source: str, n: int = 1) -> dict:
    """Run ``source`` as IPython runs a cell: compiled under a name that is no file."""
    ns: dict = {"run_test": run_test}
    exec(compile(source, f"<ipython-input-{n}>", "exec"), ns)
    return ns


STUB = '''
def resized_size(height, width):
    """(H, W) after the resize."""
    # YOUR CODE HERE
    raise NotImplementedError()


class FrozenBatchNorm2d:
    def __init__(self, n):
        # YOUR CODE HERE
        raise NotImplementedError()
'''


def raised(fn, *args, **kwargs) -> BaseException:
    try:
        fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("nothing was raised")


def no_repetition(text: str, span: int = 30) -> bool:
    """No run of ``span`` characters (whitespace folded) occurs twice in ``text``."""
    flat = " ".join(text.split())
    return all(flat.count(flat[i:i + span]) == 1 for i in range(len(flat) - span))


def words(text: str) -> list:
    return text.split()


# ----------------------------------------------------------------------------- messages

def test_a_failing_check_renders_as_its_message_wrapped_between_words():
    x = torch.randn(1, 4, 5, 6)
    e = raised(check_close, x + 1, x, "normalised image",
               cause="are the channels reversed (BGR), scaled to 0..255 and is PIXEL_MEAN "
                     "subtracted in BGR order?")
    lines = e._render_traceback_()
    assert lines == error_text("CheckError", str(e)).splitlines()
    assert lines[0].startswith("CheckError: normalised image: values differ from the oracle")
    assert len(lines) > 2 and all(len(line) <= J.WIDTH for line in lines)
    assert words("\n".join(lines)) == words(f"CheckError: {e}")      # nothing cut, nothing added
    assert lines[1].startswith("    ") and not lines[1].startswith("     ")  # the head's continuation
    assert any(line.startswith("  are the channels") for line in lines)        # the cause, indented
    assert not any("fpnlab/" in line or "Traceback" in line for line in lines)


def test_a_word_longer_than_a_line_stays_whole():
    long = "x" * 120
    text = error_text("CheckError", f"stage: got {long} but expected y.")
    assert long in text.split()


def _off(shape, dh=0, dw=0, h=None):
    """``shape`` (N, C, H, W) with H and W moved: by ``dh`` / ``dw``, or H set to ``h``."""
    n, c, height, width = shape
    return (n, c, height + dh if h is None else h, width + dw)


def test_the_same_cause_of_both_sides_is_said_once():
    ref = reference_shapes()
    stem, c4, c3 = ref["stem"], ref["C4"], ref["C3"]
    msg = diagnose("stem", stem, _off(stem, -1, -1))
    assert msg.count("is the input padded") == 1 and "H and W are off by one" in msg
    assert f"{stem[2] - 1} x {stem[3] - 1} instead of {stem[2]} x {stem[3]}" in msg
    e = raised(check_shape, torch.zeros(_off(stem, -1, -1)), "stem", stem)
    assert no_repetition(str(e))
    # different causes stay apart, one each
    both = diagnose("C4", c4, _off(c4, dw=1, h=c4[2] // 2))
    assert "H is halved once too often" in both and "W is off by one" in both
    assert diagnose("C3", c3, _off(c3, dw=-1)).startswith("W is off by one at C3")


def test_the_stub_of_a_function_a_method_and_a_cell_is_not_answered():
    ns = cell(STUB)
    e = unanswered(raised(ns["resized_size"], 1, 2))
    assert isinstance(e, NotAnswered) and isinstance(e, NotImplementedError)
    assert str(e) == ("`resized_size` is not answered yet: write it in its cell (replace "
                      "`raise NotImplementedError()`), run that cell, then this one.")
    assert e._render_traceback_() == [str(e)]
    assert "`FrozenBatchNorm2d.__init__` is not answered yet" in str(
        unanswered(raised(ns["FrozenBatchNorm2d"], 3)))
    top = unanswered(raised(cell, "answer = 1\n# YOUR CODE HERE\nraise NotImplementedError()"))
    assert str(top).startswith("This exercise is not answered yet: write your answer in this cell")


def test_other_not_implemented_errors_are_left_alone():
    def library():                       # code in a file on disk, as a library's is
        raise NotImplementedError()

    assert unanswered(raised(library)) is None
    assert unanswered(raised(cell, "raise NotImplementedError('the meta backend')")) is None
    assert unanswered(raised(cell, "raise ValueError()")) is None
    assert unanswered(NotImplementedError()) is None            # never raised: no traceback


def test_fpnlab_check_words_a_failure_as_the_notebook_shows_it():
    e = NotAnswered("`resized_size` is not answered yet: write it in its cell, run that cell.")
    assert error_text("NotAnswered", str(e)) == "\n".join(e._render_traceback_())
    x = torch.zeros(3)
    check = raised(check_close, x + 1, x, "padded")
    assert error_text(type(check).__name__, str(check)) == "\n".join(check._render_traceback_())
    handover = J.HandOverError("a tensor of more than 16 MB")
    assert handover._render_traceback_() == ["HandOverError: a tensor of more than 16 MB"]


# ----------------------------------------------------------------------------- run_test and summary

TESTS = '''
def outputs(case):
    return resized_size(4, 6)

def judge(case, got):
    if got != (4, 6):
        raise CheckError("resized", "size", (4, 6), got)

run_test(outputs, judge, grade_id="resize")
'''


def test_run_test_says_not_answered_and_records_the_visible_cells(capsys):
    ns = cell(STUB)
    ns["CheckError"] = CheckError
    e = raised(exec, compile(TESTS, "<ipython-input-2>", "exec"), ns)
    assert type(e) is NotAnswered and "`resized_size` is not answered yet" in str(e)
    assert e.__cause__ is None and e.__suppress_context__            # no chained traceback
    summary({"resize": 2, "values": 1})
    out = capsys.readouterr().out
    assert "FAIL  resize" in out and "not run yet" in out
    assert "      `resized_size` is not answered yet.\n" in out         # the summary: what, not how
    assert "0 of 2 visible tests pass: 0 of 3 points" in out

    exec(compile("def resized_size(h, w):\n    return (h, w + 1)", "<ipython-input-3>", "exec"), ns)
    e = raised(exec, compile(TESTS, "<ipython-input-4>", "exec"), ns)
    assert type(e) is CheckError
    exec(compile("def resized_size(h, w):\n    return (h, w)", "<ipython-input-5>", "exec"), ns)
    exec(compile(TESTS, "<ipython-input-6>", "exec"), ns)
    # hidden cases are neither counted nor named
    exec(compile(TESTS.replace('grade_id="resize"', 'grade_id="values", hidden=True'),
                 "<ipython-input-7>", "exec"), ns)
    summary({"resize": 2, "values": 1})
    out = capsys.readouterr().out
    assert re.search(r"PASS  resize +2/2", out) and "FAIL  values" in out and "not run yet" in out
    assert "1 of 2 visible tests pass: 2 of 3 points" in out


def test_summary_matches_the_fpnlab_check_report():
    J._record("a", None)
    J._record("b", CheckError("padded", "shape", (1, 3, 4), (1, 3, 5)))
    shown, reported = io.StringIO(), io.StringIO()
    summary({"a": 1, "b": 2}, out=shown)
    selfcheck.report([selfcheck.Outcome("a", 1, True, ""),
                      selfcheck.Outcome("b", 2, False, "CheckError: padded: shape (1, 3, 5) but "
                                                       "expected (1, 3, 4).")], out=reported)
    assert shown.getvalue() == reported.getvalue()


def test_summary_says_nothing_when_graded(capsys):
    J.grading("resize")
    summary({"resize": 2})
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- the notebooks

def _notebooks(folder):
    return sorted((ROOT / folder).glob("*/*.ipynb"))


@pytest.mark.parametrize("path", _notebooks("solutions"), ids=lambda p: p.stem)
def test_every_lesson_names_its_test_cells_and_ends_with_its_summary(path):
    nb = nbformat.read(str(path), as_version=4)
    assert nb.cells[0].source == A.SETUP_SOURCE, f"{path}: the setup cell is not setup_cell()'s"
    visible = A.visible_tests(nb)
    assert visible, path
    for c in nb.cells:
        meta = c.metadata.get("nbgrader", {})
        if c.cell_type != "code" or not meta.get("grade"):
            continue
        calls = [n for n in ast.walk(ast.parse(A.HIDDEN.sub("", c.source)))
                 if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "run_test"]
        ids = [next((k.value.value for k in n.keywords if k.arg == "grade_id"), None) for n in calls]
        assert ids == [meta["grade_id"]] * len(calls), (
            f"{path.name}, {meta['grade_id']}: each visible run_test call names its cell "
            f"(run_test(..., grade_id={meta['grade_id']!r})), found {ids}")
    last = nb.cells[-1]
    assert last.source == A.summary_cell(nb).source, (
        f"{path.name}: the last cell is not autograder.authoring.summary_cell(nb)'s")
    meta = last.metadata["nbgrader"]
    assert meta["locked"] and not meta["grade"] and not meta["solution"]


# ----------------------------------------------------------------------------- a real kernel

def _release() -> nbformat.NotebookNode:
    return nbformat.read(str(next((ROOT / "lessons" / LESSON).glob("*.ipynb"))), as_version=4)


def _answers() -> dict:
    sol = nbformat.read(str(next((ROOT / "solutions" / LESSON).glob("*.ipynb"))), as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in sol.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def _execute(nb) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(nb, kernel_name="fpnlab", timeout=300, allow_errors=True,
                   resources={"metadata": {"path": str(ROOT / "lessons" / LESSON)}}).execute()
    return nb


def _answered(**wrong) -> nbformat.NotebookNode:
    nb, answers = _release(), {**_answers(), **wrong}
    for c in nb.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            c.source = answers[gid]
    return nb


def _meta(c) -> dict:
    return c.metadata.get("nbgrader", {})


def _errors(c) -> list:
    return [o for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _text(error) -> str:
    return ANSI.sub("", "\n".join(error["traceback"]))


def _stdout(c) -> str:
    return "".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream")


def _total(nb) -> int:
    return int(sum(p for _, p in A.visible_tests(nb)))


@pytest.fixture(scope="module")
def blank():
    return _execute(_release())


@pytest.mark.slow
def test_unanswered_test_cells_say_so_in_one_line(blank):
    exercise = None
    tests = [c for c in blank.cells if _meta(c).get("grade")]
    assert tests
    for c in blank.cells:
        if _meta(c).get("solution"):
            exercise = re.search(r"^(?:def|class) (\w+)", c.source, re.M).group(1)
        if not _meta(c).get("grade"):
            continue
        (error,) = _errors(c)
        text = _text(error)
        assert "\n" not in text.strip(), f"{_meta(c)['grade_id']}: {text!r}"
        assert "not answered yet" in text and f"`{exercise}`" in text, text
        assert "fpnlab/" not in text and error["ename"] == "NotAnswered"
    last = _stdout(blank.cells[-1])
    assert f"0 of {_total(blank)} points" in last and "hidden" not in last.replace(
        "(hidden tests may still fail when graded)", "")
    assert max(map(len, last.splitlines())) <= J.WIDTH + 6       # report() indents by 6
    for gid, _ in A.visible_tests(blank):
        assert re.search(rf"^FAIL  {re.escape(gid)} +0/", last, re.M), gid


@pytest.mark.slow
def test_a_wrong_answer_shows_the_checks_message_alone():
    rgb = ("import torch\nimport torchvision.transforms.functional as TF\n\n\n"
           "def to_bgr255(image):\n    t = TF.to_tensor(image) * 255     # channels left in RGB order\n"
           "    return t - torch.tensor(PIXEL_MEAN).view(3, 1, 1)\n")
    nb = _execute(_answered(**{"to-bgr255": rgb}))
    failed = {_meta(c)["grade_id"]: _errors(c) for c in nb.cells if _meta(c).get("grade") and _errors(c)}
    assert set(failed) == {"bgr-values"}, failed
    (error,) = failed["bgr-values"]
    text = _text(error)
    assert error["ename"] == "CheckError" and text.startswith("CheckError: normalised image: values")
    assert words(text) == words(f"CheckError: {error['evalue']}")     # the message, all of it, only
    assert "fpnlab/" not in text and "Traceback" not in text and "File " not in text
    assert no_repetition(text) and max(map(len, text.splitlines())) <= J.WIDTH
    points = dict(A.visible_tests(nb))
    last = _stdout(nb.cells[-1])
    assert f"{_total(nb) - points['bgr-values']:g} of {_total(nb)} points" in last
    assert "FAIL  bgr-values" in last and text.splitlines()[0] in last


@pytest.mark.slow
def test_the_solutions_answers_earn_the_whole_visible_total():
    nb = _execute(_answered())
    assert not [c.source[:60] for c in nb.cells if _errors(c)]
    last = _stdout(nb.cells[-1])
    n = len(A.visible_tests(nb))
    assert f"{n} of {n} visible tests pass: {_total(nb)} of {_total(nb)} points" in last


@pytest.mark.slow
def test_nbclient_still_stops_at_an_unanswered_test():
    """Without allow_errors nbclient raises at the first test cell: the kernel replied "error"."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = _release()
    first_test = next(i for i, c in enumerate(nb.cells) if _meta(c).get("grade"))
    nb.cells = nb.cells[:first_test + 1]
    client = NotebookClient(nb, kernel_name="fpnlab", timeout=300,
                            resources={"metadata": {"path": str(ROOT / "lessons" / LESSON)}})
    with pytest.raises(CellExecutionError) as e:
        client.execute()
    assert e.value.ename == "NotAnswered" and "not answered yet" in e.value.evalue


@pytest.mark.slow
def test_the_kernel_still_replies_error_for_an_unanswered_exercise():
    """The one-line messages change what is shown, not the cell's status: nbgrader, nbclient
    and JupyterLab's "stop on error" still see a failed cell."""
    from jupyter_client.manager import start_new_kernel

    release = _release()
    km, kc = start_new_kernel(kernel_name="fpnlab", cwd=str(ROOT / "lessons" / LESSON))
    try:
        def run(code):
            shown = []
            reply = kc.execute_interactive(code, timeout=120, output_hook=shown.append)
            errors = [m["content"] for m in shown if m["header"]["msg_type"] == "error"]
            return reply["content"]["status"], errors

        assert run(release.cells[0].source)[0] == "ok"
        status, (error,) = run("answer = 1\n# YOUR CODE HERE\nraise NotImplementedError()")
        assert status == "error" and error["ename"] == "NotAnswered"
        assert error["traceback"] == [error["evalue"]] and "not answered yet" in error["evalue"]
        stub = next(c.source for c in release.cells if _meta(c).get("grade_id") == "resized-size")
        assert run(stub)[0] == "ok"
        test = next(c.source for c in release.cells if _meta(c).get("grade_id") == "resize-trace")
        status, (error,) = run(test)
        assert status == "error" and error["traceback"] == [
            "`resized_size` is not answered yet: write it in its cell (replace "
            "`raise NotImplementedError()`), run that cell, then this one."]
        status, (error,) = run("import torch\nclass M(torch.nn.Module):\n    pass\nM()(1)")
        assert status == "error" and error["ename"] == "NotImplementedError"   # torch's: as it was
        assert len(error["traceback"]) > 1
        stem = tuple(reference_shapes()["stem"])
        status, (error,) = run("from fpnlab.checks import check_shape\n"
                               f"check_shape(torch.zeros{_off(stem, -1, -1)}, 'stem', {stem})")
        assert status == "error" and error["traceback"] == error_text(
            "CheckError", error["evalue"]).splitlines()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
