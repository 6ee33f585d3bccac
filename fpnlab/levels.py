"""What each level sees, what it costs and which anchors it carries: lesson 08's oracles and drawings.

Nothing here is the arithmetic the lesson asks for; every number is *measured* on a real model or
produced by torchvision's own code, so the learner's closed-form answers are checked against
something independent of them:

* receptive fields: a one-channel copy of the reference backbone (torchvision's ResNet-50 body,
  FPN and ``LastLevelP6P7``, with positive weights and average pooling in place of max pooling)
  on a one-pixel-high strip; one output position is back-propagated and the extent of the nonzero
  input gradient read off (:func:`probe_levels`, :func:`probe_box`; chains of layers:
  :func:`probe_fields`, from :func:`fpnlab.receptive.probe_chain`);
* costs: ``torch.utils.flop_counter.FlopCounterMode`` on the meta device
  (:func:`measured_costs`; the FPN levels come from :func:`fpnlab.cost.fpn_level_costs`);
* sizes: torchvision's backbone run on the meta device (:func:`level_sizes`);
* anchors: torchvision's RetinaNet ``AnchorGenerator`` on a real ``ImageList`` made by the
  course's preprocessing (:func:`retinanet_anchors`);
* the level of an object: torchvision's ``LevelMapper`` (:func:`mapped_level`).

The drawings are plain :class:`matplotlib.figure.Figure` objects (no pyplot state), like
:mod:`fpnlab.plots`.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

#: The stages whose field and cost the lesson tabulates, in forward order (C1 is the stem).
STAGES = ("C1", "C2", "C3", "C4", "C5", "P3", "P4", "P5", "P6", "P7")
C_STAGES = STAGES[:5]
P_STAGES = STAGES[5:]
#: Stride of each stage in input pixels (P2 is C2's resolution: stride 4).
STRIDES = {"C1": 4, "C2": 4, "C3": 8, "C4": 16, "C5": 32, "P2": 4,
           "P3": 8, "P4": 16, "P5": 32, "P6": 64, "P7": 128}
#: RetinaNet's anchor base sizes per level (the paper; torchvision's and maskrcnn-benchmark's).
ANCHOR_SIZES = {"P3": 32, "P4": 64, "P5": 128, "P6": 256, "P7": 512}
#: FPN's level rule for a box: canonical ImageNet size 224 maps to level 4.
CANONICAL_SCALE, CANONICAL_LEVEL = 224, 4

LEVEL_COLORS = {"C1": "#9e9e9e", "C2": "#757575", "C3": "#616161", "C4": "#424242", "C5": "#212121",
                "P2": "#8e24aa", "P3": "#1e88e5", "P4": "#43a047", "P5": "#fdd835", "P6": "#fb8c00",
                "P7": "#e53935"}


# ============================================================================ receptive fields
def probe_fields(layers: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """``[(receptive field, stride), ...]`` in input pixels after each layer of a chain of
    ``(kernel, stride)`` layers, measured (:func:`fpnlab.receptive.probe_chain` on every prefix)."""
    from .receptive import probe_chain

    layers = [(int(k), int(s)) for k, s in layers]
    return [tuple(int(v) for v in probe_chain(layers[:i + 1])) for i in range(len(layers))]


def _one_channel(module):
    """The same geometry with one channel, in place: :func:`fpnlab.receptive._one_channel`
    (positive weights, norms as identities, max-pools as average pools over the same window)."""
    from .receptive import _one_channel as one_channel

    return one_channel(module)


_STRIP_MODELS: Dict[tuple, object] = {}


def _strip_model(stride_in_1x1: bool, p6_from: str):
    """(body, fpn): the reference backbone's geometry with one channel (see :func:`_one_channel`)."""
    import torch

    from . import oracle

    key = (bool(stride_in_1x1), str(p6_from))
    if key not in _STRIP_MODELS:
        with torch.device("meta"):
            tv = oracle.resnet50_frozen(stride_in_1x1)
            fpn = oracle.fpn(1024, p6_from)
        use_p5 = fpn.extra_blocks.use_P5               # decided by the real channel counts
        tv, fpn = _one_channel(tv), _one_channel(fpn)
        fpn.extra_blocks.use_P5 = use_p5
        _STRIP_MODELS[key] = (tv, fpn)
    return _STRIP_MODELS[key]


