"""Stage 5 (P6/P7) grades both ways: full marks, zero, and exactly the points of each mistake."""
import pytest

from conftest import Mistake, grade_both_ways, variant
from conftest import answer as _answer

ASSIGNMENT = "05-p6p7"


def answer(course, grade_id="p6p7"):
    return _answer(course, ASSIGNMENT, grade_id)


@pytest.mark.slow
def test_p6p7_grades_both_ways(course):
    src = answer(course)
    predict = answer(course, "predict-p6p7")
    reasoning = answer(course, "p6-reasoning")
    level = answer(course, "bug-level")
    fix = answer(course, "bug-fix")
    grade_both_ways(course, ASSIGNMENT, [
        # Predict, then run: a stride-2 conv taken to halve a side rounding down (15 -> 7).
        Mistake("predict-floor", {"predict-p6p7": variant(
            predict, "h6, w6 = (h + 2 * 1 - 3) // 2 + 1, (w + 2 * 1 - 3) // 2 + 1",
            "h6, w6 = h // 2, w // 2")}, loses=["predict-p6p7-check"]),
        # The prediction asks the shape engine instead of doing the arithmetic.
        Mistake("predict-engine", {"predict-p6p7": variant(
            predict, "    n, _, h, w = c5_shape\n",
            "    from fpnlab.shapes import conv_out\n    n, _, h, w = c5_shape\n"
            "    assert conv_out(h, 3, 2, 1) > 0\n")}, loses=["predict-p6p7-check"]),
        # P7 straight from P6: every shape is right, the values are not.
        Mistake("p7-without-relu", {"p6p7": variant(src, "self.p7(F.relu(p6))", "self.p7(p6)")},
                loses=["p6p7-values"]),
        # An in-place ReLU changes the P6 that is returned.
        Mistake("inplace-relu", {"p6p7": variant(src, "F.relu(p6)", "F.relu(p6, inplace=True)")},
                loses=["p6p7-values"]),
        # P6 always from P5: the 2048 -> 1024 p6 conv cannot read 1024 channels.
        Mistake("p6-from-p5", {"p6p7": variant(src, "x = p5 if self.use_P5 else c5", "x = p5")},
                loses=["p6p7-shapes", "p6p7-values"]),
        # PyTorch's default init instead of the FPN's and zero biases.
        Mistake("default-init", {"p6p7": variant(
            src, "nn.init.kaiming_uniform_(module.weight, a=1)\n            nn.init.constant_(module.bias, 0)",
            "pass")}, loses=["p6p7-structure"]),
        # Delegation: torchvision's ready-made block, subclassed, with the course's interface on top.
        Mistake("torchvision-block", {"p6p7": variant(variant(
            src, "class LastLevelP6P7(nn.Module):",
            "from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as _Ready\n\n\n"
            "class LastLevelP6P7(_Ready):"),
            "        super().__init__()\n", "        super().__init__(in_channels, out_channels)\n"
            "        return\n")}, loses=["p6p7-structure", "p6p7-shapes", "p6p7-values"]),
        # P6 taken to follow the USE_C5 flag: wrong in the quirk (USE_C5 with out_channels 2048).
        Mistake("p6-follows-the-flag", {"p6-reasoning": variant(
            reasoning, "    in_channels_p6p7 = res2_out_channels * 8 if use_c5 else backbone_out_channels\n"
            "    return \"P5\" if in_channels_p6p7 == backbone_out_channels else \"C5\"",
            "    return \"C5\" if use_c5 else \"P5\"")}, loses=["p6-reads"]),
        # Parameters counted without the biases.
        Mistake("params-without-biases", {"p6-reasoning": variant(
            reasoning, "return (cin * cout * 9 + cout) + (cout * cout * 9 + cout)",
            "return cin * cout * 9 + cout * cout * 9")}, loses=["p6p7-params"]),
        # Find the bug: the guess from reading (the ReLU feeds P7), not the measurement.
        Mistake("bug-guessed-p7", {"bug-level": variant(level, 'return "P6"', 'return "P7"')},
                loses=["bug-located"]),
        # The "fix" that changes nothing: the port's own forward.
        Mistake("fix-unchanged", {"bug-fix": variant(
            fix, "        x = p5 if self.use_P5 else c5\n        p6 = self.p6(x)\n"
            "        p7 = self.p7(F.relu(p6))\n        return [p6, p7]\n",
            "        return super().forward(c5, p5)\n")}, loses=["bug-fixed"]),
        # A fix that drops the ReLU: P6 is right again, P7 is not.
        Mistake("fix-without-relu", {"bug-fix": variant(fix, "self.p7(F.relu(p6))", "self.p7(p6)")},
                loses=["bug-fixed"]),
    ])
