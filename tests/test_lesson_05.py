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
    grade_both_ways(course, ASSIGNMENT, [
        # P7 straight from P6: every shape is right, the values are not.
        Mistake("p7-without-relu", {"p6p7": variant(src, "self.p7(F.relu(p6))", "self.p7(p6)")},
                loses=["p6p7-values"]),
        # An in-place ReLU changes the P6 that is returned.
        Mistake("inplace-relu", {"p6p7": variant(src, "F.relu(p6)", "F.relu(p6, inplace=True)")},
                loses=["p6p7-values"]),
        # P6 always from P5: the 2048 -> 1024 p6 conv cannot read 1024 channels.
        Mistake("p6-from-p5", {"p6p7": variant(src, "x = p5 if self.use_P5 else c5", "x = p5")},
                loses=["p6p7-shapes", "p6p7-values"]),
        # PyTorch's default init instead of kaiming_uniform_(a=1) and zero biases.
        Mistake("default-init", {"p6p7": variant(
            src, "nn.init.kaiming_uniform_(module.weight, a=1)\n            nn.init.constant_(module.bias, 0)",
            "pass")}, loses=["p6p7-structure"]),
    ])
