"""Forward-hook traces on the meta device and on the CPU, rendering, diffing."""
import pytest
import torch
import torch.nn.functional as F

from fpnlab import oracle
from fpnlab.reference import reference_shapes
from fpnlab.tracing import (MASKRCNN_POINTS, Trace, detect_points, diff, first_difference,
                            meta_shapes, record, reference_trace, side_by_side, trace_model)

REF = reference_shapes()


def test_meta_trace_of_the_oracle_is_the_reference():
    shapes = meta_shapes(oracle.backbone, *REF["padded"][2:])
    for stage in ("padded", "stem", "C2", "C3", "C4", "C5", "P3", "P4", "P5", "P6", "P7"):
        assert shapes[stage] == REF[stage], stage


def test_functional_calls_and_module_inputs_are_recorded_in_forward_order():
    model = oracle.fpn(out_channels=4, in_channels_stage2=4).eval()
    from collections import OrderedDict
    x = OrderedDict((str(i), torch.randn(1, c, s, s)) for i, (c, s) in enumerate([(8, 16), (16, 8), (32, 4)]))

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fpn = model

        def forward(self, _):
            return self.fpn(x)

    t = record(Wrap(), torch.empty(1), {"fpn.layer_blocks.1": "P4"}, input_stage=None,
               inputs={"fpn.layer_blocks.1": "eltwise_3"},
               calls={F.interpolate: ["fpn_inner3_upsample", "fpn_inner2_upsample"]})
    names = [e.stage for e in t.entries]
    assert names == ["fpn_inner3_upsample", "eltwise_3", "P4", "fpn_inner2_upsample"]
    assert t["fpn_inner3_upsample"] == (1, 4, 8, 8) and t["fpn_inner2_upsample"] == (1, 4, 16, 16)


class TinyMaskrcnnStyle(torch.nn.Module):
    """maskrcnn-benchmark's layout (body.stem, body.layerK, fpn returning a tuple) at toy size."""

    def __init__(self):
        super().__init__()
        body = torch.nn.Module()
        body.stem = torch.nn.Conv2d(3, 4, 3, 4, 1)
        for k in range(1, 5):
            setattr(body, f"layer{k}", torch.nn.Conv2d(4, 4, 3, 1 if k == 1 else 2, 1))
        self.body = body
        self.fpn = torch.nn.Identity()

    def forward(self, x):
        b = self.body
        x = b.stem(x)
        outs = []
        for k in range(1, 5):
            x = getattr(b, f"layer{k}")(x)
            outs.append(x)
        p = outs[1:]
        return self.fpn(tuple(p + [p[-1][..., ::2, ::2], p[-1][..., ::4, ::4]]))


def test_maskrcnn_names_are_detected_and_every_level_recorded():
    m = TinyMaskrcnnStyle()
    assert detect_points(m) is MASKRCNN_POINTS
    t = trace_model(m, torch.randn(1, 3, 64, 64))
    assert t["C5"] == (1, 4, 2, 2) and t["P3"] == (1, 4, 8, 8) and t["P7"] == (1, 4, 1, 1)
    with pytest.raises(ValueError, match="body.stem"):
        detect_points(torch.nn.Linear(1, 1))


def test_diff_side_by_side_and_render():
    ref = reference_trace()
    wrong = dict(REF)
    wrong["C3"] = (1, 512, 60, 71)
    wrong.pop("P7")
    d = diff(wrong, ref)
    assert [x.stage for x in d] == ["C3", "P7"]
    assert str(d[1]) == "P7: expected 1x1024x4x5, got missing"
    assert first_difference(REF, ref) is None
    text = side_by_side(Trace.from_shapes(wrong), ref)
    assert "<- differs" in text.splitlines()[6] and "C3" in text.splitlines()[6]
    assert "1x1024x4x5" in ref.render()
