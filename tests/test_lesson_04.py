"""Stage 4 (the FPN) grades both ways: full marks for the solution, 0 for the blank release,
and each typical mistake loses exactly the points of the test cells it breaks. Mistakes in answer
cells whose tests cannot mask each other share one submission."""
from pathlib import Path

import nbformat
import pytest

from conftest import Mistake, grade_both_ways, run_locally, variant
from conftest import answer as _answer

ASSIGNMENT = "04-fpn"
SOURCE = Path(__file__).resolve().parents[1] / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"

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


# The prediction made with the learner's own engine, named like the course's, that forgets the
# stem's max-pool (every level twice too large): a judge reading the global name would agree.
PREDICT_OWN_ENGINE = """
def stage_shapes(height, width, config=None, out_channels=1024):
    return {f"P{k}": (1, out_channels, height // 2 ** (k - 1), width // 2 ** (k - 1)) for k in (3, 4, 5)}


def predict_levels(height, width, out_channels=1024):
    return stage_shapes(height, width, out_channels=out_channels)
"""

# Exercise 5a answered as functions: accepted.
WHERE_AS_FUNCTIONS = """
def first_wrong():
    return "P4"


def wrong_levels():
    return ["P3", "P4"]
"""

# The cost without biases, and a helper of the learner's named like the measurement's.
OWN_LEVEL_COSTS = """
def fpn_level_costs(height, width, out_channels=1024, *args, **kwargs):
    return fpn_cost(height, width, out_channels)
"""


