"""The shape engine: every stage's shape for any image and configuration, by arithmetic alone.

No torch import: the command line answers in milliseconds and the widgets redraw on every slider
move. The rules are maskrcnn-benchmark's (SPEC section 2)::

    stage     shape (reference, 438x512 image)    stride
    image     (3, 438, 512)                        -
    resized   (3, 480, 561)                        -      short side -> min_size, long side truncated
    padded    (1, 3, 480, 576)                     1      ceil to a multiple of size_divisible
    stem      (1, 64, 120, 144)                    4      conv 7x7 s2 p3, max-pool 3x3 s2 p1
    C2        (1, 256, 120, 144)                   4
    C3        (1, 512, 60, 72)                     8
    C4        (1, 1024, 30, 36)                    16
    C5        (1, 2048, 15, 18)                    32
    P3        (1, 1024, 60, 72)                    8
    P4        (1, 1024, 30, 36)                    16
    P5        (1, 1024, 15, 18)                    32
    P6        (1, 1024, 8, 9)                      64     conv 3x3 s2 p1 on C5 (or P5)
    P7        (1, 1024, 4, 5)                      128    conv 3x3 s2 p1 on relu(P6)

>>> s = stage_shapes(438, 512)
>>> s["padded"], s["C3"], s["P7"]
((1, 3, 480, 576), (1, 512, 60, 72), (1, 1024, 4, 5))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Tuple

Shape = Tuple[int, ...]

#: Canonical stage names, in forward order (SPEC section 2).
STAGES = ("image", "resized", "padded", "stem", "C2", "C3", "C4", "C5",
          "P3", "P4", "P5", "P6", "P7")
#: The pyramid levels a P3-P7 backbone returns, in the order it returns them.
LEVELS = ("P3", "P4", "P5", "P6", "P7")
#: FPN internals, named as in the reference trace (Caffe layer names).
INTERNALS = ("fpn_inner4", "fpn_inner3_upsample", "fpn_inner3_lateral", "eltwise_3",
             "fpn_inner2_upsample", "fpn_inner2_lateral", "eltwise_2")

#: ResNet-50: bottleneck widths and block counts per stage; channels out = 4 x width.
RESNET50_WIDTHS = (64, 128, 256, 512)
RESNET50_BLOCKS = (3, 4, 6, 3)
BOTTLENECK_EXPANSION = 4
STEM_OUT_CHANNELS = 64
SIZE_DIVISIBLE_CHOICES = (0, 1, 8, 16, 32, 64, 128)


class ShapeError(ValueError):
    """A configuration whose shapes cannot work: names the level and both shapes."""

    def __init__(self, level: str, message: str, left: Shape | None = None,
                 right: Shape | None = None, shapes: Dict[str, Shape] | None = None):
        super().__init__(message)
        self.level, self.left, self.right = level, left, right
        #: the stages computed before the failure (image .. C5, P5, ...), for displays
        self.shapes: Dict[str, Shape] = dict(shapes or {})


@dataclass(frozen=True)
class Config:
    """The configuration behind the numbers (maskrcnn-benchmark's defaults, SPEC section 2)."""

    min_size: int = 480           # INPUT.MIN_SIZE_TEST
    max_size: int = 1333          # INPUT.MAX_SIZE_TEST
    size_divisible: int = 32      # DATALOADER.SIZE_DIVISIBILITY; 0 means no padding
    out_channels: int = 1024      # MODEL.RESNETS.BACKBONE_OUT_CHANNELS
    p6_from: str = "C5"           # "C5" (RETINANET.USE_C5) or "P5"
    batch: int = 1
    in_channels_stage2: int = 256  # MODEL.RESNETS.RES2_OUT_CHANNELS

    def __post_init__(self):
        for name in ("min_size", "max_size", "out_channels", "batch", "in_channels_stage2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if (isinstance(self.size_divisible, bool) or not isinstance(self.size_divisible, int)
                or self.size_divisible < 0):
            raise ValueError("size_divisible must be 0 (no padding) or a positive whole number,"
                             f" got {self.size_divisible!r}")
        if self.p6_from not in ("C5", "P5"):
            raise ValueError(f"p6_from must be 'C5' or 'P5', got {self.p6_from!r}")

    @property
    def p6_in_channels(self) -> int:
        """Channels P6 reads: C5's (in_channels_stage2 * 8) or the FPN's out_channels."""
        return self.in_channels_stage2 * 8 if self.p6_from == "C5" else self.out_channels

    @property
    def use_p5(self) -> bool:
        """maskrcnn-benchmark's rule: P6 reads P5 exactly when in_channels == out_channels."""
        return self.p6_in_channels == self.out_channels

    def with_(self, **changes) -> "Config":
        return replace(self, **changes)


REFERENCE = Config()


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return value


def resized_size(height: int, width: int, min_size: int = 480, max_size: int = 1333
                 ) -> Tuple[int, int]:
    """(H, W) after maskrcnn-benchmark's ``Resize``: the short side becomes ``min_size`` unless
    the long side would pass ``max_size``; the other side is *truncated* (``int``), not rounded.

    >>> resized_size(438, 512)
    (480, 561)
    """
    h, w = _check_positive("height", height), _check_positive("width", width)
    size = _check_positive("min_size", min_size)
    _check_positive("max_size", max_size)
    short, long = float(min(w, h)), float(max(w, h))
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def pad_to(n: int, size_divisible: int) -> int:
    """``n`` rounded up to a multiple of ``size_divisible`` (0 means no padding)."""
    if size_divisible <= 0:
        return n
    return int(math.ceil(n / size_divisible) * size_divisible)


def conv_out(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output size of a convolution or pooling along one axis (PyTorch floors)."""
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _spatial(shape: Shape) -> Tuple[int, int]:
    return shape[-2], shape[-1]


def stage_shapes(height: int, width: int, config: Config = REFERENCE, *,
                 internals: bool = False) -> Dict[str, Shape]:
    """Every canonical stage's shape for a ``height`` x ``width`` RGB image.

    ``image`` and ``resized`` are (C, H, W); from ``padded`` on, (N, C, H, W).
    With ``internals=True`` the FPN internals of the reference trace are included too.
    Raises :class:`ShapeError` where the top-down addition is impossible.
    """
    cfg = config
    n = cfg.batch
    rh, rw = resized_size(height, width, cfg.min_size, cfg.max_size)
    ph, pw = pad_to(rh, cfg.size_divisible), pad_to(rw, cfg.size_divisible)
    s: Dict[str, Shape] = {
        "image": (3, height, width),
        "resized": (3, rh, rw),
        "padded": (n, 3, ph, pw),
    }

    def stride2(h, w, kernel, padding):
        return conv_out(h, kernel, 2, padding), conv_out(w, kernel, 2, padding)

    h, w = stride2(ph, pw, 7, 3)          # conv1
    h, w = stride2(h, w, 3, 1)            # max-pool
    s["stem"] = (n, STEM_OUT_CHANNELS, h, w)
    for i, width_ in enumerate(RESNET50_WIDTHS):
        if i > 0:                          # the stride (1x1 p0 or 3x3 p1: same size)
            h, w = stride2(h, w, 1, 0)
        s[f"C{i + 2}"] = (n, width_ * BOTTLENECK_EXPANSION, h, w)

    out = cfg.out_channels
    inner: Dict[str, Shape] = {}
    last = (n, out) + _spatial(s["C5"])
    inner["fpn_inner4"] = last
    s["P5"] = last
    for k in (3, 2):                       # fpn_inner3 reads C4, fpn_inner2 reads C3
        lateral = (n, out) + _spatial(s[f"C{k + 1}"])
        up = (n, out, last[2] * 2, last[3] * 2)
        if up != lateral:
            level = f"P{k + 1}"
            raise ShapeError(
                level,
                f"{level}: the top-down addition is impossible: upsampled "
                f"{_fmt(up)} + lateral {_fmt(lateral)} (padded input {ph}x{pw}; "
                f"size_divisible={cfg.size_divisible}: pad to a multiple of 32)",
                up, lateral, shapes=s)
        inner[f"fpn_inner{k}_upsample"] = up
        inner[f"fpn_inner{k}_lateral"] = lateral
        inner[f"eltwise_{k}"] = lateral
        last = lateral
        s[f"P{k + 1}"] = lateral
    src = s["P5"] if cfg.use_p5 else s["C5"]          # the channel counts decide, as in the real code
    h6, w6 = stride2(*_spatial(src), 3, 1)
    s["P6"] = (n, out, h6, w6)
    s["P7"] = (n, out) + stride2(h6, w6, 3, 1)
    ordered = {k: s[k] for k in STAGES}
    if internals:
        ordered.update({k: inner[k] for k in INTERNALS})
    return ordered


def strides(shapes: Dict[str, Shape]) -> Dict[str, int | None]:
    """Each stage's stride relative to the padded input (None for image and resized).

    The stride is the ratio the level would have if sizes divided exactly: 4, 8, ... 128.
    """
    out: Dict[str, int | None] = {"image": None, "resized": None, "padded": 1}
    fixed = {"stem": 4, "C2": 4, "C3": 8, "C4": 16, "C5": 32,
             "P3": 8, "P4": 16, "P5": 32, "P6": 64, "P7": 128}
    for k in shapes:
        if k in fixed:
            out[k] = fixed[k]
    return out


def _fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def format_shape(shape: Shape) -> str:
    """``(1, 512, 60, 72)`` -> ``1x512x60x72``."""
    return _fmt(shape)


def table(shapes: Dict[str, Shape]) -> str:
    """A readable table: stage, shape, stride."""
    st = strides(shapes)
    rows = [("stage", "shape", "stride")]
    for k, v in shapes.items():
        stride = st.get(k)
        rows.append((k, _fmt(v), "-" if stride is None else str(stride)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}".rstrip()
                     for a, b, c in rows)
