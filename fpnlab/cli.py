"""The ``fpnlab`` command line.

``fpnlab shapes`` is pure arithmetic and never imports torch; ``fpnlab trace`` runs a real model.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from . import __version__
from .shapes import LEVELS, Config, ShapeError, format_shape, stage_shapes, table

EXIT_OK, EXIT_DIFF, EXIT_USAGE = 0, 1, 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive whole number")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 (no padding) or a positive whole number")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fpnlab", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"fpnlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("shapes", help="every stage's shape for an image size and configuration")
    s.add_argument("--height", type=_positive, required=True, help="image height in pixels")
    s.add_argument("--width", type=_positive, required=True, help="image width in pixels")
    s.add_argument("--min-size", type=_positive, default=Config.min_size)
    s.add_argument("--max-size", type=_positive, default=Config.max_size)
    s.add_argument("--size-divisible", type=_non_negative, default=Config.size_divisible,
                   help="pad to a multiple of this (0: no padding)")
    s.add_argument("--out-channels", type=_positive, default=Config.out_channels)
    s.add_argument("--p6-from", choices=("C5", "P5"), default="C5", help="what P6 reads")
    s.add_argument("--json", action="store_true", help="one JSON object: stage -> shape")
    s.set_defaults(func=cmd_shapes)

    t = sub.add_parser("trace", help="run the reference model on the sample image and trace it")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--diff", action="store_true",
                   help="compare with the reference trace; exit 1 at the first stage that differs")
    t.set_defaults(func=cmd_trace)

    g = sub.add_parser("grade", help="autograde a class's submissions (nbgrader, sandboxed)",
                       description="Autograde submissions with nbgrader, each notebook in a "
                       "bubblewrap sandbox; writes OUT/grades.csv, OUT/feedback/ and the gradebook.")
    g.add_argument("lesson", metavar="LESSON", help="an assignment name (e.g. 01-preprocessing) or all")
    g.add_argument("submissions", metavar="SUBMISSIONS",
                   help="a folder <student>/<lesson>/<notebook>.ipynb (or <student>/<notebook>.ipynb), "
                   "or an LMS .zip of <student>_<anything>.ipynb files (see --zip-pattern)")
    g.add_argument("--out", required=True, help="the grading course folder (kept across runs)")
    g.add_argument("--workers", type=_positive, default=1, help="shards graded at once (default 1)")
    g.add_argument("--timeout", type=_positive, default=600,
                   help="wall-clock limit per notebook in seconds (default 600)")
    g.add_argument("--memory-gb", type=_positive, default=6, help="memory limit per kernel in GB (default 6)")
    g.add_argument("--source", default=None, help="course source folder (default: the repo's solutions/)")
    g.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run learner code without bubblewrap (rlimits and timeout only)")
    g.add_argument("--cold-kernels", action="store_true",
                   help="a fresh sandbox and Python for every notebook, instead of one warm "
                   "sandbox per student that imports torch once and forks a kernel per notebook")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--zip-pattern", default=None, metavar="REGEX",
                   help="where a flat zip entry's name holds the student id: a regular expression "
                   "with a (?P<student_id>...) group (default: the text before the first _)")
    g.add_argument("--force", action="store_true",
                   help="grade every submission again, unchanged ones too (e.g. after a timeout)")
    g.set_defaults(func=cmd_grade)

    k = sub.add_parser("check", help="run a notebook's visible tests and say what passes")
    k.add_argument("notebook", metavar="NOTEBOOK")
    k.add_argument("--timeout", type=_positive, default=600, help="per-cell limit in seconds")
    k.add_argument("--kernel", default=None, help="kernel name (default: the notebook's, else python3)")
    k.set_defaults(func=cmd_check)
    return p


def cmd_grade(args) -> int:
    from pathlib import Path

    from .grade import Settings, UsageError, grade

    settings = Settings(timeout=args.timeout, memory=args.memory_gb << 30,
                        sandbox=not args.unsafe_no_sandbox, warm=not args.cold_kernels)
    if args.unsafe_no_sandbox:
        print("fpnlab grade: WARNING: --unsafe-no-sandbox: learner code runs with your rights",
              file=sys.stderr)
    try:
        grade(args.lesson, Path(args.submissions), Path(args.out), workers=args.workers,
              settings=settings, source=Path(args.source) if args.source else None,
              progress=False if args.no_progress else None, force=args.force,
              **({"zip_pattern": args.zip_pattern} if args.zip_pattern else {}))
    except UsageError as e:
        print(f"fpnlab grade: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_check(args) -> int:
    from .selfcheck import CheckUsageError, run_check

    try:
        return run_check(args.notebook, timeout=args.timeout, kernel=args.kernel)
    except CheckUsageError as e:
        print(f"fpnlab check: {e}", file=sys.stderr)
        return EXIT_USAGE


def cmd_shapes(args) -> int:
    cfg = Config(min_size=args.min_size, max_size=args.max_size,
                 size_divisible=args.size_divisible, out_channels=args.out_channels,
                 p6_from=args.p6_from)
    try:
        shapes = stage_shapes(args.height, args.width, cfg)
    except ShapeError as e:
        print(f"fpnlab shapes: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({k: list(v) for k, v in shapes.items()}))
    else:
        print(table(shapes))
    return EXIT_OK


# What each traced stage is, in the reference trace's words.
OPS = {
    "image": "PIL image (w, h) = ({w}, {h})",
    "resized": "Resize(min_size={min_size}, max_size={max_size}) + ToTensor + BGR255 normalise",
    "padded": "to_image_list(size_divisible={size_divisible})",
    "stem": "conv1 7x7 s2 + FrozenBN + ReLU + max_pool 3x3 s2",
    "C2": "layer1: 3 bottlenecks, stride 1",
    "C3": "layer2: 4 bottlenecks, stride 2",
    "C4": "layer3: 6 bottlenecks, stride 2",
    "C5": "layer4: 3 bottlenecks, stride 2",
    "fpn_inner4": "last_inner = fpn_inner4(C5), 1x1",
    "P5": "fpn_layer4(last_inner), 3x3",
    "fpn_inner3_lateral": "inner_lateral = fpn_inner3(C4), 1x1",
    "fpn_inner3_upsample": "inner_top_down = nearest x2 (last_inner)",
    "eltwise_3": "last_inner = inner_lateral + inner_top_down",
    "P4": "fpn_layer3(last_inner), 3x3",
    "fpn_inner2_lateral": "inner_lateral = fpn_inner2(C3), 1x1",
    "fpn_inner2_upsample": "inner_top_down = nearest x2 (last_inner)",
    "eltwise_2": "last_inner = inner_lateral + inner_top_down",
    "P3": "fpn_layer2(last_inner), 3x3",
    "P6": "p6: conv 3x3 s2 on C5",
    "P7": "p7: conv 3x3 s2 on relu(P6)",
}


def run_trace(device: str = "auto"):
    """Preprocess the sample image, run the torchvision-built reference backbone, return a Trace."""
    import torch
    import torch.nn.functional as F

    from . import oracle
    from .device import device as pick_device
    from .images import sample_image
    from .shapes import REFERENCE
    from .tracing import Trace, record

    dev = pick_device(device)
    img = sample_image()
    pre = oracle.preprocess(img, REFERENCE)
    torch.manual_seed(0)
    model = oracle.backbone(REFERENCE).eval().to(dev)
    fmt = dict(w=img.width, h=img.height, min_size=REFERENCE.min_size,
               max_size=REFERENCE.max_size, size_divisible=REFERENCE.size_divisible)
    trace = Trace()
    trace.add("image", OPS["image"].format(**fmt), (3, img.height, img.width))
    trace.add("resized", OPS["resized"].format(**fmt), pre["resized"].shape)
    points = {"body.maxpool": "stem", "body.layer1": "C2", "body.layer2": "C3",
              "body.layer3": "C4", "body.layer4": "C5",
              "fpn.inner_blocks.2": "fpn_inner4", "fpn.layer_blocks.2": "P5",
              "fpn.inner_blocks.1": "fpn_inner3_lateral", "fpn.layer_blocks.1": "P4",
              "fpn.inner_blocks.0": "fpn_inner2_lateral", "fpn.layer_blocks.0": "P3",
              "fpn.extra_blocks.p6": "P6", "fpn.extra_blocks.p7": "P7"}
    inputs = {"fpn.layer_blocks.1": "eltwise_3", "fpn.layer_blocks.0": "eltwise_2"}
    calls = {F.interpolate: ["fpn_inner3_upsample", "fpn_inner2_upsample"]}
    recorded = record(model, pre["padded"].to(dev), points, input_stage="padded",
                      inputs=inputs, calls=calls)
    for e in recorded.entries:
        op = OPS.get(e.stage, e.op).format(**fmt)
        trace.add(e.stage, op, e.shape)
    return trace, dev


def cmd_trace(args) -> int:
    from .reference import reference
    from .tracing import diff

    try:
        trace, dev = run_trace(args.device)
    except RuntimeError as e:
        print(f"fpnlab trace: {e}", file=sys.stderr)
        return EXIT_USAGE
    shapes = trace.shapes()
    print(f"fpnlab trace: the reference backbone (torchvision parts) on the sample image, device {dev}")
    print(trace.render())
    print("returns (P3, P4, P5, P6, P7): " + ", ".join(format_shape(shapes[k]) for k in LEVELS))
    if args.diff:
        ref = reference()
        expected = {**ref.shapes, **ref.internals}
        order = [e.stage for e in trace.entries]
        differences = diff(trace, expected, stages=order + [k for k in expected if k not in order])
        if differences:
            print(f"differs from the reference trace at {differences[0]}", file=sys.stderr)
            return EXIT_DIFF
        print(f"matches the reference trace at all {len(expected)} stages")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
