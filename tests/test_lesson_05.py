"""Stage 5 (P6/P7) grades both ways: full marks, zero, and exactly the points of each mistake.
Mistakes in answer cells whose tests cannot mask each other share one submission."""
from pathlib import Path

import pytest

from conftest import Mistake, grade_both_ways, run_locally, variant
from conftest import answer as _answer

ASSIGNMENT = "05-p6p7"
SOURCE = Path(__file__).resolve().parents[1] / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"

# The learner's own conv_out, named like the engine's, without its + 1: a judge that read the
# global name conv_out would compute the same wrong shapes and pass the prediction.
PREDICT_OWN_CONV_OUT = '''
def conv_out(n, k, s=1, p=0):
    return (n + 2 * p - k) // s


def predict_p6p7(c5_shape, out_channels):
    n, _, h, w = c5_shape
    h6, w6 = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
    return {"P6": (n, out_channels, h6, w6),
            "P7": (n, out_channels, conv_out(h6, 3, 2, 1), conv_out(w6, 3, 2, 1))}
'''

# Exercise 4 answered as a function (the convention of an earlier draft): accepted.
FIRST_WRONG_AS_FUNCTION = 'def first_wrong():\n    return "P6"\n'


def answer(course, grade_id="p6p7"):
    return _answer(course, ASSIGNMENT, grade_id)


@pytest.mark.slow
def test_p6p7_grades_both_ways(course):
    src = answer(course)
    predict = answer(course, "predict-p6p7")
    reasoning = answer(course, "p6-reasoning")
    level = answer(course, "bug-level")
    fix = answer(course, "bug-fix")
    flag_rule = variant(
        reasoning, "    in_channels_p6p7 = res2_out_channels * 8 if use_c5 else backbone_out_channels\n"
        "    return \"P5\" if in_channels_p6p7 == backbone_out_channels else \"C5\"",
        "    return \"C5\" if use_c5 else \"P5\"")
    grade_both_ways(course, ASSIGNMENT, [
        # a stride-2 conv taken to halve a side rounding down (15 -> 7); P7 straight from P6
        # (shapes right, values not); P6 taken to follow the USE_C5 flag (wrong in the hidden
        # quirk case); the port's level guessed from reading, not measured; a "fix" that
        # changes nothing.
        Mistake("predict-floor+p7-without-relu+p6-follows-the-flag+guessed-p7+fix-unchanged", {
            "predict-p6p7": variant(predict, "h6, w6 = (h + 2 * 1 - 3) // 2 + 1, (w + 2 * 1 - 3) // 2 + 1",
                                    "h6, w6 = h // 2, w // 2"),
            "p6p7": variant(src, "self.p7(F.relu(p6))", "self.p7(p6)"),
            "p6-reasoning": flag_rule,
            "bug-level": variant(level, 'first_wrong = "P6"', 'first_wrong = "P7"'),
            "bug-fix": variant(fix, "return F.pad(x, (1, 1, 1, 1))", "return super().pad(x)")},
                loses=["predict-p6p7-check", "p6p7-values", "p6-reads", "bug-located", "bug-fixed"]),
        # the prediction asks the shape engine; an in-place ReLU changes the P6 returned; the
        # parameters counted without biases; the fix pads before only (odd sides shrink).
        Mistake("predict-engine+inplace-relu+params-without-biases+fix-pads-before", {
            "predict-p6p7": variant(predict, "    n, _, h, w = c5_shape\n",
                                    "    from fpnlab.shapes import conv_out\n    n, _, h, w = c5_shape\n"
                                    "    assert conv_out(h, 3, 2, 1) > 0\n"),
            "p6p7": variant(src, "F.relu(p6)", "F.relu(p6, inplace=True)"),
            "p6-reasoning": variant(reasoning, "return (cin * cout * 9 + cout) + (cout * cout * 9 + cout)",
                                    "return cin * cout * 9 + cout * cout * 9"),
            "bug-fix": variant(fix, "return F.pad(x, (1, 1, 1, 1))", "return F.pad(x, (1, 0, 1, 0))")},
                loses=["predict-p6p7-check", "p6p7-values", "p6p7-params", "bug-fixed"]),
        # the learner's own conv_out without its + 1 (the judge must not read that name); P6
        # always from P5 (the 2048 -> 1024 conv cannot read 1024 channels); Exercise 4 as a
        # function (right); the fix pads by replicating the border.
        Mistake("own-conv-out+p6-from-p5+first-wrong-function+fix-replicate", {
            "predict-p6p7": PREDICT_OWN_CONV_OUT,
            "p6p7": variant(src, "x = p5 if self.use_P5 else c5", "x = p5"),
            "bug-level": FIRST_WRONG_AS_FUNCTION,
            "bug-fix": variant(fix, "return F.pad(x, (1, 1, 1, 1))",
                               'return F.pad(x, (1, 1, 1, 1), mode="replicate")')},
                loses=["predict-p6p7-check", "p6p7-shapes", "p6p7-values", "bug-fixed"]),
        # PyTorch's default init instead of the FPN's and zero biases; p7 sized from C5's channels
        # in the parameter count.
        Mistake("default-init+params-p7-from-cin", {
            "p6p7": variant(src, "nn.init.kaiming_uniform_(module.weight, a=1)\n"
                                 "            nn.init.constant_(module.bias, 0)", "pass"),
            "p6-reasoning": variant(reasoning, "(cout * cout * 9 + cout)", "(cin * cout * 9 + cout)")},
                loses=["p6p7-structure", "p6p7-params"]),
        # Delegation: torchvision's ready-made block, subclassed, with the course's interface on top.
        Mistake("torchvision-block", {"p6p7": variant(variant(
            src, "class LastLevelP6P7(nn.Module):",
            "from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as _Ready\n\n\n"
            "class LastLevelP6P7(_Ready):"),
            "        super().__init__()\n", "        super().__init__(in_channels, out_channels)\n"
            "        return\n")}, loses=["p6p7-structure", "p6p7-shapes", "p6p7-values"]),
    ])


def _run_locally(replace, upto, rerun=None):
    return run_locally(SOURCE, replace, upto, rerun)


def test_a_learners_own_conv_out_does_not_fool_the_prediction_test_in_their_kernel(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from fpnlab.checks import CheckError
    raised = _run_locally({"predict-p6p7": PREDICT_OWN_CONV_OUT}, "predict-p6p7-check")
    assert isinstance(raised, CheckError), raised
    assert "P6" in str(raised)
