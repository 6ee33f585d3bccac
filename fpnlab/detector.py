"""Real weights for the course's backbone: torchvision's COCO RetinaNet in maskrcnn-benchmark names.

torchvision ships a RetinaNet trained on COCO (``retinanet_resnet50_fpn``, weights
``RetinaNet_ResNet50_FPN_Weights.COCO_V1``, Lin et al., 2017, arXiv:1708.02002) whose backbone is
the course's model with four settings of its own, read off torchvision's own builder by
:func:`weights_settings` (never typed in here; lesson 09 asks the learner for them)::

    setting          what a wrong value changes
    stride_in_1x1    where each stage's stride sits: every shape the same, the values not
    out_channels     every FPN conv and P level: the weights' shapes, so they do not load
    p6_from          P6's input, "C5" or "P5": the p6 weight's input channels, so it does not load
    frozen_bn_eps    scale = weight / sqrt(running_var + eps): values, most where var is small

Lesson 09 maps the checkpoint into the learner's own ``build_resnet_fpn_p3p7_backbone``::

    state = load_retinanet_weights()        # torchvision's cached download, or None offline
    state = state or random_checkpoint()    # the real key names and shapes, random values
    backbone_state, head_state = split_state_dict(state)
    model = oracle_backbone()               # or the learner's builder with retinanet_cfg()
    load_backbone(model, backbone_state)
    detector = attach_head(model, state, min_size=480)
    found = detect(detector, image)
    draw_detections(image, found["boxes"], found["labels"], found["scores"], 0.5)

Nothing here downloads except :func:`load_retinanet_weights` (torchvision's loader, cached under
``torch.hub.get_dir()``); with ``FPNLAB_OFFLINE`` set it only reads the cache.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import socket
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights, retinanet_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from .oracle import to_maskrcnn_key, to_torchvision_key

__all__ = [
    "WEIGHTS", "CATEGORIES", "NO_NETWORK", "SETTING_NAMES", "LEVEL_KEYS", "LEARNER_PARTS",
    "checkpoint_path", "load_retinanet_weights", "torchvision_model", "random_checkpoint",
    "weights_settings", "retinanet_cfg", "oracle_backbone", "backbone_key", "split_state_dict",
    "is_maskrcnn_name", "load_backbone", "learner_backbone", "Pyramid", "attach_head",
    "batch_input", "detect", "draw_detections",
]

#: The COCO weights of torchvision's ``retinanet_resnet50_fpn`` (v1: 36.4 box mAP on COCO val2017).
WEIGHTS = RetinaNet_ResNet50_FPN_Weights.COCO_V1
#: COCO category names, index = label (0 is ``__background__``, "N/A" marks unused ids).
CATEGORIES: Tuple[str, ...] = tuple(WEIGHTS.meta["categories"])
#: The one line printed when the weights cannot be had.
NO_NETWORK = "no network: pretrained weights unavailable, continuing with random weights"
#: The settings a checkpoint needs, in the order lesson 09 asks for them.
SETTING_NAMES = ("stride_in_1x1", "out_channels", "p6_from", "frozen_bn_eps")
#: The keys torchvision's RetinaNet expects from its backbone (BackboneWithFPN's).
LEVEL_KEYS = ("0", "1", "2", "p6", "p7")

BACKBONE_PREFIX = "backbone."
HEAD_PREFIX = "head."


# ----------------------------------------------------------------------------- the checkpoint
def checkpoint_path(weights=WEIGHTS) -> Path:
    """Where torchvision's loader caches ``weights``:
    ``<torch.hub.get_dir()>/checkpoints/<the url's file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _offline() -> bool:
    return os.environ.get("FPNLAB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def load_retinanet_weights(progress: bool = False, weights=WEIGHTS, timeout: float = 30.0):
    """torchvision's COCO RetinaNet state dict through torchvision's own loader
    (``weights.get_state_dict``: ``torch.hub.load_state_dict_from_url``, cached under
    ``torch.hub.get_dir()``), or None.

    Without network, or on any error of the download or the load, it prints one line
    (:data:`NO_NETWORK`, with the error's kind) and returns None. ``FPNLAB_OFFLINE=1`` never
    downloads: the cached file or that line. A found checkpoint prints one line with its path.
    """
    path = checkpoint_path(weights)
    if _offline() and not path.is_file():
        print(f"{NO_NETWORK} (FPNLAB_OFFLINE is set and {path} is not there)")
        return None
    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)           # torch.hub's urlopen has no timeout of its own
    try:
        with contextlib.redirect_stdout(io.StringIO()):     # torch.hub's "Downloading: ..." line
            state = weights.get_state_dict(progress=progress, check_hash=True)
    except Exception as e:  # noqa: BLE001 (no network, a proxy, a bad hash: all mean the same here)
        print(f"{NO_NETWORK} ({type(e).__name__})")
        return None
    finally:
        socket.setdefaulttimeout(saved)
    print(f"pretrained weights: {path} ({len(state)} tensors)")
    return state


