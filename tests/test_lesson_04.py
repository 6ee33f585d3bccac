"""Stage 4 (the FPN) grades both ways: full marks for the solution, 0 for the blank release,
and each typical mistake loses exactly the points of the test cells it breaks."""
import pytest

from conftest import Mistake, grade_both_ways, variant
from conftest import answer as _answer

ASSIGNMENT = "04-fpn"

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

# Delegation: torchvision's FeaturePyramidNetwork inside, the course's interface outside.
FPN_DELEGATES = '''
from torchvision.ops import FeaturePyramidNetwork as _Ready


class FPN(nn.Module):
    def __init__(self, in_channels_list, out_channels, conv_block, top_blocks=None):
        super().__init__()
        self.ready = _Ready([c for c in in_channels_list if c], out_channels)
        self.top_blocks = top_blocks

    def forward(self, x):
        out = list(self.ready({str(i): f for i, f in enumerate(x[1:])}).values())
        if self.top_blocks is not None:
            out.extend(self.top_blocks(x[-1], out[-1]))
        return tuple(out)
'''


def fpn(upsample='F.interpolate(last_inner, scale_factor=2, mode="nearest")', top_blocks=True):
    return FPN_TEMPLATE.replace("UPSAMPLE", upsample).replace("TOP_BLOCKS", str(top_blocks))


