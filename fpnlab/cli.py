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


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A sub-command whose one-line summary is also the first line of its --help."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpnlab", description="The fpnlab course's command line: the reference shapes and "
        "trace, checking a notebook, your lessons' workspace, and (for instructors) grading.")
    p.add_argument("--version", action="version", version=f"fpnlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = _command(sub, "shapes", "every stage's shape for an image size and configuration")
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

    t = _command(sub, "trace", "run the reference model on the sample image and trace it")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--diff", action="store_true",
                   help="compare with the reference trace; exit 1 at the first stage that differs")
    t.set_defaults(func=cmd_trace)

    g = sub.add_parser("grade", add_help=False,
                       help="autograde a class's submissions (the instructor's side, installed "
                       "with pip install 'fpnlab[grader]'; fpnlab grade --help for its options)")
    g.add_argument("arguments", nargs=argparse.REMAINDER)
    g.set_defaults(func=cmd_grade)

    k = _command(sub, "check", "run a notebook's visible tests and say what passes")
    k.add_argument("notebook", metavar="NOTEBOOK")
    k.add_argument("--timeout", type=_positive, default=600, help="per-cell limit in seconds")
    k.add_argument("--kernel", default=None, help="kernel name (default: the notebook's, else python3)")
    k.set_defaults(func=cmd_check)

    w = sub.add_parser("lessons", help="copy the lessons into your workspace and open it in JupyterLab",
                       description="Copy the released lessons and the explorer into your workspace "
                       "(never over your own files), write its START.ipynb, then open JupyterLab "
                       "there with the course's kernel.")
    w.add_argument("dir", metavar="DIR", nargs="?", default=None,
                   help="the workspace (default: $FPNLAB_WORKSPACE, else workspace/ in the course "
                   "repository, else ~/fpnlab)")
    w.add_argument("--reset", metavar="LESSON", default=None,
                   help="restore LESSON (a number, e.g. 03, or a name, or explore) from the release, "
                   "keeping your file as a backup; then exit")
    w.add_argument("--no-open", action="store_true", help="prepare the workspace, do not open the lab")
    w.add_argument("--port", type=_positive, default=None, help="the lab's port (default 8888 or free)")
    w.add_argument("--no-browser", action="store_true", help="print the lab's URL, open no browser")
    w.add_argument("--allow-root", action="store_true", help="let the lab run as root")
    w.set_defaults(func=cmd_lessons)
    return p


def cmd_grade(args) -> int:
    """``fpnlab grade``: the grader's own command line (:mod:`autograder.grade`)."""
    import importlib.util

    missing = [m for m in ("autograder", "nbgrader") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"fpnlab grade: the grader is not installed ({', '.join(missing)} missing): "
              f"pip install 'fpnlab[grader]=={__version__}'", file=sys.stderr)
        return EXIT_USAGE
    from autograder.grade import main as grade_main

    return grade_main(args.arguments)


def cmd_check(args) -> int:
    from .selfcheck import CheckUsageError, run_check

    try:
        return run_check(args.notebook, timeout=args.timeout, kernel=args.kernel)
    except CheckUsageError as e:
        print(f"fpnlab check: {e}", file=sys.stderr)
        return EXIT_USAGE


def cmd_lessons(args) -> int:
    from pathlib import Path

    from . import workspace as ws

    try:
        folder = Path(args.dir).expanduser() if args.dir else ws.default_workspace()
        if args.reset:
            for restored, backup in ws.reset(folder, args.reset):
                kept = f"; your file is kept as {backup}" if backup else " (it equalled the release)"
                print(f"fpnlab lessons: {restored} restored from the release{kept}")
        print("\n".join(ws.prepare(folder).lines()))
        if args.no_open or args.reset:
            return EXIT_OK
        return ws.open_lab(folder, port=args.port, browser=not args.no_browser,
                           allow_root=args.allow_root)
    except ws.WorkspaceError as e:
        print(f"fpnlab lessons: {e}", file=sys.stderr)
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["grade"]:        # the grader parses its own options (--help included)
        return cmd_grade(argparse.Namespace(arguments=argv[1:]))
    parser = _parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