@contextlib.contextmanager
def _hub_dir(path: str):
    """torch.hub's directory set to ``path`` inside the block, restored after (even unset)."""
    import torch.hub as hub

    saved = getattr(hub, "_hub_dir", None)
    hub.set_dir(path)
    try:
        yield
    finally:
        hub._hub_dir = saved


def torchvision_model(state: Optional[Mapping[str, torch.Tensor]] = None, device="cpu"
                      ) -> nn.Module:
    """torchvision's ``retinanet_resnet50_fpn`` exactly as its builder makes it for
    :data:`WEIGHTS` (FrozenBatchNorm2d, the eps it sets for them, P6/P7 channels, head), in eval
    mode.

    The builder runs for real on the meta device, reading a shapes-only checkpoint from a
    temporary hub directory (nothing is downloaded). ``state`` None: the model stays on the
    meta device (shapes and settings only); else it is loaded into the model on ``device``.
    """
    with torch.device("meta"):
        skeleton = retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    frozen = {k: v for k, v in skeleton.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    with tempfile.TemporaryDirectory(prefix="fpnlab-hub-") as hub:
        target = Path(hub) / "checkpoints" / os.path.basename(urlparse(WEIGHTS.url).path)
        target.parent.mkdir(parents=True)
        torch.save(frozen, target)                 # meta tensors: a few kB
        with _hub_dir(hub), torch.device("meta"):
            model = retinanet_resnet50_fpn(weights=WEIGHTS, progress=False)
    model.eval()
    if state is not None:
        model.to_empty(device=device)
        model.load_state_dict(state, strict=True)
    return model


def random_checkpoint(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """A state dict in the format of :data:`WEIGHTS`' file: its real key names, shapes and dtypes
    (no ``num_batches_tracked``: the model was trained with frozen BN), seeded random values.

    Conv weights ~ N(0, 1/fan_in); biases U(-0.1, 0.1); frozen-BN weight U(0.5, 1), bias and
    running_mean U(-0.1, 0.1), running_var U(0.5, 2), so a swapped buffer shows in the values.
    The same ``seed`` gives the same tensors on every machine (CPU generator). The tensors of a
    seed are made once per process: each call returns a new dict of them (clone before
    changing one in place).
    """
    return OrderedDict(_random_checkpoint(int(seed)))


@functools.lru_cache(maxsize=2)
def _random_checkpoint(seed: int) -> "OrderedDict[str, torch.Tensor]":
    gen = torch.Generator().manual_seed(seed)
    model = torchvision_model()
    ranges = {"weight": (0.5, 1.0), "bias": (-0.1, 0.1), "running_mean": (-0.1, 0.1),
              "running_var": (0.5, 2.0)}
    specs = []                                       # (key, shape, kind), in module order
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        bn = isinstance(module, FrozenBatchNorm2d)
        for name, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None:
                kind = name if bn else ("conv" if t.dim() >= 2 else "bias")
                specs.append((prefix + name, tuple(t.shape), kind))
    values: Dict[str, torch.Tensor] = {}
    for kind in ("conv", "bias") + tuple(ranges):    # one draw per kind, cut into the tensors
        group = [(k, shape) for k, shape, g in specs if g == kind]
        sizes = [math.prod(shape) for _, shape in group]
        if kind == "conv":
            flat = torch.randn(sum(sizes), generator=gen)
        else:
            lo, hi = ranges.get(kind, (-0.1, 0.1))
            flat = torch.empty(sum(sizes)).uniform_(lo, hi, generator=gen)
        for (key, shape), chunk in zip(group, torch.split(flat, sizes)):
            value = chunk.view(shape)
            if kind == "conv":
                value = value * math.prod(shape[1:]) ** -0.5
            values[key] = value
    return OrderedDict((k, values[k]) for k in model.state_dict())


# ----------------------------------------------------------------------------- the settings
def weights_settings(model: Optional[nn.Module] = None) -> Dict[str, object]:
    """The settings a backbone needs for torchvision's checkpoint, read off torchvision's own
    model (:func:`torchvision_model` by default): ``stride_in_1x1`` (is the stride of
    ``layer2[0]`` in its 1x1?), ``out_channels``, ``p6_from`` (``"P5"`` when P6's conv reads P5)
    and ``frozen_bn_eps`` (the eps of every FrozenBatchNorm2d)."""
    model = model if model is not None else torchvision_model()
    backbone = model.backbone
    block = backbone.body.layer2[0]
    eps = sorted({float(m.eps) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)})
    if len(eps) != 1:
        raise ValueError(f"the model's frozen BN layers have different eps: {eps}")
    return {
        "stride_in_1x1": tuple(block.conv1.stride) != (1, 1),
        "out_channels": int(backbone.out_channels),
        "p6_from": "P5" if backbone.fpn.extra_blocks.use_P5 else "C5",
        "frozen_bn_eps": eps[0],
    }


def _settings(settings: Optional[Mapping]) -> Dict[str, object]:
    settings = dict(settings) if settings is not None else weights_settings()
    missing = [k for k in SETTING_NAMES if k not in settings]
    if missing:
        raise KeyError(f"settings lack {', '.join(missing)} (expected {', '.join(SETTING_NAMES)})")
    return settings


@functools.lru_cache(maxsize=None)
def _normalisation() -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The mean and std torchvision's RetinaNet normalises with (RGB in 0..1), off its model."""
    transform = torchvision_model().transform
    return (tuple(float(v) for v in transform.image_mean),
            tuple(float(v) for v in transform.image_std))


def retinanet_cfg(settings: Optional[Mapping] = None):
    """The course's yacs config (:func:`fpnlab.config.default_cfg`) for these weights.

    ``STRIDE_IN_1X1`` and ``BACKBONE_OUT_CHANNELS`` come from ``settings``, and
    ``RETINANET.USE_C5`` is ``p6_from == "C5"`` (without it ``in_channels_p6p7 = out_channels``,
    so use_P5 holds and P6 reads P5).
    maskrcnn-benchmark's FrozenBatchNorm2d has no eps, so ``frozen_bn_eps`` has no key: 0 is
    what it computes. The input keys follow torchvision's preprocessing, which these weights were
    trained with: RGB in 0..1 (``TO_BGR255`` False), ImageNet mean and std.
    """
    from .config import default_cfg

    s = _settings(settings)
    mean, std = _normalisation()
    return default_cfg().merge_from_list([
        "MODEL.RESNETS.STRIDE_IN_1X1", bool(s["stride_in_1x1"]),
        "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", int(s["out_channels"]),
        "MODEL.RETINANET.USE_C5", s["p6_from"] == "C5",
        "INPUT.TO_BGR255", False,
        "INPUT.PIXEL_MEAN", list(mean),
        "INPUT.PIXEL_STD", list(std),
    ])


def oracle_backbone(settings: Optional[Mapping] = None, device="cpu") -> nn.Module:
    """:func:`fpnlab.oracle.backbone` (torchvision parts, torchvision names) built with
    ``settings`` (default: :func:`weights_settings`), its FrozenBN eps set to theirs, in eval
    mode. ``device="meta"``: shapes only, no initialisation (load a state dict next)."""
    from . import oracle
    from .config import to_shapes_config

    s = _settings(settings)
    with torch.device("meta" if str(device) == "meta" else "cpu"):
        model = oracle.backbone(to_shapes_config(retinanet_cfg(s)), bool(s["stride_in_1x1"]))
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = float(s["frozen_bn_eps"])
    if str(device) != "meta":
        model = model.to(device)
    return model.eval()


# ----------------------------------------------------------------------------- the name map
def backbone_key(key: str) -> Optional[str]:
    """maskrcnn-benchmark's name for a key of torchvision's RetinaNet checkpoint, None for a
    key that is not the backbone's (the head's) or has no counterpart (``num_batches_tracked``).

    ``backbone.body.conv1.weight`` -> ``body.stem.conv1.weight``;
    ``backbone.fpn.extra_blocks.p6.bias`` -> ``fpn.top_blocks.p6.bias``.
    """
    if not key.startswith(BACKBONE_PREFIX) or key.endswith("num_batches_tracked"):
        return None
    return to_maskrcnn_key(key[len(BACKBONE_PREFIX):])


def split_state_dict(state: Mapping[str, torch.Tensor]
                     ) -> Tuple["OrderedDict[str, torch.Tensor]", "OrderedDict[str, torch.Tensor]"]:
    """(backbone in maskrcnn-benchmark names, head without its ``head.`` prefix): the head's keys
    kept apart, as ``RetinaNetHead.load_state_dict`` takes them. Other keys are dropped."""
    backbone, head = OrderedDict(), OrderedDict()
    for key, value in state.items():
        name = backbone_key(key)
        if name is not None:
            backbone[name] = value
        elif key.startswith(HEAD_PREFIX):
            head[key[len(HEAD_PREFIX):]] = value
    return backbone, head


def is_maskrcnn_name(key: str) -> bool:
    """True for a maskrcnn-benchmark backbone name (``body.stem.conv1.weight``,
    ``fpn.fpn_inner2.bias``), False for torchvision's (``body.conv1.weight``,
    ``fpn.inner_blocks.0.0.bias``): the map sends a maskrcnn-benchmark name back to itself."""
    return to_maskrcnn_key(to_torchvision_key(key)) == key


def load_backbone(model: nn.Module, backbone_state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a backbone state dict in maskrcnn-benchmark names into ``model``, strictly.

    ``model`` has maskrcnn-benchmark names (the learner's builder) or torchvision's
    (:func:`oracle_backbone`); either way each of its keys takes the weight stored under its
    maskrcnn-benchmark name, and only there (a weight under a torchvision name fits no key).
    ``KeyError`` names keys left unfilled or weights left unused, ``ValueError`` a shape that
    differs; nothing is loaded unless everything fits. A model on the meta device is
    materialised on the state's device first.
    """
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    plan = {key: key if is_maskrcnn_name(key) else to_maskrcnn_key(key) for key in target}
    missing = [key for key, source in plan.items() if source not in backbone_state]
    used = set(plan.values())
    unused = [k for k in backbone_state if k not in used]
    if missing or unused:
        def shown(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        raise KeyError("load_backbone: " + "; ".join(
            ([f"{len(missing)} keys of the model have no weight: "
              f"{shown([plan[k] for k in missing])}"] if missing else [])
            + ([f"{len(unused)} weights fit no key of the model: {shown(unused)}"]
               if unused else [])))
    for key, source in plan.items():
        if tuple(target[key].shape) != tuple(backbone_state[source].shape):
            raise ValueError(f"load_backbone: {source} has shape {tuple(target[key].shape)} in the "
                             f"model but {tuple(backbone_state[source].shape)} in the weights")
    if any(t.is_meta for t in target.values()):
        first = next(iter(backbone_state.values()), None)
        model.to_empty(device=first.device if first is not None else "cpu")
    model.load_state_dict({key: backbone_state[source] for key, source in plan.items()},
                          strict=False)
    return model


from .answers import LEARNER_PARTS, learner_backbone  # noqa: E402  (re-exported)


# ----------------------------------------------------------------------------- the detector
class Pyramid(nn.Module):
    """A backbone as torchvision's RetinaNet expects it: ``forward`` returns an OrderedDict of
    the five levels (keys ``0, 1, 2, p6, p7``) and ``out_channels`` is set.

    The wrapped backbone may return them as maskrcnn-benchmark does (a tuple or list P3..P7) or
    as torchvision's BackboneWithFPN does (an OrderedDict)."""

    def __init__(self, backbone: nn.Module, out_channels: Optional[int] = None):
        super().__init__()
        self.inner = backbone
        self.out_channels = int(out_channels if out_channels is not None
                                else getattr(backbone, "out_channels"))

    def forward(self, x):
        out = self.inner(x)
        levels = list(out.values()) if isinstance(out, Mapping) else list(out)
        if len(levels) != len(LEVEL_KEYS):
            raise ValueError(f"the backbone returned {len(levels)} levels; RetinaNet's anchors "
                             f"need {len(LEVEL_KEYS)} (P3..P7)")
        return OrderedDict(zip(LEVEL_KEYS, levels))


def _head_state(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    head = split_state_dict(state)[1]
    if head:
        return head
    return OrderedDict((k, v) for k, v in state.items()            # a head state already split
                       if k.startswith(("classification_head.", "regression_head.")))


def attach_head(backbone: nn.Module, state: Optional[Mapping[str, torch.Tensor]] = None, *,
                min_size: int = 800, max_size: int = 1333, score_thresh: float = 0.05,
                nms_thresh: float = 0.5, detections_per_img: int = 300,
                num_classes: int = len(CATEGORIES)) -> nn.Module:
    """torchvision's ``RetinaNet`` around ``backbone`` (P3..P7 as a tuple, list or dict): its
    ``AnchorGenerator`` (9 anchors a position, sizes 32..512), ``RetinaNetHead``, box coding and
    post-processing (score threshold, top-k, NMS), and ``GeneralizedRCNNTransform`` (resize to
    ``min_size``/``max_size``, ImageNet normalisation, padding to 32).

    ``state`` is torchvision's checkpoint (or its head part, ``split_state_dict(state)[1]``): the
    head's weights are loaded strictly; None keeps the head's random initialisation. The
    backbone's own weights are not touched (:func:`load_backbone`). Returns the model in eval
    mode on the backbone's device.
    """
    from torchvision.models.detection import RetinaNet

    params = list(backbone.parameters()) + list(backbone.buffers())
    device = params[0].device if params else torch.device("cpu")
    model = RetinaNet(Pyramid(backbone), num_classes=num_classes, min_size=min_size,
                      max_size=max_size, score_thresh=score_thresh, nms_thresh=nms_thresh,
                      detections_per_img=detections_per_img)
    if state is not None:
        model.head.load_state_dict(_head_state(state), strict=True)
    return model.to(device).eval()


def batch_input(image, min_size: int = 800, max_size: int = 1333):
    """What torchvision's transform hands the backbone for a PIL image (or a 3 x H x W tensor in
    0..1): an ``ImageList`` with ``tensors`` (1, 3, H', W') padded to 32 and ``image_sizes``."""
    import torchvision.transforms.functional as TF
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    x = image if type(image) is torch.Tensor else TF.to_tensor(image)
    mean, std = _normalisation()
    transform = GeneralizedRCNNTransform(min_size, max_size, list(mean), list(std)).eval()
    with torch.no_grad():
        images, _ = transform([x])
    return images


def detect(model: nn.Module, image) -> Dict[str, torch.Tensor]:
    """Run a detector from :func:`attach_head` on one PIL image (or 3 x H x W tensor in 0..1):
    ``boxes`` (N, 4) as x1, y1, x2, y2 in the image's pixels, ``labels`` (N,), ``scores`` (N,),
    on the CPU."""
    import torchvision.transforms.functional as TF

    x = image if type(image) is torch.Tensor else TF.to_tensor(image)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    model.eval()
    with torch.inference_mode():
        out = model([x.to(device)])[0]
    return {k: v.detach().cpu() for k, v in out.items()}


def draw_detections(image, boxes, labels, scores, threshold: float = 0.5,
                    categories: Sequence[str] = CATEGORIES, title: Optional[str] = None):
    """The image with every box scoring at least ``threshold``, labelled with its COCO category
    and score: a :class:`matplotlib.figure.Figure` (no pyplot state), as ``fpnlab.plots`` draws."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .plots import DPI, TICK_PT, TITLE_PT

    if type(image) is torch.Tensor:
        array = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    else:
        array = np.asarray(image)
    h, w = array.shape[:2]
    width_pt = 640
    fig = Figure(figsize=(width_pt / DPI, width_pt * h / w / DPI + 0.6), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(array)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.tick_params(labelsize=TICK_PT)
    boxes = torch.as_tensor(boxes).detach().cpu().reshape(-1, 4)
    labels = torch.as_tensor(labels).detach().cpu().reshape(-1)
    scores = torch.as_tensor(scores).detach().cpu().reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(f"draw_detections: {len(boxes)} boxes, {len(labels)} labels and "
                         f"{len(scores)} scores: one of each per detection")
    keep = [i for i in range(len(scores)) if float(scores[i]) >= threshold]
    colours = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]
    for n, i in enumerate(keep):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        label = int(labels[i])
        name = categories[label] if 0 <= label < len(categories) else f"class {label}"
        colour = colours[label % len(colours)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, lw=2))
        ax.text(x1 + 2, y1 + 2, f"{name} {float(scores[i]):.2f}", fontsize=TICK_PT, color="white",
                va="top", bbox=dict(facecolor=colour, edgecolor="none", pad=1.5, alpha=0.85))
    if title is None:
        title = (f"{len(keep)} detections with score >= {threshold:g}" if keep else
                 f"no detection with score >= {threshold:g} (best {float(scores.max()):.2f})"
                 if len(scores) else f"no detection with score >= {threshold:g}")
    ax.set_title(title, fontsize=TITLE_PT)
    fig.tight_layout()
    return fig