def _strip_forward(x, stride_in_1x1: bool, p6_from: str, top_down: bool):
    """Every stage of the one-channel backbone for an input ``(1, 1, H, W)``."""
    from collections import OrderedDict

    tv, fpn = _strip_model(stride_in_1x1, p6_from)
    out = {}
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out["C1"] = x
    for k in range(1, 5):
        x = getattr(tv, f"layer{k}")(x)
        out[f"C{k + 1}"] = x
    cs = [out["C3"], out["C4"], out["C5"]]
    if top_down:
        res = list(fpn(OrderedDict(zip("012", cs))).values())
    else:                                  # each P level from its own C level only (lateral path)
        res = [fpn.layer_blocks[i](fpn.inner_blocks[i](c)) for i, c in enumerate(cs)]
        res, _ = fpn.extra_blocks(res, cs, ["0", "1", "2"])
    out.update(zip(P_STAGES, res))
    return out


def _spans(length: int, positions: Mapping[str, Sequence[int]], stride_in_1x1: bool,
           p6_from: str, top_down: bool) -> Dict[str, List[Tuple[int, int]]]:
    """``{stage: [(first, last) input index of the field of each output index, ...]}`` for the
    output indices ``positions[stage]``, on a strip of ``length`` pixels (one forward pass); an
    index past a stage's end raises IndexError."""
    import torch

    from .receptive import extent

    x = torch.ones(1, 1, 1, length, dtype=torch.float64, requires_grad=True)
    ys = _strip_forward(x, stride_in_1x1, p6_from, top_down)
    spans: Dict[str, List[Tuple[int, int]]] = {}
    for stage, where in positions.items():
        y = ys[stage]
        n = y.shape[-1]
        spans[stage] = []
        for p in where:
            if not 0 <= p < n:
                raise IndexError(f"{stage} has {n} positions on a {length}-pixel strip, not {p + 1}")
            (g,) = torch.autograd.grad(y[..., p].sum(), x, retain_graph=True)
            spans[stage].append(extent(g))
    return spans


_LEVEL_FIELDS: Dict[tuple, Dict[str, Tuple[int, int]]] = {}