@pytest.mark.slow
def test_lesson_04_grades_both_ways(course):
    conv = _answer(course, ASSIGNMENT, "conv-block")
    predict = _answer(course, ASSIGNMENT, "predict")
    cost = _answer(course, ASSIGNMENT, "cost")
    where = _answer(course, ASSIGNMENT, "bug-answer")
    fixed = _answer(course, ASSIGNMENT, "bug-fixed")
    grade_both_ways(course, ASSIGNMENT, [
        # PyTorch's default init: every test of the factory checks XavierFill.
        Mistake("default-init", {"conv-block": variant(
            conv, "        nn.init.kaiming_uniform_(conv.weight, a=1)\n", "")},
                loses=["conv-block-init", "conv-block-relu", "conv-block-gn"]),
        # use_relu ignored: the bare conv (or conv + GroupNorm) comes back.
        Mistake("relu-ignored", {"conv-block": variant(
            conv, "            layers.append(nn.ReLU(inplace=True))\n", "            pass\n")},
                loses=["conv-block-relu"]),
        # With use_relu a fresh conv is made: the ReLU is there, the conv's init is PyTorch's.
        Mistake("relu-fresh-conv", {"conv-block": variant(
            conv, "            layers.append(nn.ReLU(inplace=True))\n",
            "            layers[0] = nn.Conv2d(in_channels, out_channels, kernel_size, stride,\n"
            "                                  dilation * (kernel_size - 1) // 2, dilation,\n"
            "                                  bias=not use_gn)\n"
            "            layers.append(nn.ReLU(inplace=True))\n")}, loses=["conv-block-relu"]),
        # A bias before the GroupNorm.
        Mistake("gn-with-bias", {"conv-block": variant(conv, "bias=not use_gn)", "bias=True)")},
                loses=["conv-block-gn"]),
        # 32 channels per group instead of 32 groups (DIM_PER_GP read as the rule).
        Mistake("gn-channels-per-group", {"conv-block": variant(
            conv, "nn.GroupNorm(32, out_channels", "nn.GroupNorm(out_channels // 32, out_channels")},
                loses=["conv-block-gn"]),
        # Predict, then run: sizes divided with floor (right at 480 x 576 only).
        Mistake("predict-floor", {"predict": variant(
            predict, "        return (n - 1) // 2 + 1", "        return n // 2")},
                loses=["predict-levels"]),
        # The prediction keeps the stages' channels instead of out_channels.
        Mistake("predict-stage-channels", {"predict": variant(variant(
            predict, 'for level in ("P3", "P4", "P5"):', 'for level, c in (("P3", 512), ("P4", 1024), ("P5", 2048)):'),
            "(1, out_channels, h, w)", "(1, c, h, w)")}, loses=["predict-levels"]),
        # The prediction asks the shape engine.
        Mistake("predict-engine", {"predict": variant(
            predict, "    shapes = {}\n",
            "    from fpnlab.shapes import stage_shapes\n    stage_shapes(height, width)\n"
            "    shapes = {}\n")}, loses=["predict-levels"]),
        # Shapes right, values wrong: bilinear, or the P output sent down the pathway.
        Mistake("bilinear", {"fpn": fpn('F.interpolate(last_inner, scale_factor=2, '
                                        'mode="bilinear", align_corners=False)')},
                loses=["fpn-values"]),
        Mistake("upsamples-p", {"fpn": fpn('F.interpolate(results[0], scale_factor=2, '
                                           'mode="nearest")')},
                loses=["fpn-values"]),
        Mistake("ignores-top-blocks", {"fpn": fpn(top_blocks=False)}, loses=["fpn-top-blocks"]),
        Mistake("template-is-right", {"fpn": fpn()}, loses=[]),
        Mistake("fpn-delegates", {"fpn": FPN_DELEGATES},
                loses=["fpn-structure", "fpn-shapes", "fpn-top-blocks", "fpn-values"]),
        # Cost: the biases forgotten; the output 3x3 forgotten; FLOPs for MACs; elements for bytes.
        Mistake("cost-no-bias", {"cost": variant(
            cost, '"params": weights + len(layers) * out_channels', '"params": weights')},
                loses=["cost-params"]),
        Mistake("cost-no-3x3", {"cost": variant(variant(variant(
            cost, '"P3": [(512, 1), (out_channels, 3)]', '"P3": [(512, 1)]'),
            '"P4": [(1024, 1), (out_channels, 3)]', '"P4": [(1024, 1)]'),
            '"P5": [(2048, 1), (out_channels, 3)]', '"P5": [(2048, 1)]')},
                loses=["cost-params", "cost-macs"]),
        Mistake("cost-flops", {"cost": variant(
            cost, '"macs": weights * positions[level]', '"macs": 2 * weights * positions[level]')},
                loses=["cost-macs"]),
        Mistake("cost-elements", {"cost": variant(
            cost, '"bytes": 4 * out_channels * positions[level]',
            '"bytes": out_channels * positions[level]')}, loses=["cost-memory"]),
        Mistake("cost-measured", {"cost": variant(
            cost, "    def half(n):",
            "    from fpnlab.cost import fpn_level_costs\n"
            "    return fpn_level_costs(height, width, out_channels)\n\n    def half(n):")},
                loses=["cost-params", "cost-macs", "cost-memory"]),
        # Find the bug: the first level returned, not the first computed; P6/P7 taken as wrong too.
        Mistake("bug-first-returned", {"bug-answer": variant(where, '"P4"', '"P3"')},
                loses=["bug-where"]),
        Mistake("bug-all-below", {"bug-answer": variant(
            where, '["P3", "P4"]', '["P3", "P4", "P6", "P7"]')}, loses=["bug-where"]),
        # The fix: the suspect's forward unchanged; a bilinear "fix"; torchvision's own forward.
        Mistake("fix-unchanged", {"bug-fixed": variant(
            fixed, "        names, feats = list(x.keys()), list(x.values())\n",
            "        return super().forward(x)\n        names, feats = list(x.keys()), list(x.values())\n")},
                loses=["bug-fix"]),
        Mistake("fix-bilinear", {"bug-fixed": variant(
            fixed, 'size=lateral.shape[-2:], mode="nearest")',
            'size=lateral.shape[-2:], mode="bilinear", align_corners=False)')}, loses=["bug-fix"]),
        Mistake("fix-delegates", {"bug-fixed": variant(
            fixed, "        names, feats = list(x.keys()), list(x.values())\n",
            "        return FeaturePyramidNetwork.forward(self, x)\n"
            "        names, feats = list(x.keys()), list(x.values())\n")}, loses=["bug-fix"]),
    ])
