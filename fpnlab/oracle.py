"""torchvision as the oracle: reference modules nobody in this course wrote, and the weight map.

The reference architecture (SPEC section 2) assembled from torchvision parts::

    BackboneWithFPN(resnet50(norm_layer=FrozenBatchNorm2d), {"layer2": "0", "layer3": "1",
                    "layer4": "2"}, [512, 1024, 2048], 1024, extra_blocks=LastLevelP6P7(2048, 1024))

with two changes that make its *values* those of maskrcnn-benchmark, not only its shapes:
FrozenBatchNorm2d without eps, and (by default) the stride of each stage's first bottleneck moved
into its first 1x1 convolution (``STRIDE_IN_1X1``).

Weight names: maskrcnn-benchmark's ``body.stem.conv1`` is torchvision's ``body.conv1``,
``fpn.fpn_inner{2,3,4}`` is ``fpn.inner_blocks.{0,1,2}.0``, ``fpn.fpn_layer{2,3,4}`` is
``fpn.layer_blocks.{0,1,2}.0`` and ``fpn.top_blocks`` is ``fpn.extra_blocks``; the rest is equal.
:func:`to_torchvision_key`, :func:`to_maskrcnn_key` and :func:`copy_weights` apply the map.
"""
from __future__ import annotations

import functools
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Tuple

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .shapes import LEVELS, REFERENCE, RESNET50_WIDTHS, Config

#: maskrcnn-benchmark FrozenBatchNorm2d has no eps.
FrozenBN = functools.partial(FrozenBatchNorm2d, eps=0.0)

BODY_RETURN = {"layer1": "C2", "layer2": "C3", "layer3": "C4", "layer4": "C5"}
FPN_RETURN = {"layer2": "0", "layer3": "1", "layer4": "2"}

# ----------------------------------------------------------------------------- weight-name map
# A key prefix made only of named (not numbered) parts, e.g. "" or "body." but not "layer1.0.".
_NAMED = r"((?:[A-Za-z_]\w*\.)*)"
_TO_TV: List[Tuple[re.Pattern, object]] = [
    (re.compile(rf"^{_NAMED}stem\.(conv1|bn1)\."), r"\1\2."),
    (re.compile(r"(^|\.)fpn_inner(\d)\."), lambda m: f"{m.group(1)}inner_blocks.{int(m.group(2)) - 2}.0."),
    (re.compile(r"(^|\.)fpn_layer(\d)\."), lambda m: f"{m.group(1)}layer_blocks.{int(m.group(2)) - 2}.0."),
    (re.compile(r"(^|\.)top_blocks\."), r"\1extra_blocks."),
]
_TO_MB: List[Tuple[re.Pattern, object]] = [
    (re.compile(rf"^{_NAMED}(conv1|bn1)\."), r"\1stem.\2."),
    (re.compile(r"(^|\.)inner_blocks\.(\d)\.0\."), lambda m: f"{m.group(1)}fpn_inner{int(m.group(2)) + 2}."),
    (re.compile(r"(^|\.)layer_blocks\.(\d)\.0\."), lambda m: f"{m.group(1)}fpn_layer{int(m.group(2)) + 2}."),
    (re.compile(r"(^|\.)extra_blocks\."), r"\1top_blocks."),
]


def _apply(rules, key: str) -> str:
    for pattern, repl in rules:
        key = pattern.sub(repl, key, count=1)
    return key


def to_torchvision_key(key: str) -> str:
    """maskrcnn-benchmark name -> torchvision name (``body.stem.conv1.weight`` -> ``body.conv1.weight``)."""
    return _apply(_TO_TV, key)


def to_maskrcnn_key(key: str) -> str:
    """torchvision name -> maskrcnn-benchmark name (``fpn.inner_blocks.0.0.bias`` -> ``fpn.fpn_inner2.bias``)."""
    return _apply(_TO_MB, key)


