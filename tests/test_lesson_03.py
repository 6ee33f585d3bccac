"""Stage 3 (the ResNet-50 body) grades both ways: full marks for the solution, 0 for the blank
release, and each typical mistake loses exactly the points of the test cells it breaks."""
import pytest

from conftest import Mistake, grade_both_ways

STRIDE_ALWAYS_IN_3X3 = '''
class Bottleneck(nn.Module):
    def __init__(self, in_channels, bottleneck_channels, out_channels, stride=1,
                 stride_in_1x1=True):
        super().__init__()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                FrozenBatchNorm2d(out_channels))
        # the switch is ignored: the stride always sits in the 3x3 (torchvision's v1.5)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(bottleneck_channels)
        self.conv2 = nn.Conv2d(bottleneck_channels, bottleneck_channels, 3, stride=stride,
                               padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_channels)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)
'''

BODY = '''
class ResNet(nn.Module):
    def __init__(self, stride_in_1x1=True, freeze_at=2):
        super().__init__()
        self.stem = make_stem()
        in_channels = STEM_OUT_CHANNELS
        for i, (width, count) in enumerate(zip(RESNET50_WIDTHS, RESNET50_BLOCKS)):
            setattr(self, f"layer{i + 1}", make_stage(in_channels, width, 4 * width, count,
                                                      1 if i == 0 else 2, stride_in_1x1))
            in_channels = 4 * width
        for index in range(FREEZE_RANGE):
            module = self.stem if index == 0 else getattr(self, f"layer{index}")
            for p in module.parameters():
                p.requires_grad = False

    def forward(self, x):
        x = self.stem(x)
        outputs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outputs.append(x)
        return outputs
'''
FREEZE_OFF_BY_ONE = BODY.replace("FREEZE_RANGE", "freeze_at - 1")

TORCHVISION_LAYERS = '''
import torchvision
from fpnlab.oracle import resnet50_frozen
class ResNet(nn.Module):
    def __init__(self, stride_in_1x1=True, freeze_at=2):
        super().__init__()
        tv = resnet50_frozen(stride_in_1x1)        # torchvision's stages, taken ready-made
        self.stem = make_stem()
        self.layer1, self.layer2, self.layer3, self.layer4 = tv.layer1, tv.layer2, tv.layer3, tv.layer4
        for index in range(freeze_at):
            module = self.stem if index == 0 else getattr(self, f"layer{index}")
            for p in module.parameters():
                p.requires_grad = False

    def forward(self, x):
        x = self.stem(x)
        outputs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outputs.append(x)
        return outputs
'''


@pytest.mark.slow
def test_lesson_03_grades_both_ways(course):
    grade_both_ways(course, "03-body", [
        Mistake("stride-in-3x3", {"bottleneck": STRIDE_ALWAYS_IN_3X3},
                loses=["bottleneck-values", "body-values"]),
        Mistake("freeze-off-by-one", {"resnet": FREEZE_OFF_BY_ONE}, loses=["freeze"]),
        Mistake("torchvision-layers", {"resnet": TORCHVISION_LAYERS},
                loses=["body-shapes", "body-keys", "body-values"]),
    ])

