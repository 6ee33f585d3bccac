"""torchvision as the oracle: the weight-name map both ways, copies that keep values equal."""
import pytest
import torch
from torch import nn

from fpnlab import oracle
from fpnlab.oracle import convert_state_dict, copy_weights, to_maskrcnn_key, to_torchvision_key
from fpnlab.shapes import Config

PAIRS = [
    ("body.stem.conv1.weight", "body.conv1.weight"),
    ("body.stem.bn1.running_var", "body.bn1.running_var"),
    ("stem.bn1.bias", "bn1.bias"),
    ("body.layer1.0.conv1.weight", "body.layer1.0.conv1.weight"),
    ("body.layer3.0.downsample.1.running_mean", "body.layer3.0.downsample.1.running_mean"),
    ("fpn.fpn_inner2.weight", "fpn.inner_blocks.0.0.weight"),
    ("fpn.fpn_inner4.bias", "fpn.inner_blocks.2.0.bias"),
    ("fpn.fpn_layer3.weight", "fpn.layer_blocks.1.0.weight"),
    ("fpn.top_blocks.p6.weight", "fpn.extra_blocks.p6.weight"),
    ("fpn_layer2.bias", "layer_blocks.0.0.bias"),
]


@pytest.mark.parametrize("mb,tv", PAIRS)
def test_key_map_both_directions(mb, tv):
    assert to_torchvision_key(mb) == tv
    assert to_maskrcnn_key(tv) == mb


def test_whole_backbone_state_dict_round_trips():
    with torch.device("meta"):
        model = oracle.backbone()
    tv = model.state_dict()
    mb = convert_state_dict(tv, "maskrcnn")
    assert "body.stem.conv1.weight" in mb and "fpn.fpn_inner2.weight" in mb
    assert "fpn.top_blocks.p7.bias" in mb and not any("inner_blocks" in k for k in mb)
    assert list(convert_state_dict(mb, "torchvision")) == list(tv)
    with pytest.raises(ValueError):
        convert_state_dict(tv, "caffe")


class MaskrcnnNamedFPNHead(nn.Module):
    """A module that uses maskrcnn-benchmark names (as a learner's would), to copy into."""

    def __init__(self, cin=(8, 16, 32), out=8):
        super().__init__()
        for k, c in zip((2, 3, 4), cin):
            self.add_module(f"fpn_inner{k}", nn.Conv2d(c, out, 1))
            self.add_module(f"fpn_layer{k}", nn.Conv2d(out, out, 3, padding=1))
        self.top_blocks = oracle.p6p7(cin[-1], out)


def test_copy_weights_torchvision_to_maskrcnn_and_back_keeps_values():
    torch.manual_seed(0)
    tv = oracle.fpn(out_channels=8, in_channels_stage2=4)
    for p in tv.parameters():
        nn.init.normal_(p)
    mb = MaskrcnnNamedFPNHead()
    unused = copy_weights(tv, mb)
    assert unused == []
    assert torch.equal(mb.fpn_inner3.weight, tv.inner_blocks[1][0].weight)
    assert torch.equal(mb.top_blocks.p7.bias, tv.extra_blocks.p7.bias)
    back = oracle.fpn(out_channels=8, in_channels_stage2=4)
    copy_weights(mb, back)
    for (k, a), (_, b) in zip(tv.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_copy_weights_refuses_missing_and_misshapen_keys_and_copies_nothing():
    src = oracle.fpn(out_channels=8, in_channels_stage2=4)
    dst = MaskrcnnNamedFPNHead(out=16)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match="fpn_inner2.weight"):
        copy_weights(src, dst)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())
    dst = nn.Sequential()
    dst.add_module("fpn_inner9", nn.Conv2d(1, 1, 1))
    with pytest.raises(KeyError, match="fpn_inner9"):
        copy_weights(src, dst)


def test_resnet_classifier_keys_are_reported_unused():
    src = oracle.resnet50_frozen()
    dst = oracle.body()
    unused = copy_weights(src, dst)
    assert sorted(unused) == ["fc.bias", "fc.weight"]


def test_stride_in_1x1_moves_the_stride_not_the_shapes():
    a, b = oracle.resnet50_frozen(True), oracle.resnet50_frozen(False)
    assert a.layer2[0].conv1.stride == (2, 2) and a.layer2[0].conv2.stride == (1, 1)
    assert b.layer2[0].conv1.stride == (1, 1) and b.layer2[0].conv2.stride == (2, 2)
    assert a.layer1[0].conv1.stride == (1, 1)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        oa = oracle.run_body(oracle.body(True).eval(), x)
        ob = oracle.run_body(oracle.body(False).eval(), x)
    assert [v.shape for v in oa.values()] == [v.shape for v in ob.values()]


def test_frozen_bn_has_no_eps_and_randomized_statistics():
    body = oracle.randomize_frozen_bn(oracle.body(), seed=3)
    bn = body.bn1
    assert bn.eps == 0.0
    assert not torch.all(bn.running_var == 1)
    assert sum(1 for m in body.modules() if type(m).__name__ == "FrozenBatchNorm2d") == 53
    convs = sum(m.weight.numel() for m in body.modules() if isinstance(m, nn.Conv2d))
    assert convs == 23_454_912          # SPEC: ResNet-50 body conv weights


def test_parameter_counts_of_fpn_and_p6p7():
    fpn = oracle.fpn()
    tops = sum(p.numel() for p in fpn.extra_blocks.parameters())
    assert tops == 28_313_600
    convs = sum(p.numel() for n, p in fpn.named_parameters() if not n.startswith("extra_blocks"))
    assert convs == 31_987_712


def test_p6_reads_p5_only_when_channels_agree():
    assert oracle.p6p7(2048, 1024).use_P5 is False
    assert oracle.p6p7(256, 256).use_P5 is True
    assert oracle.backbone(Config(out_channels=256, p6_from="P5")).fpn.extra_blocks.use_P5


def test_preprocess_is_bgr255_minus_mean_and_zero_padded():
    from fpnlab.images import sample_image
    img = sample_image()
    from fpnlab.reference import reference_shapes
    ref = reference_shapes()
    out = oracle.preprocess(img)
    assert tuple(out["padded"].shape) == tuple(ref["padded"])
    assert out["image_sizes"] == [tuple(ref["resized"][1:])]
    assert torch.all(out["padded"][..., ref["resized"][2]:] == 0)
    assert torch.equal(out["padded"][0, :, :, :561], out["resized"])
    import numpy as np
    from PIL import Image
    _, rh, rw = out["resized"].shape
    rgb = torch.from_numpy(np.array(img.resize((rw, rh), Image.BILINEAR))).float()
    for c, mean in enumerate(oracle.PIXEL_MEAN):      # BGR: channel 0 is blue
        assert torch.allclose(out["resized"][c], rgb[..., 2 - c] - mean, atol=1e-3)
