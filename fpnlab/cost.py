"""What each pyramid level costs, measured on real modules: parameters, multiply-adds, memory.

The judge of lesson 04's cost exercise. Nothing here is arithmetic on layer sizes: the reference
FPN with its P6/P7 (torchvision's ``FeaturePyramidNetwork`` with ``LastLevelP6P7``, from
:func:`fpnlab.oracle.fpn`) is built on the meta device, fed C3..C5 whose sizes come from
running torchvision's ResNet-50 body on the meta device too, and

* parameters are the modules' own tensors (``numel`` of each weight and bias),
* multiply-adds are what ``torch.utils.flop_counter.FlopCounterMode`` counts for each conv,
  halved (it counts a multiply-add as two FLOPs; a bias addition is not counted),
* memory is the bytes of each level's output tensor (``numel * element_size``).

No weights, no compute: any input size in milliseconds.

>>> levels = fpn_level_costs(480, 576, 1024)
>>> round(levels["P3"]["macs"] / 1e9, 1), levels["P3"]["bytes"] / 2**20
(43.0, 16.875)
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, Tuple

import torch
from torch import nn

from .shapes import LEVELS

#: Which pyramid level each conv belongs to (maskrcnn-benchmark names).
CONV_LEVEL = {"fpn_inner2": "P3", "fpn_layer2": "P3", "fpn_inner3": "P4", "fpn_layer3": "P4",
              "fpn_inner4": "P5", "fpn_layer4": "P5", "top_blocks.p6": "P6",
              "top_blocks.p7": "P7"}


@lru_cache(maxsize=1)
def _meta_body():
    from .oracle import body

    with torch.device("meta"):
        return body()


@lru_cache(maxsize=256)
def _c_sizes(height: int, width: int) -> Tuple[Tuple[int, int], ...]:
    from .oracle import run_body

    with torch.no_grad():
        c = run_body(_meta_body(), torch.empty(1, 3, height, width, device="meta"))
    return tuple(tuple(int(d) for d in c[k].shape[-2:]) for k in ("C2", "C3", "C4", "C5"))


def c_sizes(height: int, width: int) -> Tuple[Tuple[int, int], ...]:
    """(H, W) of C2, C3, C4, C5 for a padded ``height`` x ``width`` input: torchvision's
    ResNet-50 body run on the meta device."""
    return _c_sizes(int(height), int(width))


def fpn_conv_costs(height: int, width: int, out_channels: int = 1024,
                   in_channels_stage2: int = 256, batch: int = 1) -> Dict[str, dict]:
    """Each conv of the reference FPN and its P6/P7 for a padded ``height`` x ``width`` input,
    measured: ``{name: {"level", "kernel", "weight", "bias", "macs", "output"}}`` with
    maskrcnn-benchmark's names (``fpn_inner2`` .. ``top_blocks.p7``); ``weight`` and ``bias`` are
    parameter counts, ``macs`` multiply-adds (FlopCounterMode's FLOPs / 2), ``output`` the
    conv's output shape."""
    from torch.utils.flop_counter import FlopCounterMode

    from .oracle import fpn, to_maskrcnn_key

    sizes = c_sizes(height, width)[1:]
    with torch.device("meta"):
        model = fpn(out_channels, "C5", in_channels_stage2)
        feats = {str(i): torch.empty(batch, in_channels_stage2 * 2 ** (i + 1), h, w)
                 for i, (h, w) in enumerate(sizes)}
    shapes: Dict[str, tuple] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            def keep(_m, _inputs, out, name=name):
                shapes[name] = tuple(int(d) for d in out.shape)
            hooks.append(module.register_forward_hook(keep))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(feats)
    finally:
        for h in hooks:
            h.remove()
    flops = counter.get_flop_counts()
    root = type(model).__name__
    out: Dict[str, dict] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        mb = to_maskrcnn_key(name + ".")[:-1]
        out[mb] = {
            "level": CONV_LEVEL[mb],
            "kernel": int(module.kernel_size[0]),
            "weight": int(module.weight.numel()),
            "bias": 0 if module.bias is None else int(module.bias.numel()),
            "macs": int(sum(flops.get(f"{root}.{name}", {}).values())) // 2,
            "output": shapes[name],
        }
    return out


def fpn_level_costs(height: int, width: int, out_channels: int = 1024,
                    in_channels_stage2: int = 256, batch: int = 1,
                    bytes_per_element: int = 4) -> Dict[str, Dict[str, int]]:
    """Per pyramid level P3..P7: ``{"params", "macs", "bytes"}`` of the convs that make it
    (a level's lateral 1x1 and output 3x3; P6's and P7's own conv) and of its output tensor
    (``bytes_per_element`` 4: float32), measured as :func:`fpn_conv_costs` does."""
    convs = fpn_conv_costs(height, width, out_channels, in_channels_stage2, batch)
    levels = {lv: {"params": 0, "macs": 0, "bytes": 0} for lv in LEVELS}
    for name, c in convs.items():
        lv = levels[c["level"]]
        lv["params"] += c["weight"] + c["bias"]
        lv["macs"] += c["macs"]
    outputs = {"P3": "fpn_layer2", "P4": "fpn_layer3", "P5": "fpn_layer4",
               "P6": "top_blocks.p6", "P7": "top_blocks.p7"}
    for level, name in outputs.items():
        n = 1
        for d in convs[name]["output"]:
            n *= d
        levels[level]["bytes"] = n * bytes_per_element
    return levels


__all__ = ["CONV_LEVEL", "c_sizes", "fpn_conv_costs", "fpn_level_costs"]
