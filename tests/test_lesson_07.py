"""Stage 7 (deployment) grades both ways: full marks, zero, and exactly the points of each mistake."""
import pytest

from conftest import Mistake, grade_both_ways, variant
from conftest import answer as _answer

ASSIGNMENT = "07-deployment"


def answer(course, grade_id):
    return _answer(course, ASSIGNMENT, grade_id)


HARD_CODED = '''def resize_attributes(onnx_path):
    return {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
'''


@pytest.mark.slow
def test_deployment_grades_both_ways(course):
    deconv, pool = answer(course, "deconv"), answer(course, "caffe-pool")
    grade_both_ways(course, ASSIGNMENT, [
        # groups=1: a (C, C, 2, 2) kernel of ones sums the channels; every shape stays right.
        Mistake("deconv-groups-1", {"deconv": variant(deconv, "groups=channels,", "")},
                loses=["deconv-values"]),
        # PyTorch's floor instead of Caffe's ceil: 120 instead of 121 for the stem.
        Mistake("pool-floor", {"caffe-pool": variant(
            pool, "int(math.ceil((n + 2 * padding - kernel) / stride)) + 1",
            "(n + 2 * padding - kernel) // stride + 1")}, loses=["caffe-pool-tests"]),
        # The documented attributes typed in instead of read: the hidden exports catch it.
        Mistake("resize-hard-coded", {"onnx-resize": HARD_CODED}, loses=["onnx-resize-tests"]),
    ])
