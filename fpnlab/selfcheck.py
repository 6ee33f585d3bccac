"""`fpnlab check NOTEBOOK`: run a learner's notebook with its visible tests and say what passes.

For self-paced learners: no nbgrader server parts, no gradebook, no hidden tests (a release
notebook has none; should a source notebook be checked, its hidden tests are cut out first).
The notebook runs top to bottom in a fresh kernel (nbclient); each graded test cell is reported
as pass or fail with the check's message (stage, expected, actual, likely cause)::

    fpnlab check lessons/01-preprocessing/01-preprocessing.ipynb
    PASS  resize-tests        2/2  resized_size
    FAIL  pad-tests           0/2  padded: shape (1, 3, 480, 561) but expected (1, 3, 480, 576).
                                     W is off by one ...
    1 of 2 tests pass: 2 of 4 points

The notebook file is not modified. Exit status: 0 when every test passes, 1 when one fails,
2 when the notebook cannot be read or run.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?",
                    re.S | re.M)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CheckUsageError(Exception):
    """The notebook cannot be read, or no kernel can run it."""


@dataclass
class Outcome:
    grade_id: str
    points: float
    passed: bool
    message: str            # the failure's "Error: message", "" when it passed
    exercise: str = ""      # the answer cell(s) this test follows


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def read(path: Path):
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except FileNotFoundError:
        raise CheckUsageError(f"{path}: no such notebook") from None
    except Exception as e:  # noqa: BLE001 (broken JSON, binary, wrong format)
        raise CheckUsageError(f"{path} is not a readable notebook ({type(e).__name__}: {e})") from None


def visible_only(nb):
    """The notebook with hidden tests cut out of its test cells and outputs cleared."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if _meta(cell).get("grade"):
                cell.source = HIDDEN.sub("", cell.source)
    return nb


def _kernel_name(nb, wanted: Optional[str]) -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    names = KernelSpecManager().find_kernel_specs()
    for name in (wanted, nb.metadata.get("kernelspec", {}).get("name"), "fpnlab", "python3"):
        if name and name in names:
            return name
    if wanted:
        raise CheckUsageError(f"no kernel named {wanted!r}; installed: {', '.join(sorted(names))}")
    raise CheckUsageError("no Jupyter kernel installed: run `make setup` "
                          "(it installs the fpnlab kernel)")


def run(nb, path: Path, timeout: int = 600, kernel: Optional[str] = None) -> List[Outcome]:
    """Execute ``nb`` (visible tests only) in a fresh kernel; one Outcome per graded test cell."""
    from nbclient import NotebookClient

    nb = visible_only(nb)
    with tempfile.TemporaryDirectory(prefix="fpnlab-check-") as sockets:
        # The kernel talks over unix sockets in a folder of this user's (no TCP port, so no
        # "running over TCP without encryption" warning, and nothing another user can reach).
        client = NotebookClient(nb, timeout=timeout, allow_errors=True,
                                kernel_name=_kernel_name(nb, kernel), config=unix_sockets(sockets),
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        return _outcomes(client, nb, path, timeout)


def unix_sockets(folder: str):
    """nbclient/jupyter_client configuration: the kernel's channels as unix sockets in
    ``folder`` (on POSIX; elsewhere the default TCP on localhost)."""
    from traitlets.config import Config

    config = Config()
    if os.name == "posix":
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = os.path.join(folder, "kernel")
    return config


def _outcomes(client, nb, path: Path, timeout: int) -> List[Outcome]:
    """Execute with ``client``, then one Outcome per graded test cell."""
    from nbclient.exceptions import DeadKernelError

    from .judge import error_text

    try:
        client.execute()
    except DeadKernelError as e:
        raise CheckUsageError(f"the kernel died while running {path.name} ({e}): "
                              "out of memory?") from None
    except Exception as e:  # noqa: BLE001 (a cell timeout, a kernel that will not start)
        if type(e).__name__ == "CellTimeoutError":
            raise CheckUsageError(f"a cell ran longer than {timeout} s: an endless loop?") from None
        raise
    outcomes, exercise = [], ""
    for cell in nb.cells:
        meta = _meta(cell)
        if meta.get("solution") and cell.cell_type == "code":
            exercise = meta.get("grade_id", "")
        if not (meta.get("grade") and cell.cell_type == "code"):
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        message = ""
        if errors:
            e = errors[0]                # worded as the notebook shows it (fpnlab.judge)
            message = ANSI.sub("", error_text(str(e.get("ename", "Error")),
                                              str(e.get("evalue", "") or "")))
            if e.get("ename") == "NotImplementedError" and not str(e.get("evalue", "")).strip():
                message += " (the exercise is not answered yet)"
            elif e.get("ename") == "NameError":
                message += " (run or answer the exercise cell above this test)"
        outcomes.append(Outcome(meta.get("grade_id", "?"), float(meta.get("points", 0) or 0),
                                not errors, message, exercise))
    return outcomes


def report(outcomes: List[Outcome], out=None) -> None:
    out = out or sys.stdout
    width = max([len(o.grade_id) for o in outcomes] + [10])
    for o in outcomes:
        got = o.points if o.passed else 0
        line = f"{'PASS' if o.passed else 'FAIL'}  {o.grade_id:<{width}}  {got:g}/{o.points:g}"
        if o.exercise:
            line += f"  ({o.exercise})"
        print(line, file=out)
        if o.message:
            print(textwrap.indent(o.message, " " * 6), file=out)
    passed = sum(o.passed for o in outcomes)
    points = sum(o.points for o in outcomes if o.passed)
    total = sum(o.points for o in outcomes)
    print(f"{passed} of {len(outcomes)} visible tests pass: {points:g} of {total:g} points "
          "(hidden tests may still fail when graded)", file=out)


def run_check(notebook: str, timeout: int = 600, kernel: Optional[str] = None) -> int:
    path = Path(notebook)
    nb = read(path)
    if not any(_meta(c).get("grade") for c in nb.cells):
        raise CheckUsageError(f"{path} has no graded test cells (is it a lesson notebook?)")
    outcomes = run(nb, path, timeout=timeout, kernel=kernel)
    report(outcomes)
    return EXIT_PASS if all(o.passed for o in outcomes) else EXIT_FAIL
