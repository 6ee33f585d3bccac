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


# make_stage that takes the width from out_channels, as ResNet-50's stages allow (out = 4 x width):
# right for every ResNet-50 stage, wrong for any other.
STAGE_WIDTH_FROM_OUT = """
def make_stage(in_channels, bottleneck_channels, out_channels, block_count, first_stride,
               stride_in_1x1=True):
    blocks = []
    for i in range(block_count):
        blocks.append(Bottleneck(in_channels if i == 0 else out_channels, out_channels // 4,
                                 out_channels, first_stride if i == 0 else 1, stride_in_1x1))
    return nn.Sequential(*blocks)
"""

# a prediction that divides by the stride: right at the trace's 480 x 576, wrong at odd sizes
PREDICT_FLOOR = """
def predict_body(height, width):
    return {f"C{i + 2}": (1, 256 * 2 ** i, height // (4 * 2 ** i), width // (4 * 2 ** i))
            for i in range(4)}
"""

# the prediction asked of the shape engine
PREDICT_ENGINE = """
def predict_body(height, width):
    from fpnlab.shapes import REFERENCE, stage_shapes
    cfg = REFERENCE.with_(min_size=min(height, width), max_size=10 * max(height, width),
                          size_divisible=0)
    shapes = stage_shapes(height, width, cfg)
    return {k: shapes[k] for k in ("C2", "C3", "C4", "C5")}
"""

# helpers of the learner's own under the names the engine and the old helper cell use (conv_out,
# stage_shapes, rf_table, BODY_STAGES), wrong ones: the judges read their own
OWN_ENGINE_NAMES = """
def conv_out(n, k, s=1, p=0):
    return (n + 2 * p - k) // s
def stage_shapes(*args, **kwargs):
    raise RuntimeError("not the engine")
BODY_STAGES = ("C2",)
def rf_table(got, label):
    return got
def predict_body(height, width):
    h, w = conv_out(conv_out(height, 7, 2, 3), 3, 2, 1), conv_out(conv_out(width, 7, 2, 3), 3, 2, 1)
    shapes = {}
    for i in range(4):
        if i:
            h, w = conv_out(h, 1, 2, 0), conv_out(w, 1, 2, 0)
        shapes[f"C{i + 2}"] = (1, 256 * 2 ** i, h, w)
    return shapes
"""

# first_wrong as a function (05's form): accepted
FIRST_WRONG_FUNCTION = 'def first_wrong():\n    return "C5"\n'

# receptive fields added up without the product of the strides before each layer
RF_NO_STRIDE_PRODUCT = """
def receptive_field(layers):
    rf, jump = 1, 1
    for kernel, stride in layers:
        rf += kernel - 1
        jump *= stride
    return rf, jump
"""

BODY_RF = """
def body_receptive_fields(stride_in_1x1=True, blocks=RESNET50_BLOCKS):
    path = STEM
    fields = {}
    for i, count in enumerate(blocks):
        for j in range(count):
            stride = 2 if i > 0 and j == 0 else 1
            if IN_1X1:
                path = path + [(1, stride), (3, 1), (1, 1)]
            else:
                path = path + [(1, 1), (3, stride), (1, 1)]
        fields[f"C{i + 2}"] = receptive_field(path)
    return fields
"""
# the switch ignored: the stride always in the 3x3
RF_IGNORES_PLACEMENT = BODY_RF.replace("STEM", "[(7, 2), (3, 2)]").replace("IN_1X1", "False")
# the stem without its max-pool: receptive fields and strides both off
RF_NO_MAXPOOL = BODY_RF.replace("STEM", "[(7, 2)]").replace("IN_1X1", "stride_in_1x1")

# the receptive fields read from the course's own probe
RF_PROBE = """
def body_receptive_fields(stride_in_1x1=True, blocks=RESNET50_BLOCKS):
    from fpnlab.receptive import probe_body
    fields = probe_body(stride_in_1x1, blocks)
    return {k: fields[k] for k in ("C2", "C3", "C4", "C5")}
"""

# a guess: the first stage with a stride
FIRST_WRONG_GUESSED = 'first_wrong = "C3"\n'

# the port "fixed" the wrong way: every stage's stride put back in its 3x3 (torchvision's
# layout), which is not what stride_in_1x1=True asks for
FIX_WRONG_CONV = """
class FixedPort(MSRAPort):
    def move_strides(self):
        for stage in list(self.children())[2:]:
            first = stage[0]
            first.conv1.stride, first.conv2.stride = (1, 1), (2, 2)
"""


@pytest.mark.slow
def test_lesson_03_grades_both_ways(course):
    grade_both_ways(course, "03-body", [
        Mistake("stride-in-3x3", {"bottleneck": STRIDE_ALWAYS_IN_3X3},
                loses=["bottleneck-values", "body-values"]),
        Mistake("freeze-off-by-one", {"resnet": FREEZE_OFF_BY_ONE}, loses=["freeze"]),
        Mistake("torchvision-layers", {"resnet": TORCHVISION_LAYERS},
                loses=["body-shapes", "body-keys", "body-values", "freeze"]),
        Mistake("stage-width-from-out-and-predict-floor",
                {"make-stage": STAGE_WIDTH_FROM_OUT, "predict": PREDICT_FLOOR},
                loses=["stage-structure", "predict-body"]),
        Mistake("rf-no-stride-product-and-own-engine-names",
                {"rf-chain": RF_NO_STRIDE_PRODUCT, "predict": OWN_ENGINE_NAMES},
                loses=["receptive-field", "body-rf", "predict-body"]),
        Mistake("rf-ignores-placement-and-first-wrong-guessed",
                {"rf-body": RF_IGNORES_PLACEMENT, "bug-where": FIRST_WRONG_GUESSED},
                loses=["body-rf", "first-wrong"]),
        Mistake("rf-no-maxpool-and-fix-wrong-conv",
                {"rf-body": RF_NO_MAXPOOL, "bug-fix": FIX_WRONG_CONV,
                 "bug-where": FIRST_WRONG_FUNCTION},
                loses=["body-rf", "level-strides", "port-fix"]),
        Mistake("delegation-engine-and-probe", {"predict": PREDICT_ENGINE, "rf-body": RF_PROBE},
                loses=["predict-body", "body-rf", "level-strides"]),
    ])
