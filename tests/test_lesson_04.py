"""Stage 4 (the FPN) grades both ways: full marks for the solution, 0 for the blank release,
and each typical mistake loses exactly the points of the test cells it breaks."""
import pytest

from conftest import Mistake, grade_both_ways

DEFAULT_INIT = '''
import torch
import torch.nn.functional as F
from torch import nn
def conv_with_kaiming_uniform(use_gn=False, use_relu=False):
    def make_conv(in_channels, out_channels, kernel_size, stride=1, dilation=1):
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,    # PyTorch's init
                         padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=True)
    return make_conv
'''

FPN_TEMPLATE = '''
class FPN(nn.Module):
    def __init__(self, in_channels_list, out_channels, conv_block, top_blocks=None):
        super().__init__()
        self.inner_blocks, self.layer_blocks = [], []
        for idx, in_channels in enumerate(in_channels_list, 1):
            if in_channels == 0:
                continue
            self.add_module(f"fpn_inner{idx}", conv_block(in_channels, out_channels, 1))
            self.add_module(f"fpn_layer{idx}", conv_block(out_channels, out_channels, 3, 1))
            self.inner_blocks.append(f"fpn_inner{idx}")
            self.layer_blocks.append(f"fpn_layer{idx}")
        self.top_blocks = top_blocks

    def forward(self, x):
        last_inner = getattr(self, self.inner_blocks[-1])(x[-1])
        results = [getattr(self, self.layer_blocks[-1])(last_inner)]
        for feature, inner, layer in zip(x[:-1][::-1], self.inner_blocks[:-1][::-1],
                                         self.layer_blocks[:-1][::-1]):
            top_down = UPSAMPLE
            last_inner = getattr(self, inner)(feature) + top_down
            results.insert(0, getattr(self, layer)(last_inner))
        if TOP_BLOCKS and self.top_blocks is not None:
            results.extend(self.top_blocks(x[-1], results[-1]))
        return tuple(results)
'''


def fpn(upsample='F.interpolate(last_inner, scale_factor=2, mode="nearest")', top_blocks=True):
    return FPN_TEMPLATE.replace("UPSAMPLE", upsample).replace("TOP_BLOCKS", str(top_blocks))


@pytest.mark.slow
def test_lesson_04_grades_both_ways(course):
    grade_both_ways(course, "04-fpn", [
        Mistake("default-init", {"conv-block": DEFAULT_INIT}, loses=["conv-block-init"]),
        Mistake("bilinear", {"fpn": fpn('F.interpolate(last_inner, scale_factor=2, '
                                        'mode="bilinear", align_corners=False)')},
                loses=["fpn-values"]),
        Mistake("upsamples-p", {"fpn": fpn('F.interpolate(results[0], scale_factor=2, '
                                           'mode="nearest")')},
                loses=["fpn-values"]),
        Mistake("ignores-top-blocks", {"fpn": fpn(top_blocks=False)}, loses=["fpn-top-blocks"]),
        Mistake("template-is-right", {"fpn": fpn()}, loses=[]),
    ])
