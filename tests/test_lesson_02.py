"""Stage 2 (conv arithmetic, FrozenBatchNorm2d, the stem) grades both ways: full marks for the
solution, 0 for the blank release, and each typical mistake loses exactly its points."""
import pytest

from conftest import Mistake, grade_both_ways

CEIL_MODE = '''
import math
def conv_out(n, k, s=1, p=0):
    return math.ceil((n + 2 * p - k) / s) + 1          # Caffe's pooling rounds up
'''

NO_PLUS_ONE_CONV = '''
def conv_out(n, k, s=1, p=0):
    return (n + 2 * p - k) // s                          # counts the moves, not the places
'''

PREDICT_NO_PLUS_ONE = '''
def predict_stem(height, width):
    h, w = (height + 2 * 3 - 7) // 2, (width + 2 * 3 - 7) // 2          # forgets the + 1
    return {"conv1": (1, 64, h, w), "stem": (1, 64, (h + 2 - 3) // 2, (w + 2 - 3) // 2)}
'''

PREDICT_CEIL = '''
import math
def predict_stem(height, width):
    h, w = math.ceil((height - 1) / 2) + 1, math.ceil((width - 1) / 2) + 1
    return {"conv1": (1, 64, h, w), "stem": (1, 64, math.ceil((h - 1) / 2) + 1, math.ceil((w - 1) / 2) + 1)}
'''

PREDICT_NO_POOL = '''
def predict_stem(height, width):
    h, w = conv_out(height, 7, 2, 3), conv_out(width, 7, 2, 3)
    return {"conv1": (1, 64, h, w), "stem": (1, 64, h, w)}                # forgets the max-pool
'''

PREDICT_RUNS_LAYERS = '''
import torch
def predict_stem(height, width):
    conv = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False, device="meta")
    c1 = conv(torch.empty(1, 3, height, width, device="meta"))
    out = torch.nn.MaxPool2d(3, 2, 1)(c1)
    return {"conv1": tuple(c1.shape), "stem": tuple(out.shape)}
'''

PREDICT_ENGINE = '''
import fpnlab.shapes
def predict_stem(height, width):
    c = fpnlab.shapes.conv_out
    h, w = c(height, 7, 2, 3), c(width, 7, 2, 3)
    return {"conv1": (1, 64, h, w), "stem": (1, 64, c(h, 3, 2, 1), c(w, 3, 2, 1))}
'''

WITH_EPS = '''
import torch
from torch import nn
class FrozenBatchNorm2d(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))
    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()    # torchvision's eps
        bias = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
'''

BN_BY_VARIANCE = (WITH_EPS.replace("(self.running_var + 1e-5).rsqrt()", "self.running_var.reciprocal()")
                          .replace("# torchvision's eps", "# divides by the variance"))

TORCHVISION_BN = '''
import torch
from torch import nn
import torchvision
class FrozenBatchNorm2d(torchvision.ops.FrozenBatchNorm2d):
    def __init__(self, n):
        super().__init__(n, eps=0.0)
'''

NO_RELU = '''
import torch.nn.functional as F
class StemWithFixedBatchNorm(nn.Module):
    def __init__(self, out_channels=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(out_channels)
    def forward(self, x):
        return F.max_pool2d(self.bn1(self.conv1(x)), kernel_size=3, stride=2, padding=1)
'''

# conv_out redefined (wrong) in a later answer cell, under the name the conv tests' judges used
# to read: the judges read the engine's, so only the prediction built on it loses
REDEFINES_CONV_OUT = '''
def conv_out(n, k, s=1, p=0):
    return (n + 2 * p - k) // s
def predict_stem(height, width):
    h, w = conv_out(height, 7, 2, 3), conv_out(width, 7, 2, 3)
    return {"conv1": (1, 64, h, w), "stem": (1, 64, conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1))}
'''

POOL_NO_PADDING = NO_RELU.replace("self.bn1(self.conv1(x))", "F.relu(self.bn1(self.conv1(x)))") \
                         .replace("padding=1)", "padding=0)")

POOL_CEIL = NO_RELU.replace("self.bn1(self.conv1(x))", "F.relu(self.bn1(self.conv1(x)))") \
                   .replace("padding=1)", "padding=1, ceil_mode=True)")   # Caffe's rounding

TORCHVISION_STEM = '''
from functools import partial
import torch.nn.functional as F
import torchvision
class StemWithFixedBatchNorm(nn.Module):
    def __init__(self, out_channels=64):
        super().__init__()
        tv = torchvision.models.resnet50(norm_layer=partial(torchvision.ops.FrozenBatchNorm2d, eps=0.0))
        self.conv1, self.bn1 = tv.conv1, tv.bn1                # torchvision's ResNet stem
    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
'''


@pytest.mark.slow
def test_lesson_02_grades_both_ways(course):
    grade_both_ways(course, "02-stem", [
        Mistake("ceil-mode", {"conv-out": CEIL_MODE}, loses=["conv-trace", "conv-sweep"]),
        Mistake("no-plus-one", {"conv-out": NO_PLUS_ONE_CONV}, loses=["conv-trace", "conv-sweep"]),
        Mistake("predict-no-plus-one", {"predict-stem": PREDICT_NO_PLUS_ONE}, loses=["stem-predicted"]),
        Mistake("predict-ceil", {"predict-stem": PREDICT_CEIL}, loses=["stem-predicted"]),
        # predict_stem may call the learner's conv_out: this one does, and forgets the max-pool
        Mistake("predict-no-pool", {"predict-stem": PREDICT_NO_POOL}, loses=["stem-predicted"]),
        Mistake("predict-runs-layers", {"predict-stem": PREDICT_RUNS_LAYERS}, loses=["stem-predicted"]),
        Mistake("predict-engine", {"predict-stem": PREDICT_ENGINE}, loses=["stem-predicted"]),
        Mistake("bn-eps", {"frozen-bn": WITH_EPS}, loses=["bn-values"]),
        # the stem is built on the learner's batch norm: its values show the same mistake
        Mistake("bn-by-variance", {"frozen-bn": BN_BY_VARIANCE}, loses=["bn-values", "stem-values"]),
        Mistake("torchvision-bn", {"frozen-bn": TORCHVISION_BN},
                loses=["bn-structure", "bn-values", "stem-structure", "stem-shape", "stem-values"]),
        Mistake("no-relu-and-conv-out-redefined", {"stem": NO_RELU, "predict-stem": REDEFINES_CONV_OUT},
                loses=["stem-values", "stem-predicted"]),
        Mistake("pool-no-padding", {"stem": POOL_NO_PADDING}, loses=["stem-shape", "stem-values"]),
        Mistake("pool-ceil", {"stem": POOL_CEIL}, loses=["stem-shape", "stem-values"]),
        Mistake("torchvision-stem", {"stem": TORCHVISION_STEM},
                loses=["stem-structure", "stem-shape", "stem-values"]),
    ])


def test_exact_fp32_switches_tf32_off_and_restores_it():
    import torch

    from fpnlab.checks import exact_fp32

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        with exact_fp32():
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
