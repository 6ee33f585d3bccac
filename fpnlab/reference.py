"""The reference trace, read as data.

``fpnlab/data/resnet_fpn_p3p7_trace.txt`` is a debug trace of maskrcnn-benchmark's
``build_resnet_fpn_p3p7_backbone`` run on a 438x512 photo. This module parses it into the shape
of every stage it names, the FPN internals it prints, the modules it lists and the configuration
values it shows. Nobody retypes those numbers: everything that needs them reads them from here.

>>> shapes = reference_shapes()
>>> shapes["resized"], shapes["P7"]
((3, 480, 561), (1, 1024, 4, 5))
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Tuple

from .shapes import INTERNALS, STAGES, Shape

TRACE_FILE = "resnet_fpn_p3p7_trace.txt"

_SIZE = re.compile(r"torch\.Size\(\[([\d,\s]+)\]\)")
_CONV = re.compile(
    r"(?:self\.|\()(?P<name>fpn_(?:inner|layer)\d|p6|p7)\)?:\s*Conv2d\((?P<cin>\d+),\s*(?P<cout>\d+),"
    r"\s*kernel_size=\((?P<k>\d+),\s*\d+\),\s*stride=\((?P<s>\d+),\s*\d+\)"
    r"(?:,\s*padding=\((?P<p>\d+),\s*\d+\))?")


@dataclass(frozen=True)
class ConvSpec:
    """One convolution as the trace prints it."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Reference:
    """Everything the trace says: stage shapes, FPN internals, modules, configuration."""

    shapes: Dict[str, Shape]          # canonical stages, forward order
    internals: Dict[str, Shape]       # FPN internals under their Caffe layer names
    modules: Dict[str, ConvSpec]      # fpn_inner2..4, fpn_layer2..4, p6, p7
    config: Dict[str, object]         # in_channels_stage2, out_channels, ...
    results: Tuple[Shape, ...]        # the FPN's returned tuple, P3..P7


def trace_text() -> str:
    """The reference trace file's text."""
    return resources.files("fpnlab").joinpath("data", TRACE_FILE).read_text()


def _size(line: str) -> Shape:
    m = _SIZE.search(line)
    if not m:
        raise ValueError(f"reference trace: no torch.Size in line {line.strip()!r}")
    return tuple(int(v) for v in m.group(1).split(","))


def parse(text: str) -> Reference:
    """Parse a trace in the format of the reference trace."""
    lines = text.splitlines()
    shapes: Dict[str, Shape] = {}
    internals: Dict[str, Shape] = {}
    modules: Dict[str, ConvSpec] = {}
    config: Dict[str, object] = {}
    results: Dict[int, Shape] = {}
    level = None          # the k of fpn_innerK while inside a top-down iteration
    after_stem = after_inner4 = after_layer4 = False
    for raw in lines:
        line = raw.strip()
        m = re.match(r"image: H, W=\((\d+),\s*(\d+)\)", line)
        if m:
            shapes["image"] = (3, int(m.group(1)), int(m.group(2)))
            continue
        if line.startswith("image_tensor.shape:"):
            shapes["resized"] = _size(line)
        elif line.startswith("batched_imgs.shape:"):
            shapes["padded"] = _size(line)
        elif line.startswith("x = self.stem(x)"):
            after_stem = True
        elif after_stem and line.startswith("x.shape:"):
            shapes["stem"] = _size(line)
            after_stem = False
        elif (m := re.match(r"t?output shape of layer(\d):", line)):
            shapes[f"C{int(m.group(1)) + 1}"] = _size(line)
        elif line.startswith("last_inner = fpn_inner4("):
            after_inner4 = True
        elif after_inner4 and line.startswith("last_inner.shape ="):
            internals["fpn_inner4"] = _size(line)
            after_inner4 = False
        elif line.startswith("results.append(fpn_layer4("):
            after_layer4 = True
        elif after_layer4 and line.startswith("results[0].shape:"):
            shapes["P5"] = _size(line)
            after_layer4 = False
        elif (m := re.match(r"inner_block: fpn_inner(\d) ==>", line)):
            level = int(m.group(1))
        elif level and line.startswith("inner_top_down.shape"):
            internals[f"fpn_inner{level}_upsample"] = _size(line)
        elif level and line.startswith("output: inner_lateral.shape"):
            internals[f"fpn_inner{level}_lateral"] = _size(line)
        elif level and line.startswith("last_inner.shape :"):
            internals[f"eltwise_{level}"] = _size(line)
        elif level and line.startswith("results[0].shape:"):
            shapes[f"P{level + 1}"] = _size(line)
        elif line.startswith("p6.shape:"):
            shapes["P6"] = _size(line)
        elif line.startswith("p7.shape:"):
            shapes["P7"] = _size(line)
        elif (m := re.match(r"result\[(\d)\]\.shape:", line)):
            results[int(m.group(1))] = _size(line)
        elif (m := re.match(r"(in_channels_stage2|out_channels|in_channels_p6p7) = (\d+)$", line)):
            config[m.group(1)] = int(m.group(2))
        elif (m := re.match(r"in_channels_list: \[([\d,\s]+)\]", line)):
            config["in_channels_list"] = [int(v) for v in m.group(1).split(",")]
        elif (m := re.match(r"self\.use_p5 : (True|False)", line)):
            config["use_p5"] = m.group(1) == "True"
        if (m := _CONV.search(line)):
            spec = ConvSpec(int(m.group("cin")), int(m.group("cout")), int(m.group("k")),
                            int(m.group("s")), int(m.group("p") or 0))
            modules.setdefault(m.group("name"), spec)
        if line.startswith("padding images for"):
            m = re.search(r"for (\d+) divisible", line)
            if m:
                config["size_divisible"] = int(m.group(1))
    missing = [k for k in STAGES if k not in shapes] + [k for k in INTERNALS if k not in internals]
    if missing:
        raise ValueError(f"reference trace: stages not found: {', '.join(missing)}")
    ordered = {k: shapes[k] for k in STAGES}
    return Reference(ordered, {k: internals[k] for k in INTERNALS}, modules, config,
                     tuple(results[i] for i in sorted(results)))


@lru_cache(maxsize=1)
def reference() -> Reference:
    """The parsed reference trace shipped with the package."""
    return parse(trace_text())


def reference_shapes() -> Dict[str, Shape]:
    """Canonical stage -> shape, as the reference trace prints them."""
    return dict(reference().shapes)


def reference_image_size() -> Tuple[int, int]:
    """(height, width) of the trace's input photo."""
    _, h, w = reference().shapes["image"]
    return h, w


def reference_lines() -> List[str]:
    """The trace's lines, for lessons that quote a part of it."""
    return trace_text().splitlines()


def excerpt(start: str, end: str) -> str:
    """The trace's lines from the first containing ``start`` to the next containing ``end``."""
    lines = reference_lines()
    i = next(i for i, line in enumerate(lines) if start in line)
    j = next(j for j in range(i, len(lines)) if end in lines[j])
    return "\n".join(lines[i:j + 1])
