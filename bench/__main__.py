"""`make bench`: measure the course's speed and cost; print a table; write bench/results.json.

    python -m bench                 # everything (about 30 minutes on a 2-core CPU)
    python -m bench --only floor,shapes --repeat 5

Figures are medians of ``--repeat`` runs; ratios are taken between figures measured in the same
run. Targets are reported (met or not), never asserted: this is not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from .timing import Target, at_least, at_most, fmt_seconds, median, timed

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results.json"
SECTIONS = ("floor", "notebooks", "grading", "shapes", "model", "widgets", "cuda")


def _execute(nb, timeout=600):
    import nbclient

    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="fpnlab",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    return nb


def floor(repeat: int) -> dict:
    """Start a kernel and import torch + torchvision: what every graded notebook pays first."""
    import nbformat

    def once():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("import torch, torchvision")]
        _execute(nb)

    runs = timed(once, repeat)
    return {"runs_s": runs, "median_s": median(runs)}


def notebooks(repeat: int) -> dict:
    """Each solution notebook, top to bottom, on the CPU."""
    import nbformat

    out = {}
    os.environ["FPNLAB_DEVICE"] = "cpu"
    os.environ.setdefault("FPNLAB_OFFLINE", "1")     # time the notebooks, not a download
    for path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        runs = timed(lambda: _execute(nbformat.read(str(path), as_version=4)), repeat)
        out[path.parent.name] = {"runs_s": runs, "median_s": median(runs)}
        print(f"  {path.parent.name}: {fmt_seconds(median(runs))}", flush=True)
    return out


def cuda(repeat: int) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU on this machine: GPU latency and memory not measured"}
    from .gpu import measure
    return measure(repeat)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--class-size", type=int, default=40, help="synthetic submissions (grading)")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    from . import sections

    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "platform": platform.platform()},
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "figures": {}, "targets": []}
    for name in SECTIONS:
        if name not in chosen:
            continue
        print(f"== {name}", flush=True)
        fn = globals().get(name) or getattr(sections, name)
        kwargs = {"repeat": args.repeat}
        if name == "grading":
            kwargs["class_size"] = args.class_size
        results["figures"][name] = fn(**kwargs)
    targets = sections.targets(results["figures"])
    results["targets"] = [t.as_dict() for t in targets]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(sections.report(results["figures"], targets))
    print(f"\nwrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
