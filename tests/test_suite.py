"""The suite itself: `make test` says where its time goes, and what it needs never skips in CI."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_make_test_prints_its_slowest_tests_and_time_per_folder():
    make = (ROOT / "Makefile").read_text()
    line = next(ln for ln in make.splitlines() if ln.startswith("\t$(PY) -m pytest")
                and "not slow" not in ln)
    assert "--durations=" in line, line
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--durations=3", "tests/test_setup.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300).stdout
    assert "slowest 3 durations" in out
    section = out.split("time per test folder and file")[1]
    assert re.search(r"\d+\.\d s  tests/", section) and "test_setup.py" in section


def test_no_test_is_skipped_by_a_hard_coded_condition():
    """Skips go through requires() (or the browser's _need), which fail in CI: no bare
    skipif/skip left from when a lesson was not written yet."""
    for path in sorted(set((ROOT / "tests").glob("test_*.py")) - {Path(__file__)}):
        text = path.read_text()
        assert "not written yet" not in text and "not released yet" not in text, path.name
        assert "usefixtures()" not in text, path.name
