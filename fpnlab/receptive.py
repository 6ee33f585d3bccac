"""Receptive fields measured, not computed: the oracle of stage 3's reasoning exercises.

The theoretical receptive field of one output position is the set of input pixels that can
change it. Here it is *measured*: the model is rebuilt with one channel, positive weights and
average pooling in place of max pooling (a max-pool passes its gradient to one input of each
window, an average pool to all of them: the same window, so the same receptive field), one
output position is back-propagated, and the extent of the nonzero input gradient is read off.
The step between two neighbouring positions' extents is the stride. No formula is involved, so
the learner's closed-form answer is checked against something independent of it::

    >>> probe_chain([(7, 2), (3, 2)])             # the stem: conv 7x7/2, max-pool 3x3/2
    (11, 4)
    >>> probe_body()["C5"]                        # ResNet-50, stride in the first 1x1 (MSRA)
    (483, 32)
    >>> probe_body(stride_in_1x1=False)["C5"]     # stride in the 3x3 (torchvision's v1.5)
    (427, 32)

The body probe runs torchvision's ResNet (its own architecture, stride moved to the 1x1 as
:func:`fpnlab.oracle.resnet50_frozen` does) on a 1-pixel-high strip, so it takes milliseconds
on a CPU for any block counts.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import nn

__all__ = ["probe_chain", "probe_body", "extent"]


def extent(grad: torch.Tensor) -> Tuple[int, int]:
    """(first, last) index along the last axis where ``grad`` is nonzero (any other index)."""
    nonzero = (grad != 0).reshape(-1, grad.shape[-1]).any(dim=0).nonzero().flatten()
    if nonzero.numel() == 0:
        raise ValueError("the output does not depend on the input")
    return int(nonzero[0]), int(nonzero[-1])


def _measure(x: torch.Tensor, out: torch.Tensor, p: int) -> Tuple[int, int]:
    """Receptive field and stride, along the last axis, of the output positions ``p`` and
    ``p + 1`` of ``out`` (computed from the 1-D input ``x``)."""
    n, length = out.shape[-1], x.shape[-1]
    if p < 0 or p + 1 >= n:
        raise ValueError("too short")
    spans = []
    for q in (p, p + 1):
        (g,) = torch.autograd.grad(out[..., q].sum(), x, retain_graph=True)
        spans.append(extent(g))
    (a0, a1), (b0, b1) = spans
    if a0 == 0 or b1 == length - 1:         # clipped by the border: not the whole field
        raise ValueError("too short")
    return a1 - a0 + 1, b0 - a0


def probe_chain(layers: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """(receptive field, stride) in input pixels of the last of a chain of layers, each given
    as ``(kernel, stride)``, measured on one-channel 1-D convolutions (no padding)."""
    convs = []
    for kernel, stride in layers:
        conv = nn.Conv1d(1, 1, int(kernel), stride=int(stride), bias=False).double()
        with torch.no_grad():
            conv.weight.fill_(1.0 / int(kernel))
        convs.append(conv)
    chain = nn.Sequential(*convs)
    length = 8
    while True:
        try:
            # no padding: output 1 starts after input 0, so its field is never clipped at the left
            x = torch.ones(length, dtype=torch.float64, requires_grad=True)
            return _measure(x, chain(x.view(1, 1, -1)), 1)
        except (ValueError, RuntimeError):
            length *= 2
            if length > 1 << 22:
                raise ValueError(f"no receptive field found for {list(layers)}") from None


def _one_channel(model: nn.Module) -> nn.Module:
    """The same geometry with one channel: each conv becomes a 1 -> 1 conv with the same kernel,
    stride, padding and dilation and positive weights; each norm an identity; each max-pool an
    average pool over the same window."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv2d):
            conv = nn.Conv2d(1, 1, child.kernel_size, stride=child.stride, padding=child.padding,
                             dilation=child.dilation, bias=False).double()
            with torch.no_grad():
                conv.weight.fill_(1.0 / conv.weight.numel())
            setattr(model, name, conv)
        elif isinstance(child, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
        elif not list(child.children()) and not isinstance(child, (nn.ReLU, nn.AvgPool2d)):
            setattr(model, name, nn.Identity())        # FrozenBatchNorm2d, the classifier
        else:
            _one_channel(child)
    return model


def probe_body(stride_in_1x1: bool = True, blocks: Sequence[int] = (3, 4, 6, 3), *,
               maxpool: bool = True, strides: bool = True) -> Dict[str, Tuple[int, int]]:
    """(receptive field, stride) in input pixels of ``stem`` and ``C2`` .. ``C5`` of a ResNet
    with bottleneck blocks (``blocks`` per stage; ResNet-50's by default), the stride of each
    stage's first block in its first 1x1 (``stride_in_1x1=True``) or in its 3x3.

    ``maxpool=False`` (the stem without its max-pool) and ``strides=False`` (every stride set
    to 1; the stride reported is then 1) measure wrong models, the ones behind typical wrong
    answers, so that a test can say which mistake an answer matches."""
    from torchvision.models.resnet import Bottleneck, ResNet

    from .oracle import _move_stride_to_1x1

    with torch.device("meta"):
        tv = ResNet(Bottleneck, [int(b) for b in blocks])
    if stride_in_1x1:
        _move_stride_to_1x1(tv)
    if not maxpool:
        tv.maxpool = nn.Identity()
    tv = _one_channel(tv).to(torch.float64)
    if not strides:
        for m in tv.modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
            elif isinstance(m, nn.AvgPool2d):
                m.stride = 1
    stages = {"stem": nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool),
              "C2": tv.layer1, "C3": tv.layer2, "C4": tv.layer3, "C5": tv.layer4}
    length = 512
    while True:
        x = torch.ones(length, dtype=torch.float64, requires_grad=True)
        y, outs = x.view(1, 1, 1, -1), {}
        for name, stage in stages.items():
            y = outs[name] = stage(y)
        try:
            return {name: _measure(x, out, out.shape[-1] // 2) for name, out in outs.items()}
        except ValueError:
            length *= 2
            if length > 1 << 20:
                raise
