"""`fpnlab check NOTEBOOK`: the visible tests, run without nbgrader, per exercise pass or fail."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from fpnlab import cli, selfcheck
from grading import toy

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path, nb, name="toy.ipynb") -> str:
    path = tmp_path / name
    nbformat.write(nb, str(path))
    return str(path)


def test_hidden_tests_are_cut_out_and_outputs_cleared():
    nb = toy.source_notebook()
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="old")]
    vis = selfcheck.visible_only(nb)
    sources = "\n".join(c.source for c in vis.cells)
    assert "HIDDEN" not in sources and "50, 70" not in sources
    assert "dict(shape=(3, 100, 70), d=32)" in sources   # the visible test stays
    assert vis.cells[1].outputs == []


def test_not_a_notebook_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.ipynb"
    bad.write_bytes(b"\x00\x01 not json")
    assert cli.main(["check", str(bad)]) == cli.EXIT_USAGE
    assert "not a readable notebook" in capsys.readouterr().err
    assert cli.main(["check", str(tmp_path / "none.ipynb")]) == cli.EXIT_USAGE
    plain = _write(tmp_path, nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), "p.ipynb")
    assert cli.main(["check", plain]) == cli.EXIT_USAGE
    assert "no graded test cells" in capsys.readouterr().err


@pytest.mark.slow
def test_right_answer_passes_everything(tmp_path, capsys):
    path = _write(tmp_path, toy.with_answer(toy.ALTERNATIVE))
    assert cli.main(["check", path]) == 0
    out = capsys.readouterr().out
    assert "PASS  pad-to-shapes  2/2" in out and "PASS  pad-to-values  1/1" in out
    assert "2 of 2 visible tests pass: 3 of 3 points" in out
    assert nbformat.read(path, as_version=4).cells[2].get("outputs") == []   # file untouched


@pytest.mark.slow
def test_wrong_and_blank_answers_fail_with_the_diagnostic(tmp_path, capsys):
    wrong = _write(tmp_path, toy.with_answer(toy.WRONG_VALUES), "wrong.ipynb")
    assert cli.main(["check", wrong]) == 1
    out = capsys.readouterr().out
    assert "PASS  pad-to-shapes  2/2" in out
    assert "FAIL  pad-to-values  0/1" in out and "padded: values differ from the oracle" in out
    blank = _write(tmp_path, toy.release_notebook(), "blank.ipynb")
    assert cli.main(["check", blank]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL") == 2 and "not answered yet" in out and "0 of 3 points" in out


@pytest.mark.slow
def test_real_lesson_01_release_fails_and_solution_passes(capsys):
    release = next((ROOT / "lessons" / "01-preprocessing").glob("*.ipynb"))
    solution = ROOT / "solutions" / "01-preprocessing" / release.name
    assert cli.main(["check", str(release)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "PASS" not in out.replace("visible tests pass", "")
    assert cli.main(["check", str(solution)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "PASS" in out


@pytest.mark.slow
def test_a_cell_past_the_timeout_is_a_usage_error_that_says_so(tmp_path, capsys):
    path = _write(tmp_path, toy.with_answer(toy.SOLUTION, "import time\ntime.sleep(120)"))
    assert cli.main(["check", path, "--timeout", "3"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "a cell ran longer than 3 s" in err and "Traceback" not in err
    assert nbformat.read(path, as_version=4).cells[2].get("outputs", []) == []   # file untouched


@pytest.mark.slow
def test_a_kernel_that_dies_is_a_usage_error_that_says_so(tmp_path, capsys):
    path = _write(tmp_path, toy.with_answer(toy.SOLUTION, "import os\nos._exit(1)"))
    assert cli.main(["check", path]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "the kernel died while running toy.ipynb" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_command_prints_the_report_and_nothing_from_the_kernel(tmp_path):
    """As a learner runs it: stdout is the report, stderr is empty (no kernel warning about
    TCP: the kernel talks over unix sockets in a private folder)."""
    import subprocess
    import sys

    path = _write(tmp_path, toy.with_answer(toy.ALTERNATIVE))
    proc = subprocess.run([sys.executable, "-m", "fpnlab.cli", "check", path], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("PASS") and "visible tests pass" in proc.stdout
    assert not list(tmp_path.glob("kernel*")), "socket files left in the working folder"


def _guide_example() -> tuple:
    """The instructor guide's `fpnlab check` example: (the notebook it describes, what the
    guide says it prints). The notebook: lesson 01 as released, every answer the solution's but
    to_image_list, which centres the image (a mistake from tests/test_lesson_01.py)."""
    from test_lesson_01 import CENTERED

    sol = nbformat.read(str(ROOT / "solutions" / "01-preprocessing" / "01-preprocessing.ipynb"), 4)
    nb = nbformat.read(str(ROOT / "lessons" / "01-preprocessing" / "01-preprocessing.ipynb"), 4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in sol.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    answers["to-image-list"] = CENTERED
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = answers[meta["grade_id"]]
    guide = (ROOT / "autograder" / "README.md").read_text()
    section = guide.split("## For learners: `fpnlab check`")[1]
    block = section.split("```\n")[1]
    command, printed = block.split("\n", 1)
    assert command.startswith("$ fpnlab check ") and "01-preprocessing.ipynb" in command
    return nb, printed


@pytest.mark.slow
def test_the_guides_example_is_what_the_command_prints(tmp_path):
    import io

    nb, printed = _guide_example()
    path = Path(_write(tmp_path, nb, "01-preprocessing.ipynb"))
    out = io.StringIO()
    selfcheck.report(selfcheck.run(nb, path), out)
    assert out.getvalue() == printed
