"""lessons/ is exactly what nbgrader makes from solutions/, and leaks nothing."""
import filecmp
import json
from pathlib import Path

import pytest

from autograder.release import assignments, generate

ROOT = Path(__file__).resolve().parent.parent
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def notebooks(folder):
    return sorted(p for p in (ROOT / folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def test_every_stage_has_a_source_and_a_release():
    names = assignments()
    assert names, "no assignments under solutions/"
    for name in names:
        assert (ROOT / "lessons" / name).is_dir(), f"lessons/{name} is missing: run make release"
        for nb in (ROOT / "solutions" / name).glob("*.ipynb"):
            assert nb.stem == name, f"{nb}: the notebook is named like its folder"
    extra = {p.name for p in (ROOT / "lessons").iterdir() if p.is_dir()} - set(names)
    assert not extra, f"lessons/ has folders with no source: {extra}"


@pytest.mark.slow
def test_lessons_equal_a_fresh_release(tmp_path):
    fresh = generate(tmp_path)
    for name in assignments():
        cmp = filecmp.dircmp(fresh / name, ROOT / "lessons" / name)
        assert not (cmp.left_only or cmp.right_only), (name, cmp.left_only, cmp.right_only)
        for f in cmp.common_files:
            a, b = (fresh / name / f).read_bytes(), (ROOT / "lessons" / name / f).read_bytes()
            assert a == b, f"lessons/{name}/{f} differs from what `make release` makes"


@pytest.mark.parametrize("folder", ["solutions", "lessons", "explore"])
def test_no_outputs_or_widget_state_committed(folder):
    for path in notebooks(folder):
        nb = json.loads(path.read_text())
        assert "widgets" not in nb.get("metadata", {}), f"{path}: widget state"
        for cell in nb["cells"]:
            assert not cell.get("outputs"), f"{path}: a cell has outputs"
            assert cell.get("execution_count") is None, f"{path}: execution counts"
            src = "".join(cell["source"])
            assert "!pip" not in src and "%pip" not in src, f"{path}: installs in a cell"
            assert "urlretrieve" not in src and "wget " not in src, f"{path}: downloads in a cell"


def test_release_leaks_no_solution_or_hidden_test():
    for path in notebooks("lessons"):
        text = path.read_text()
        for marker in MARKERS:
            assert marker not in text, f"{path}: {marker}"


def test_package_holds_no_solution_regions():
    """fpnlab ships to learners: no solution or hidden-test region may sit in it (code that
    merely names the markers, to strip them, is fine)."""
    for path in (ROOT / "fpnlab").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not any(line.strip().startswith(f"### {m}") for m in MARKERS), f"{path}:{n}"


def test_readme_points_table_matches_the_notebooks():
    from autograder.release import points_table
    table = points_table()
    assert table in (ROOT / "README.md").read_text(), (
        "README's points table is out of date; paste the output of "
        "`python -m autograder.release --points-table`")
