"""Stage 7 (deployment) grades both ways: full marks, zero, and exactly the points of each mistake."""
import pytest

from conftest import Mistake, grade_both_ways, variant
from conftest import answer as _answer

ASSIGNMENT = "07-deployment"


def answer(course, grade_id):
    return _answer(course, ASSIGNMENT, grade_id)


def with_body(source: str, body: str) -> str:
    """The answer cell with its solution region replaced by ``body`` (the signature stays)."""
    start, end = source.index("### BEGIN SOLUTION"), source.index("### END SOLUTION")
    return source[:start] + "### BEGIN SOLUTION\n" + body.rstrip("\n") + "\n    " + source[end:]


HARD_CODED = '''def resize_attributes(onnx_path):
    return {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
'''

# Delegation: the layer Caffe lacks, returned as is.
UPSAMPLE = "    return nn.Upsample(scale_factor=2, mode='nearest')"

# A real ConvTranspose2d (default: one group, random weights, a bias) whose forward is replaced
# by interpolation: its own outputs are right, the layer is not.
FORWARD_SWAPPED = '''    import torch.nn.functional as F
    deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
    deconv.forward = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")
    return deconv'''

# Delegation: torch's own rounding-up pooling, run on the meta device.
POOL_BY_TORCH = '''    with torch.device("meta"):
        x = torch.empty(1, 1, n, n)
        return torch.nn.functional.max_pool2d(x, kernel, stride, padding, ceil_mode=True).shape[-1]'''

# Delegation: fpnlab's conv arithmetic for every size (the engine is refused).
PREDICT_BY_ENGINE = '''    from fpnlab.shapes import conv_out
    h, w = conv_out(height, 7, 2, 3), conv_out(width, 7, 2, 3)
    return {k: (1, 64, h, w) for k in ("conv1", "stem", "C2", "C3", "C4", "C5")}'''

# PyTorch's rule carried over: pad to the next multiple of 32.
PAD_TO_32 = "    return -(-n // 32) * 32"


def predicted_at_trace_size(course) -> str:
    """A prediction typed in for the trace's padded size only (computed here by the solution)."""
    from fpnlab.reference import reference_shapes

    namespace = {}
    exec(answer(course, "caffe-predict"), namespace)
    _, _, h, w = reference_shapes()["padded"]
    return f"    return {namespace['predict_caffe_body'](h, w)!r}"


@pytest.mark.slow
def test_deployment_grades_both_ways(course):
    deconv, pool = answer(course, "deconv"), answer(course, "caffe-pool")
    predict, pad = answer(course, "caffe-predict"), answer(course, "caffe-pad")
    grade_both_ways(course, ASSIGNMENT, [
        # groups=1: a (C, C, 2, 2) kernel of ones sums the channels; every shape stays right.
        Mistake("deconv-groups-1", {"deconv": variant(deconv, "groups=channels,", "")},
                loses=["deconv-values"]),
        # Kernel 4, padding 1: the size is right, the footprints overlap and add up.
        Mistake("deconv-overlap", {"deconv": variant(
            deconv, "kernel_size=2, stride=2,", "kernel_size=4, stride=2, padding=1,")},
                loses=["deconv-values"]),
        # Kernel 3 without padding: 2n + 1, every shape one too long.
        Mistake("deconv-kernel-3", {"deconv": variant(deconv, "kernel_size=2,", "kernel_size=3,")},
                loses=["deconv-shapes", "deconv-values"]),
        # nn.Upsample gives the right values, but it is not the Deconvolution: both cells lose.
        Mistake("deconv-upsample", {"deconv": with_body(deconv, UPSAMPLE)},
                loses=["deconv-shapes", "deconv-values"]),
        # The judge runs the layer's own weights through conv_transpose2d, not its forward.
        Mistake("deconv-forward-swapped", {"deconv": with_body(deconv, FORWARD_SWAPPED)},
                loses=["deconv-values"]),
        # PyTorch's floor instead of Caffe's ceil: 120 instead of 121 for the stem.
        Mistake("pool-floor", {"caffe-pool": variant(
            pool, "int(math.ceil((n + 2 * padding - kernel) / stride)) + 1",
            "(n + 2 * padding - kernel) // stride + 1")}, loses=["caffe-pool-tests"]),
        # Running torch's pooling, and calling fpnlab's engine for the prediction, are refused.
        Mistake("delegation", {"caffe-pool": with_body(pool, POOL_BY_TORCH),
                               "caffe-predict": with_body(predict, PREDICT_BY_ENGINE)},
                loses=["caffe-pool-tests", "caffe-predict-tests"]),
        # The prediction made with PyTorch's stem (its max-pool rounding down).
        Mistake("predict-floor", {"caffe-predict": variant(
            predict, "stem = -(-(conv1 + 2 * 1 - 3) // 2) + 1", "stem = (conv1 + 2 * 1 - 3) // 2 + 1")},
                loses=["caffe-predict-tests"]),
        # Padding to a multiple of 32, PyTorch's rule: never enough with a rounding-up stem.
        Mistake("pad-to-32", {"caffe-pad": with_body(pad, PAD_TO_32)}, loses=["caffe-pad-tests"]),
        # Answers typed in for the visible case: the hidden sizes and exports catch them.
        Mistake("hard-coded", {"onnx-resize": HARD_CODED,
                               "caffe-predict": with_body(predict, predicted_at_trace_size(course))},
                loses=["onnx-resize-tests", "caffe-predict-tests"]),
    ])