def convert_state_dict(state: Mapping[str, torch.Tensor], to: str) -> "OrderedDict[str, torch.Tensor]":
    """Rename every key of ``state`` to ``to`` = ``"torchvision"`` or ``"maskrcnn"`` naming."""
    if to not in ("torchvision", "maskrcnn"):
        raise ValueError(f"to must be 'torchvision' or 'maskrcnn', got {to!r}")
    fn = to_torchvision_key if to == "torchvision" else to_maskrcnn_key
    return OrderedDict((fn(k), v) for k, v in state.items())


#: Keys that exist on one side only and carry no forward value we compare.
_OPTIONAL = re.compile(r"(num_batches_tracked|^fc\.|\.fc\.)")


def copy_weights(src: nn.Module | Mapping[str, torch.Tensor], dst: nn.Module) -> List[str]:
    """Copy every parameter and buffer of ``dst`` from ``src``, whichever naming each uses.

    Each destination key is looked up in ``src`` as it is, then through the map in either
    direction. Raises ``KeyError`` naming the keys it cannot fill and ``ValueError`` naming a
    shape mismatch; nothing is copied unless everything can be. Returns the source keys that were
    not used (a classifier head, for example).
    """
    state = src.state_dict() if isinstance(src, nn.Module) else dict(src)
    target = dst.state_dict()
    plan: Dict[str, str] = {}
    missing = []
    for key in target:
        for candidate in (key, to_torchvision_key(key), to_maskrcnn_key(key)):
            if candidate in state:
                plan[key] = candidate
                break
        else:
            if not _OPTIONAL.search(key):
                missing.append(key)
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        raise KeyError(f"copy_weights: {len(missing)} destination keys have no source: {shown}")
    for key, skey in plan.items():
        if tuple(target[key].shape) != tuple(state[skey].shape):
            raise ValueError(f"copy_weights: {key} has shape {tuple(target[key].shape)} but its "
                             f"source {skey} has {tuple(state[skey].shape)}")
    with torch.no_grad():
        for key, skey in plan.items():
            target[key].copy_(state[skey].to(target[key].device, target[key].dtype))
    used = set(plan.values())
    return [k for k in state if k not in used]


# ----------------------------------------------------------------------------- reference modules
def _move_stride_to_1x1(model: nn.Module) -> None:
    """torchvision puts a stage's stride in the 3x3 (v1.5); maskrcnn-benchmark in the 1x1."""
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(model, name)[0]
        stride = block.conv2.stride
        block.conv1.stride, block.conv2.stride = stride, (1, 1)


def resnet50_frozen(stride_in_1x1: bool = True) -> nn.Module:
    """torchvision's ResNet-50 with eps-free FrozenBatchNorm2d; stride in the 1x1 by default."""
    model = resnet50(weights=None, norm_layer=FrozenBN)
    if stride_in_1x1:
        _move_stride_to_1x1(model)
    return model


def body(stride_in_1x1: bool = True) -> nn.Module:
    """The ResNet-50 body: returns an OrderedDict ``C2..C5`` (stem, layer1..layer4)."""
    return IntermediateLayerGetter(resnet50_frozen(stride_in_1x1), BODY_RETURN)


def fpn(out_channels: int = 1024, p6_from: str = "C5", in_channels_stage2: int = 256) -> nn.Module:
    """torchvision's FPN over C3..C5 with ``LastLevelP6P7``: returns ``0, 1, 2, p6, p7``."""
    cfg = REFERENCE.with_(out_channels=out_channels, p6_from=p6_from,
                          in_channels_stage2=in_channels_stage2)
    return FeaturePyramidNetwork([in_channels_stage2 * 2 ** i for i in (1, 2, 3)], out_channels,
                                 extra_blocks=p6p7(cfg.p6_in_channels, out_channels))


def p6p7(in_channels: int = 2048, out_channels: int = 1024) -> nn.Module:
    """torchvision's ``LastLevelP6P7``: reads P5 exactly when in_channels == out_channels."""
    return LastLevelP6P7(in_channels, out_channels)