@pytest.mark.slow
def test_lesson_04_grades_both_ways(course):
    conv = _answer(course, ASSIGNMENT, "conv-block")
    predict = _answer(course, ASSIGNMENT, "predict")
    cost = _answer(course, ASSIGNMENT, "cost")
    where = _answer(course, ASSIGNMENT, "bug-answer")
    fixed = _answer(course, ASSIGNMENT, "bug-fixed")
    relu_line = "            layers.append(nn.ReLU(inplace=True))\n"
    first_line = "        names, feats = list(x.keys()), list(x.values())\n"
    grade_both_ways(course, ASSIGNMENT, [
        # PyTorch's default init (every test of the factory checks XavierFill); sizes divided
        # with floor (right at the visible 352 x 544 only); bilinear upsampling (shapes right,
        # values wrong); the biases forgotten in the cost; the first level returned, not the
        # first computed; the suspect's forward kept as the "fix".
        Mistake("default-init+predict-floor+bilinear+cost-no-bias+first-returned+fix-unchanged", {
            "conv-block": variant(conv, "        nn.init.kaiming_uniform_(conv.weight, a=1)\n", ""),
            "predict": variant(predict, "        return (n - 1) // 2 + 1", "        return n // 2"),
            "fpn": fpn('F.interpolate(last_inner, scale_factor=2, mode="bilinear", align_corners=False)'),
            "cost": variant(cost, '"params": weights + len(layers) * out_channels', '"params": weights'),
            "bug-answer": variant(where, '"P4"', '"P3"'),
            "bug-fixed": variant(fixed, first_line, "        return super().forward(x)\n" + first_line)},
                loses=["conv-block-init", "conv-block-relu", "conv-block-gn", "predict-levels",
                       "fpn-values", "cost-params", "bug-where", "bug-fix"]),
        # use_relu ignored; the stages' channels predicted; the P output sent down the pathway;
        # FLOPs for MACs; P6/P7 taken as wrong too; a bilinear "fix".
        Mistake("relu-ignored+predict-stage-channels+upsamples-p+cost-flops+all-below+fix-bilinear", {
            "conv-block": variant(conv, relu_line, "            pass\n"),
            "predict": variant(variant(
                predict, 'for level in ("P3", "P4", "P5"):',
                'for level, c in (("P3", 512), ("P4", 1024), ("P5", 2048)):'),
                "(1, out_channels, h, w)", "(1, c, h, w)"),
            "fpn": fpn('F.interpolate(results[0], scale_factor=2, mode="nearest")'),
            "cost": variant(cost, '"macs": weights * positions[level]',
                            '"macs": 2 * weights * positions[level]'),
            "bug-answer": variant(where, '["P3", "P4"]', '["P3", "P4", "P6", "P7"]'),
            "bug-fixed": variant(fixed, 'size=lateral.shape[-2:], mode="nearest")',
                                 'size=lateral.shape[-2:], mode="bilinear", align_corners=False)')},
                loses=["conv-block-relu", "predict-levels", "fpn-values", "cost-macs", "bug-where",
                       "bug-fix"]),
        # with use_relu a fresh conv (PyTorch's init); the prediction asks the shape engine;
        # top_blocks ignored; elements for bytes; Exercise 5a as functions (right); torchvision's
        # own forward as the fix.
        Mistake("relu-fresh-conv+predict-engine+ignores-top-blocks+cost-elements+fix-delegates", {
            "conv-block": variant(
                conv, relu_line,
                "            layers[0] = nn.Conv2d(in_channels, out_channels, kernel_size, stride,\n"
                "                                  dilation * (kernel_size - 1) // 2, dilation,\n"
                "                                  bias=not use_gn)\n" + relu_line),
            "predict": variant(predict, "    shapes = {}\n",
                               "    from fpnlab.shapes import stage_shapes\n    stage_shapes(height, width)\n"
                               "    shapes = {}\n"),
            "fpn": fpn(top_blocks=False),
            "cost": variant(cost, '"bytes": 4 * out_channels * positions[level]',
                            '"bytes": out_channels * positions[level]'),
            "bug-answer": WHERE_AS_FUNCTIONS,
            "bug-fixed": variant(fixed, first_line,
                                 "        return FeaturePyramidNetwork.forward(self, x)\n" + first_line)},
                loses=["conv-block-relu", "predict-levels", "fpn-top-blocks", "cost-memory", "bug-fix"]),
        # a bias before the GroupNorm; torchvision's FPN inside; the output 3x3 left out of the cost.
        Mistake("gn-with-bias+fpn-delegates+cost-no-3x3", {
            "conv-block": variant(conv, "bias=not use_gn)", "bias=True)"),
            "fpn": FPN_DELEGATES,
            "cost": variant(variant(variant(
                cost, '"P3": [(512, 1), (out_channels, 3)]', '"P3": [(512, 1)]'),
                '"P4": [(1024, 1), (out_channels, 3)]', '"P4": [(1024, 1)]'),
                '"P5": [(2048, 1), (out_channels, 3)]', '"P5": [(2048, 1)]')},
                loses=["conv-block-gn", "fpn-structure", "fpn-shapes", "fpn-top-blocks", "fpn-values",
                       "cost-params", "cost-macs"]),
        # 32 channels per group; the template FPN (right); the cost read from the measurement;
        # the prediction made with the learner's own engine named like the course's.
        Mistake("gn-channels-per-group+template+cost-measured+own-engine", {
            "conv-block": variant(conv, "nn.GroupNorm(32, out_channels",
                                  "nn.GroupNorm(out_channels // 32, out_channels"),
            "fpn": fpn(),
            "cost": variant(cost, "    def half(n):",
                            "    from fpnlab.cost import fpn_level_costs\n"
                            "    return fpn_level_costs(height, width, out_channels)\n\n    def half(n):"),
            "predict": PREDICT_OWN_ENGINE},
                loses=["conv-block-gn", "cost-params", "cost-macs", "cost-memory", "predict-levels"]),
    ])


def _run_locally(replace, upto, rerun=None):
    return run_locally(SOURCE, replace, upto, rerun)


def test_a_learners_own_helpers_do_not_fool_the_judges_in_their_kernel(monkeypatch):
    """A judge reads no global a learner's answer can rebind: the prediction and the cost
    tests still fail a wrong answer whose cell defines names like the engine's."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from fpnlab.checks import CheckError
    nb = nbformat.read(str(SOURCE), as_version=4)
    cost = next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "cost")
    no_bias = variant(cost, '"params": weights + len(layers) * out_channels', '"params": weights')
    raised = _run_locally({"cost": no_bias + "\n\n" + OWN_LEVEL_COSTS}, "cost-params", rerun="cost")
    assert isinstance(raised, CheckError), raised
    raised = _run_locally({"predict": PREDICT_OWN_ENGINE}, "predict-levels")
    assert isinstance(raised, CheckError), raised
