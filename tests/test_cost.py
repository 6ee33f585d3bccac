"""fpnlab.cost measures the FPN's cost on real modules (meta device): at the trace's size its
parameters are torchvision's and its figures bear out SPEC's, and it agrees with the conv
arithmetic at other sizes and channel counts."""
import math

import pytest

from fpnlab.cost import c_sizes, fpn_conv_costs, fpn_level_costs
from fpnlab.shapes import LEVELS, REFERENCE, stage_shapes


def _padded_shapes(h, w, out):
    """The shape engine at a padded size: the image already is the padded input."""
    cfg = REFERENCE.with_(min_size=min(h, w), max_size=10 ** 6, size_divisible=0, out_channels=out)
    return stage_shapes(h, w, cfg)


def test_the_trace_size_counts_what_torchvision_holds():
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from fpnlab.reference import reference_shapes

    ref = reference_shapes()
    h, w = ref["padded"][2:]
    out = ref["P3"][1]
    convs = fpn_conv_costs(h, w, out)
    levels = fpn_level_costs(h, w, out)
    # P3's 3x3 is the most expensive conv, and most of the pyramid's cost (SPEC section 2)
    assert max(convs, key=lambda n: convs[n]["macs"]) == "fpn_layer2"
    assert convs["fpn_layer2"]["macs"] > 0.6 * sum(v["macs"] for v in levels.values())
    assert levels["P3"]["bytes"] == 4 * math.prod(ref["P3"])           # fp32 output
    # 256 channels cost more than ten times less (SPEC section 2)
    small = fpn_level_costs(h, w, out // 4)
    assert sum(v["macs"] for v in levels.values()) > 10 * sum(v["macs"] for v in small.values())
    channels = [ref[c][1] for c in ("C3", "C4", "C5")]
    fpn = FeaturePyramidNetwork(channels, out)
    top = LastLevelP6P7(ref["C5"][1], out)
    fpn_params = sum(c["weight"] + c["bias"] for n, c in convs.items() if n.startswith("fpn_"))
    top_params = sum(c["weight"] + c["bias"] for n, c in convs.items() if n.startswith("top_"))
    assert fpn_params == sum(t.numel() for t in fpn.parameters())
    assert top_params == sum(t.numel() for t in top.parameters())


@pytest.mark.parametrize("h, w, out", [(320, 416, 1024), (352, 544, 512), (57, 89, 64),
                                       (800, 960, 256), (32, 32, 2048)])
def test_the_measurement_agrees_with_the_conv_arithmetic(h, w, out):
    shapes = _padded_shapes(h, w, out)
    assert c_sizes(h, w) == tuple(shapes[c][-2:] for c in ("C2", "C3", "C4", "C5"))
    cin = {"P3": 512, "P4": 1024, "P5": 2048}
    want = {}
    for level in LEVELS:
        n_out = math.prod(shapes[level][-2:])
        if level in cin:
            convs = [(cin[level], 1), (out, 3)]
        else:
            convs = [(2048 if level == "P6" else out, 3)]
        want[level] = {"params": sum(c * out * k * k + out for c, k in convs),
                       "macs": sum(c * out * k * k for c, k in convs) * n_out,
                       "bytes": 4 * out * n_out}
    assert fpn_level_costs(h, w, out) == want


def test_batch_and_element_size_scale_memory_and_work_not_parameters():
    one, two = fpn_level_costs(64, 96, 32), fpn_level_costs(64, 96, 32, batch=2,
                                                             bytes_per_element=2)
    for level in LEVELS:
        assert two[level]["params"] == one[level]["params"]
        assert two[level]["macs"] == 2 * one[level]["macs"]
        assert two[level]["bytes"] == one[level]["bytes"]
