"""`make release`: regenerate lessons/ from solutions/ with nbgrader's generate_assignment.

Runs nbgrader in a throw-away working copy, then replaces lessons/ with what it made, so a failed
run never leaves lessons/ half written.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "nbgrader_config.py"


def assignments(root: Path = ROOT) -> list[str]:
    """The course's assignments: one folder per stage under solutions/, in order."""
    return sorted(p.name for p in (root / "solutions").iterdir()
                  if p.is_dir() and any(p.glob("*.ipynb")))


def write_config(course_root: Path) -> None:
    """nbgrader reads nbgrader_config.py from its working directory: point it at the course's."""
    path = Path(course_root) / "nbgrader_config.py"
    text = f"c = get_config()  # noqa: F821\nload_subconfig({str(CONFIG)!r})  # noqa: F821\n"
    if Path(course_root).resolve() != ROOT and (not path.exists() or path.read_text() != text):
        path.write_text(text)


def nbgrader(args: list[str], course_root: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run nbgrader with the course config on ``course_root``; the venv's bin/ on PATH."""
    from .grade import run_nbgrader     # the one nbgrader runner of the course's tools

    write_config(course_root)
    return run_nbgrader(args, Path(course_root), check=check, one_thread=False)


def generate(into: Path, names: list[str] | None = None, root: Path = ROOT) -> Path:
    """Generate the release of ``names`` (default: all) under ``into``/lessons; returns it."""
    names = names or assignments(root)
    shutil.copytree(root / "solutions", into / "solutions",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    for name in names:
        nbgrader(["generate_assignment", name, "--force", "--no-db"], into)
    return into / "lessons"


def points(root: Path = ROOT) -> dict[str, list[tuple[str, float]]]:
    """assignment -> [(test cell grade_id, points)] read from the source notebooks."""
    import nbformat

    out = {}
    for name in assignments(root):
        nb = nbformat.read(str(next((root / "solutions" / name).glob("*.ipynb"))), as_version=4)
        out[name] = [(c.metadata["nbgrader"]["grade_id"], float(c.metadata["nbgrader"]["points"]))
                     for c in nb.cells
                     if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"]
    return out


def points_table(root: Path = ROOT) -> str:
    """The README's points table (stage, exercises, points), made from the notebooks."""
    import nbformat

    rows = ["| stage | exercises | graded test cells | points |", "|---|---|---|---|"]
    total = 0.0
    for name, cells in points(root).items():
        nb = nbformat.read(str(next((root / "solutions" / name).glob("*.ipynb"))), as_version=4)
        exercises = sum(1 for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))
        pts = sum(p for _, p in cells)
        total += pts
        rows.append(f"| `{name}` | {exercises} | {len(cells)} | {pts:g} |")
    rows.append(f"| **total** | | | **{total:g}** |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="assignments to regenerate (default: all)")
    parser.add_argument("--points-table", action="store_true",
                        help="print the README's points table and exit")
    args = parser.parse_args(argv)
    if args.points_table:
        print(points_table())
        return 0
    names = args.names or assignments()
    with tempfile.TemporaryDirectory(prefix="fpnlab-release-") as tmp:
        out = generate(Path(tmp), names)
        for name in names:
            dest = ROOT / "lessons" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(out / name, dest)
            print(f"lessons/{name}: regenerated from solutions/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