def probe_levels(stride_in_1x1: bool = True, p6_from: str = "C5", top_down: bool = False
                 ) -> Dict[str, Tuple[int, int]]:
    """``{stage: (theoretical receptive field, stride)}`` in input pixels for C1..C5 and P3..P7
    of the reference backbone, measured on its one-channel copy (module docstring).

    ``top_down=False`` (default): P3..P5 through their lateral path only (the C level, its 1x1
    and the 3x3 output conv). ``top_down=True``: the real FPN, where P3 and P4 also receive the
    upsampled coarser levels and so see more; their field then depends a little on where the
    position sits relative to the coarser grid, and the largest of four neighbours is given (the
    stride is the step over four positions, divided by four)."""
    key = (bool(stride_in_1x1), str(p6_from), bool(top_down))
    if key not in _LEVEL_FIELDS:
        length = 2048
        while True:
            where = {}
            for stage in STAGES:
                p = length // STRIDES[stage] // 2 - 2
                where[stage] = range(p, p + 5)
            try:
                spans = _spans(length, where, *key)
            except IndexError:
                spans = None
            if spans and all(s[0][0] > 0 and max(b for _, b in s) < length - 1
                             for s in spans.values()):
                break
            length *= 2
            if length > 1 << 16:
                raise RuntimeError("no receptive field found")
        _LEVEL_FIELDS[key] = {
            stage: (int(max(b - a + 1 for a, b in s)), int((s[4][0] - s[0][0]) // 4))
            for stage, s in spans.items()}
    return dict(_LEVEL_FIELDS[key])


def probe_box(stage: str, row: int, col: int, height: int, width: int, *,
              stride_in_1x1: bool = True, p6_from: str = "C5", top_down: bool = True
              ) -> Tuple[int, int, int, int]:
    """``(top, bottom, left, right)``, inclusive input pixels, of the theoretical field of the
    position ``(row, col)`` of ``stage`` for a padded ``height`` x ``width`` input, measured (the
    field is cut where the input ends: the convs' zero padding brings nothing)."""
    (top, bottom), = _spans(int(height), {stage: [int(row)]}, stride_in_1x1, p6_from, top_down)[stage]
    (left, right), = _spans(int(width), {stage: [int(col)]}, stride_in_1x1, p6_from, top_down)[stage]
    return top, bottom, left, right


# ============================================================================ sizes and costs
_SIZES: Dict[tuple, Dict[str, Tuple[int, int]]] = {}


def level_sizes(height: int, width: int) -> Dict[str, Tuple[int, int]]:
    """``{stage: (H, W)}`` for C1..C5, P2 (C2's grid) and P3..P7 of a padded ``height`` x
    ``width`` input: torchvision's reference backbone run on the meta device (no compute)."""
    import torch

    from . import oracle

    key = (int(height), int(width))
    if key not in _SIZES:
        with torch.device("meta"), torch.no_grad():
            tv = oracle.resnet50_frozen()
            x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(torch.empty(1, 3, *key)))))
            out = {"C1": x}
            for k in range(1, 5):
                x = getattr(tv, f"layer{k}")(x)
                out[f"C{k + 1}"] = x
            fpn = oracle.fpn(8, "C5")
            from collections import OrderedDict
            ps = fpn(OrderedDict(zip("012", (out["C3"], out["C4"], out["C5"]))))
        sizes = {k: tuple(int(d) for d in v.shape[-2:]) for k, v in out.items()}
        sizes["P2"] = sizes["C2"]
        sizes.update({lv: tuple(int(d) for d in v.shape[-2:]) for lv, v in zip(P_STAGES, ps.values())})
        _SIZES[key] = {k: sizes[k] for k in ("C1", "C2", "C3", "C4", "C5", "P2") + P_STAGES}
    return dict(_SIZES[key])


_COSTS: Dict[tuple, Dict[str, Dict[str, int]]] = {}


def measured_costs(height: int, width: int, out_channels: int = 1024, *,
                   stride_in_1x1: bool = True, bytes_per_element: int = 4
                   ) -> Dict[str, Dict[str, int]]:
    """``{stage: {"params", "macs", "bytes"}}`` for C1..C5 and P3..P7 of a padded ``height`` x
    ``width`` input, measured: parameters are the modules' own tensors, multiply-adds what
    ``FlopCounterMode`` counts (FLOPs / 2), bytes those of the stage's output tensor (float32).

    C1 is the stem (conv1, its frozen BN, the max-pool), C2..C5 torchvision's ``layer1..4``
    (stride in the 1x1 by default, as the reference); P3..P7 come from
    :func:`fpnlab.cost.fpn_level_costs` (a level's lateral 1x1 and output 3x3; P6 and P7 their
    own conv, P6 reading C5)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import oracle
    from .cost import fpn_level_costs

    key = (int(height), int(width), int(out_channels), bool(stride_in_1x1), int(bytes_per_element))
    if key not in _COSTS:
        with torch.device("meta"):
            tv = oracle.resnet50_frozen(stride_in_1x1)
            x = torch.empty(1, 3, key[0], key[1])
        parts = {"C1": torch.nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool),
                 "C2": tv.layer1, "C3": tv.layer2, "C4": tv.layer3, "C5": tv.layer4}
        costs: Dict[str, Dict[str, int]] = {}
        with torch.no_grad():
            for stage, module in parts.items():
                with FlopCounterMode(display=False) as counter:
                    x = module(x)
                costs[stage] = {"params": int(sum(p.numel() for p in module.parameters())),
                                "macs": int(counter.get_total_flops()) // 2,
                                "bytes": int(x.numel()) * bytes_per_element}
        costs.update(fpn_level_costs(key[0], key[1], key[2], bytes_per_element=bytes_per_element))
        _COSTS[key] = costs
    return {k: dict(v) for k, v in _COSTS[key].items()}


# ============================================================================ anchors
def retinanet_anchor_generator(with_p2: bool = False):
    """torchvision's RetinaNet anchor generator (``retinanet._default_anchorgen``: sizes 32..512,
    each times 2^0, 2^(1/3), 2^(2/3) truncated to ints, ratios 0.5, 1, 2). ``with_p2`` adds a
    level in front with base size 16, as a P2 would need."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.retinanet import _default_anchorgen

    gen = _default_anchorgen()
    if not with_p2:
        return gen
    sizes = ((16, int(16 * 2 ** (1.0 / 3)), int(16 * 2 ** (2.0 / 3))),) + tuple(gen.sizes)
    return AnchorGenerator(sizes, (tuple(gen.aspect_ratios[0]),) * len(sizes))


