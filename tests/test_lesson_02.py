"""Stage 2 (conv arithmetic, FrozenBatchNorm2d, the stem) grades both ways: full marks for the
solution, 0 for the blank release, and each typical mistake loses exactly its points."""
import pytest

from conftest import Mistake, grade_both_ways

CEIL_MODE = '''
import math
def conv_out(n, k, s=1, p=0):
    return math.ceil((n + 2 * p - k) / s) + 1          # Caffe's pooling rounds up
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

POOL_NO_PADDING = NO_RELU.replace("self.bn1(self.conv1(x))", "F.relu(self.bn1(self.conv1(x)))") \
                         .replace("padding=1)", "padding=0)")


@pytest.mark.slow
def test_lesson_02_grades_both_ways(course):
    grade_both_ways(course, "02-stem", [
        Mistake("ceil-mode", {"conv-out": CEIL_MODE}, loses=["conv-trace", "conv-sweep"]),
        Mistake("bn-eps", {"frozen-bn": WITH_EPS}, loses=["bn-values"]),
        Mistake("torchvision-bn", {"frozen-bn": TORCHVISION_BN},
                loses=["bn-structure", "bn-values", "stem-structure"]),
        Mistake("no-relu", {"stem": NO_RELU}, loses=["stem-values"]),
        Mistake("pool-no-padding", {"stem": POOL_NO_PADDING}, loses=["stem-shape", "stem-values"]),
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