def backbone(config: Config = REFERENCE, stride_in_1x1: bool = True) -> nn.Module:
    """The whole reference backbone as torchvision's ``BackboneWithFPN``."""
    c2 = config.in_channels_stage2
    return BackboneWithFPN(resnet50_frozen(stride_in_1x1), FPN_RETURN, [c2 * 2, c2 * 4, c2 * 8],
                           config.out_channels,
                           extra_blocks=p6p7(config.p6_in_channels, config.out_channels))


def randomize_frozen_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every frozen BN non-trivial statistics so value tests see scale and shift at work.

    Fresh buffers are the identity (weight 1, bias 0, mean 0, var 1), under which a missing BN,
    a swapped buffer or an eps goes unseen.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        names = [n for n, _ in module.named_buffers(recurse=False)]
        if {"weight", "bias", "running_mean", "running_var"} <= set(names) and not list(
                module.parameters(recurse=False)):
            c = module.weight.numel()
            with torch.no_grad():
                module.weight.copy_(torch.empty(c).uniform_(0.5, 1.0, generator=gen))
                module.bias.copy_(torch.empty(c).uniform_(-0.1, 0.1, generator=gen))
                module.running_mean.copy_(torch.empty(c).uniform_(-0.1, 0.1, generator=gen))
                module.running_var.copy_(torch.empty(c).uniform_(0.5, 2.0, generator=gen))
    return model


def fpn_outputs(result: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """P3..P7 by name from torchvision's OrderedDict or maskrcnn-benchmark's tuple."""
    values = list(result.values()) if isinstance(result, Mapping) else list(result)
    if len(values) != len(LEVELS):
        raise ValueError(f"expected {len(LEVELS)} pyramid levels (P3..P7), got {len(values)}")
    return dict(zip(LEVELS, values))


def run_body(model: nn.Module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """C2..C5 of a body (torchvision's getter or maskrcnn-benchmark's list)."""
    out = model(x)
    values = list(out.values()) if isinstance(out, Mapping) else list(out)
    return dict(zip(("C2", "C3", "C4", "C5"), values))


__all__ = [
    "FrozenBN", "backbone", "body", "fpn", "p6p7", "resnet50_frozen", "randomize_frozen_bn",
    "to_torchvision_key", "to_maskrcnn_key", "convert_state_dict", "copy_weights",
    "fpn_outputs", "run_body", "RESNET50_WIDTHS",
]


# ----------------------------------------------------------------------------- preprocessing
#: maskrcnn-benchmark's INPUT.PIXEL_MEAN (BGR, 0..255) and PIXEL_STD.
PIXEL_MEAN = (102.9801, 115.9465, 122.7717)
PIXEL_STD = (1.0, 1.0, 1.0)


def preprocess(image, config: Config = REFERENCE) -> Dict[str, object]:
    """maskrcnn-benchmark's test-time preprocessing, from torchvision's functional transforms.

    Returns ``resized`` (3, H, W) normalised BGR255, ``padded`` (1, 3, H', W') zero-padded at the
    bottom and right to a multiple of ``size_divisible``, and ``image_sizes`` [(H, W)].
    """
    import torchvision.transforms.functional as TF

    from .shapes import pad_to, resized_size

    h, w = resized_size(image.height, image.width, config.min_size, config.max_size)
    resized = TF.resize(image, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    t = TF.to_tensor(resized)[[2, 1, 0]] * 255
    t = TF.normalize(t, PIXEL_MEAN, PIXEL_STD)
    ph, pw = pad_to(h, config.size_divisible), pad_to(w, config.size_divisible)
    padded = t.new_zeros((1, 3, ph, pw))
    padded[0, :, :h, :w] = t
    return {"resized": t, "padded": padded, "image_sizes": [(h, w)]}