def image_list(height: int, width: int, config=None):
    """A real ``ImageList`` for a ``height`` x ``width`` RGB image: a blank PIL image through the
    course's preprocessing (:func:`fpnlab.oracle.preprocess`: resize, normalise, pad)."""
    from PIL import Image
    from torchvision.models.detection.image_list import ImageList

    from .oracle import preprocess
    from .shapes import REFERENCE

    pre = preprocess(Image.new("RGB", (int(width), int(height))), config or REFERENCE)
    return ImageList(pre["padded"], pre["image_sizes"])


def retinanet_anchors(height: int, width: int, config=None, with_p2: bool = False):
    """``{level: anchors (N, 4) xyxy}`` that torchvision's RetinaNet generator makes for a
    ``height`` x ``width`` image (P3..P7, and P2 first with ``with_p2``): its own ``grid_anchors``
    on the feature-map sizes of :func:`level_sizes`, checked against its ``forward``."""
    import torch

    images = image_list(height, width, config)
    ph, pw = images.tensors.shape[-2:]
    sizes = level_sizes(int(ph), int(pw))
    levels = (("P2",) if with_p2 else ()) + P_STAGES
    feats = [torch.zeros(1, 1, *sizes[lv]) for lv in levels]
    gen = retinanet_anchor_generator(with_p2)
    grids = [f.shape[-2:] for f in feats]
    strides = [[torch.empty((), dtype=torch.int64).fill_(ph // g[0]),
                torch.empty((), dtype=torch.int64).fill_(pw // g[1])] for g in grids]
    gen.set_cell_anchors(torch.float32, torch.device("cpu"))
    per_level = gen.grid_anchors(grids, strides)
    whole = gen(images, feats)[0]
    if whole.shape[0] != sum(a.shape[0] for a in per_level):
        raise RuntimeError("torchvision's AnchorGenerator disagrees with its own grid_anchors")
    return dict(zip(levels, per_level))


def anchors_at(anchors, grid: Tuple[int, int], row: int, col: int, per_position: int = 9):
    """The ``per_position`` anchors of position ``(row, col)`` of a level with ``grid`` = (H, W),
    from that level's anchors in torchvision's order (positions row by row, then the anchors)."""
    start = (int(row) * int(grid[1]) + int(col)) * per_position
    return anchors[start:start + per_position]


def mapped_level(box_width: float, box_height: float, k_min: int = 3, k_max: int = 7) -> int:
    """The level torchvision's ``LevelMapper`` (FPN's Eqn. 1, canonical 224 -> level 4, clamped
    to ``k_min..k_max``) gives a ``box_width`` x ``box_height`` box."""
    import torch
    from torchvision.ops.poolers import LevelMapper

    box = torch.tensor([[0.0, 0.0, float(box_width), float(box_height)]])
    return int(LevelMapper(int(k_min), int(k_max))([box])[0]) + int(k_min)


# ============================================================================ drawings
def padded_photo(config=None, image=None):
    """The photo as the network gets it, for drawing: resized (bilinear), padded at the bottom and
    right to the padded size (padding in the course's padding grey); ``(H, W, 3)`` in 0..1, and
    the resized (H, W)."""
    import numpy as np
    from matplotlib.colors import to_rgb

    from .images import sample_image
    from .plots import PAD_COLOR, _image_array
    from .shapes import REFERENCE, pad_to, resized_size

    cfg = config or REFERENCE
    img = image or sample_image()
    h, w = resized_size(img.height, img.width, cfg.min_size, cfg.max_size)
    ph, pw = pad_to(h, cfg.size_divisible), pad_to(w, cfg.size_divisible)
    arr = np.empty((ph, pw, 3))
    arr[:] = to_rgb(PAD_COLOR)
    arr[:h, :w] = _image_array(img, h, w) / 255.0          # the course's one bilinear resize
    return arr, (h, w)


def _photo_axes(ax, photo, resized_hw, margin: int = 0):
    from matplotlib.patches import Rectangle

    from .plots import TICK_PT

    ph, pw = photo.shape[:2]
    ax.imshow(photo, extent=(0, pw, ph, 0), interpolation="bilinear")
    ax.add_patch(Rectangle((0, 0), resized_hw[1], resized_hw[0], fill=False, edgecolor="white",
                           lw=1, ls="--"))
    ax.set_xlim(-margin, pw + margin)
    ax.set_ylim(ph + margin, -margin)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=TICK_PT)


def draw_receptive_field(stage: str, row: int, col: int, rf: int, stride: int,
                         box: Optional[Tuple[int, int, int, int]] = None, photo=None,
                         resized_hw=None, fig=None, box_label: str = "top-down path"):
    """One position of ``stage`` over the padded photo: the position (a dot at pixel
    ``(row * stride, col * stride)``, where its field is centred), the ``stride`` x ``stride``
    square it steps by, the theoretical field ``rf`` x ``rf`` centred on it (dashed; it may reach
    past the image, into the convs' zero padding) and, when given, ``box`` = (top, bottom, left,
    right), the field measured (:func:`probe_box`, with the top-down path by default; say which in
    ``box_label``), shaded."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .plots import DPI, TITLE_PT

    if photo is None:
        photo, resized_hw = padded_photo()
    fig = fig or Figure(figsize=(640 / DPI, 680 / DPI), dpi=DPI)
    ax = fig.subplots()
    half = (rf - 1) / 2
    _photo_axes(ax, photo, resized_hw or photo.shape[:2], margin=int(max(0, half - min(photo.shape[:2]) / 2)) + 8)
    cy, cx = row * stride, col * stride
    color = LEVEL_COLORS.get(stage, "#e53935")
    ax.add_patch(Rectangle((cx - half - 0.5, cy - half - 0.5), rf, rf, fill=False, edgecolor=color,
                           lw=2, ls="--", label=f"theoretical field {rf} x {rf} px"))
    if box is not None:
        top, bottom, left, right = box
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1,
                               facecolor=color, alpha=0.35, edgecolor=color, lw=2.5, hatch="//",
                               label=f"measured, inside the input: {bottom - top + 1} x "
                                     f"{right - left + 1} px ({box_label})"))
    ax.add_patch(Rectangle((cx - stride / 2, cy - stride / 2), stride, stride, facecolor="white",
                           edgecolor="black", lw=1, alpha=0.8, label=f"one step: {stride} px"))
    ax.plot([cx], [cy], "o", color="black", ms=4)
    ax.set_title(f"{stage} position (row {row}, col {col}) at pixel ({cy}, {cx})", fontsize=TITLE_PT)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=1, fontsize=11,
              framealpha=0.9)
    fig.tight_layout()
    return fig


def _box_patch(box, color, lw=1.5, ls="-"):
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, lw=lw, ls=ls)


def draw_anchors(anchors: Mapping[str, object], centers: Mapping[str, Tuple[int, int]],
                 box=None, box_level: Optional[str] = None, photo=None, resized_hw=None, fig=None,
                 sizes: Optional[Mapping[str, Sequence[int]]] = None):
    """RetinaNet's anchors over the padded photo: one panel per level with the anchors of one
    position (``anchors[level]``, an ``(A, 4)`` xyxy array; ``centers[level]`` its pixel
    ``(y, x)``; the title gives the level's anchor sizes, ``sizes[level]``, by default those of
    torchvision's generator, truncated to whole pixels as it does), and, when ``box`` (xyxy) is given, a last panel with that object box and the
    level it goes to (``box_level``) with that level's anchors at the box's centre."""
    import numpy as np
    from matplotlib.figure import Figure

    from .plots import DPI, TITLE_PT

    if photo is None:
        photo, resized_hw = padded_photo()
    levels = list(anchors)
    if sizes is None:
        gen = retinanet_anchor_generator(with_p2="P2" in levels)
        names = (("P2",) if "P2" in levels else ()) + P_STAGES
        sizes = {lv: tuple(int(v) for v in sz) for lv, sz in zip(names, gen.sizes)}
    base_sizes = dict(sizes)
    panels = len(levels) + (1 if box is not None else 0)
    cols = 3
    rows = int(math.ceil(panels / cols))
    fig = fig or Figure(figsize=(960 / DPI, rows * 330 / DPI), dpi=DPI)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    reach = max(float(np.abs(np.asarray(a, dtype=float)).max()) for a in anchors.values())
    ph, pw = photo.shape[:2]
    margin = int(max(0.0, reach - max(ph, pw))) // 2 + 16
    for ax, level in zip(axes, levels):
        _photo_axes(ax, photo, resized_hw or (ph, pw), margin=margin)
        color = LEVEL_COLORS.get(level, "#e53935")
        for a in np.asarray(anchors[level], dtype=float):
            ax.add_patch(_box_patch(a, color))
        cy, cx = centers[level]
        ax.plot([cx], [cy], "o", color="black", ms=3)
        sides = np.asarray(anchors[level], dtype=float)
        if level in base_sizes:         # the generator's own sizes (truncated to whole pixels)
            low, high = min(base_sizes[level]), max(base_sizes[level])
        else:                           # boxes of unknown origin: the square root of their area
            areas = np.sqrt((sides[:, 2] - sides[:, 0]) * (sides[:, 3] - sides[:, 1]))
            low, high = int(areas.min()), int(areas.max())
        ax.set_title(f"{level}: {len(sides)} anchors, {low}..{high} px", fontsize=TITLE_PT)
    used = len(levels)
    if box is not None:
        ax = axes[used]
        _photo_axes(ax, photo, resized_hw or (ph, pw), margin=margin)
        color = LEVEL_COLORS.get(box_level or "", "#e53935")
        ax.add_patch(_box_patch(box, "white", lw=2.5))
        ax.add_patch(_box_patch(box, color, lw=1.5, ls="--"))
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.set_title(f"object {x1 - x0:.0f} x {y1 - y0:.0f} px -> {box_level}", fontsize=TITLE_PT)
        used += 1
    for ax in axes[used:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def draw_objects(objects: Sequence[Mapping], photo=None, resized_hw=None, fig=None):
    """Object boxes over the padded photo, each with the level it goes to and that level's
    anchors at the position nearest its centre: ``objects`` = ``[{"box": xyxy, "level": "P4",
    "anchors": (A, 4) xyxy}, ...]`` (``anchors`` optional)."""
    import numpy as np
    from matplotlib.figure import Figure

    from .plots import DPI, TITLE_PT

    if photo is None:
        photo, resized_hw = padded_photo()
    fig = fig or Figure(figsize=(640 / DPI, 560 / DPI), dpi=DPI)
    ax = fig.subplots()
    reach = max([float(np.abs(np.asarray(o["anchors"], dtype=float)).max())
                 for o in objects if o.get("anchors") is not None] + [0.0])
    ph, pw = photo.shape[:2]
    _photo_axes(ax, photo, resized_hw or (ph, pw), margin=int(max(0.0, reach - max(ph, pw))) + 8)
    for o in objects:
        color = LEVEL_COLORS.get(str(o["level"]), "#e53935")
        for a in np.asarray(o.get("anchors") if o.get("anchors") is not None else [], dtype=float):
            ax.add_patch(_box_patch(a, color, lw=1.0, ls=":"))
        ax.add_patch(_box_patch(o["box"], "white", lw=3.5))
        ax.add_patch(_box_patch(o["box"], color, lw=2))
        x0, y0, x1, y1 = (float(v) for v in o["box"])
        ax.text(x0 + 3, y0 + 3, f"{o['level']} ({x1 - x0:.0f} x {y1 - y0:.0f} px)", color="black",
                fontsize=12, va="top", bbox=dict(facecolor="white", edgecolor=color, alpha=0.9))
    ax.set_title("objects, the level each goes to, and that level's anchors (dotted)",
                 fontsize=TITLE_PT)
    fig.tight_layout()
    return fig


def show(fig):
    """A figure as an inline PNG (``IPython.display.Image``): shown the same in every front end
    and in nbgrader's feedback, whatever matplotlib backend the kernel has."""
    from IPython.display import Image as DisplayImage

    from .plots import DPI, figure_png

    return DisplayImage(data=figure_png(fig, dpi=DPI), format="png")


def draw_costs(costs: Mapping[str, Mapping[str, Mapping[str, int]]], stages: Sequence[str] = STAGES,
               fig=None):
    """Cost per stage, one bar per configuration (``costs`` = ``{label: {stage: {"macs",
    "bytes", ...}}}``): multiply-adds in G (left) and output memory in MiB (right)."""
    import numpy as np
    from matplotlib.figure import Figure

    from .plots import DPI, TICK_PT, TITLE_PT

    fig = fig or Figure(figsize=(960 / DPI, 380 / DPI), dpi=DPI)
    ax_macs, ax_mem = fig.subplots(1, 2)
    labels = list(costs)
    x = np.arange(len(stages))
    width = 0.8 / max(1, len(labels))
    palette = ("#1e88e5", "#fb8c00", "#43a047", "#8e24aa")
    for i, label in enumerate(labels):
        macs = [costs[label].get(s, {}).get("macs", 0) / 1e9 for s in stages]
        mem = [costs[label].get(s, {}).get("bytes", 0) / 2 ** 20 for s in stages]
        offset = (i - (len(labels) - 1) / 2) * width
        ax_macs.bar(x + offset, macs, width, label=label, color=palette[i % len(palette)])
        ax_mem.bar(x + offset, mem, width, label=label, color=palette[i % len(palette)])
    for ax, title in ((ax_macs, "multiply-adds per stage (G)"),
                      (ax_mem, "output memory per stage (MiB, float32)")):
        ax.set_xticks(x)
        ax.set_xticklabels(stages, fontsize=TICK_PT)
        ax.tick_params(labelsize=TICK_PT)
        ax.set_title(title, fontsize=TITLE_PT)
        ax.grid(axis="y", alpha=0.3)
    ax_macs.legend(fontsize=11)
    fig.tight_layout()
    return fig


__all__ = ["STAGES", "STRIDES", "ANCHOR_SIZES", "probe_fields", "probe_levels", "probe_box",
           "level_sizes", "measured_costs", "retinanet_anchor_generator", "image_list",
           "retinanet_anchors", "anchors_at", "mapped_level", "padded_photo",
           "draw_receptive_field", "draw_anchors", "draw_objects", "draw_costs", "show"]
