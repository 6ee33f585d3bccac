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
    wrong["C3"] = REF["C3"][:-1] + (REF["C3"][-1] - 1,)
    wrong.pop("P7")
    d = diff(wrong, ref)
    assert [x.stage for x in d] == ["C3", "P7"]
    assert str(d[1]) == f"P7: expected {'x'.join(map(str, REF['P7']))}, got missing"
    assert first_difference(REF, ref) is None
    text = side_by_side(Trace.from_shapes(wrong), ref)
    assert "<- differs" in text.splitlines()[6] and "C3" in text.splitlines()[6]
    assert "1x1024x4x5" in ref.render()


# ----------------------------------------------------------------------------- MetaElementwise

def _meta(*shape, channels_last=False):
    t = torch.empty(*shape, device="meta")
    return t.to(memory_format=torch.channels_last) if channels_last else t


SHORTCUT_CASES = [
    ("mul broadcast", lambda a, b: a * b, (_meta(2, 8, 5, 7), _meta(1, 8, 1, 1))),
    ("add scalar", lambda a: a + 1e-5, (_meta(8),)),
    ("scalar minus", lambda a: 1 - a, (_meta(3, 4),)),
    ("sub reversed broadcast", lambda a, b: b - a, (_meta(4, 1), _meta(1, 5))),
    ("torch.add alpha", lambda a, b: torch.add(a, b, alpha=2), (_meta(2, 3), _meta(3))),
    ("div", lambda a, b: a / b, (_meta(2, 8, 5, 7), _meta(8, 1, 1))),
    ("rsqrt", lambda a: a.rsqrt(), (_meta(8),)),
    ("relu", lambda a: F.relu(a), (_meta(1, 4, 3, 3),)),
    ("channels_last kept", lambda a, b: a * b, (_meta(2, 8, 5, 7, channels_last=True), _meta(1, 8, 1, 1))),
    ("channels_last plus contiguous", lambda a, b: a + b,
     (_meta(2, 8, 5, 7, channels_last=True), _meta(2, 8, 5, 7))),
]


@pytest.mark.parametrize("name,fn,args", SHORTCUT_CASES, ids=[c[0] for c in SHORTCUT_CASES])
def test_meta_shortcut_gives_what_pytorch_gives(name, fn, args):
    from fpnlab.tracing import MetaElementwise

    want = fn(*args)
    with torch.no_grad(), MetaElementwise():
        got = fn(*args)
    assert got.device.type == "meta"
    assert (got.shape, got.dtype, got.stride()) == (want.shape, want.dtype, want.stride()), name


def test_meta_shortcut_in_place_returns_its_tensor_and_mismatches_raise_pytorchs_error():
    from fpnlab.tracing import MetaElementwise

    a, b = _meta(1, 16, 10, 12), _meta(1, 16, 10, 11)
    with pytest.raises(RuntimeError) as plain:
        a + b
    with torch.no_grad(), MetaElementwise():
        assert a.add_(_meta(16, 1, 1)) is a
        assert F.relu(a, inplace=True) is a
        with pytest.raises(RuntimeError) as shortcut:
            a + b
        with pytest.raises(RuntimeError):
            a.add_(_meta(2, 16, 10, 12))               # in place cannot grow a
    assert str(shortcut.value) == str(plain.value)
    assert "11" in str(plain.value) and "12" in str(plain.value)


def test_meta_shortcut_leaves_other_cases_to_pytorch():
    from fpnlab.tracing import MetaElementwise

    mixed = (torch.empty(3, device="meta", dtype=torch.float16), torch.empty(3, device="meta"))
    ints = torch.empty(3, device="meta", dtype=torch.int64)
    with torch.no_grad(), MetaElementwise():
        assert (mixed[0] + mixed[1]).dtype == torch.float32       # type promotion: PyTorch's
        assert ints.rsqrt().dtype == torch.float32
        cpu = torch.ones(3) * 2                                     # real tensors: real values
    assert cpu.tolist() == [2.0, 2.0, 2.0]
    w = torch.empty(3, device="meta", requires_grad=True)
    with MetaElementwise():
        assert (w * 2).grad_fn is not None                          # autograd: PyTorch's


def test_meta_trace_is_much_cheaper_than_the_plain_meta_forward_in_calls():
    """The short cut answers the backbone's elementwise calls (counted, not timed)."""
    from fpnlab import tracing

    calls = []
    real = tracing.MetaElementwise._shortcut

    def counting(kind, args):
        out = real(kind, args)
        calls.append(out is not None)
        return out

    model = oracle.backbone().to("meta").eval()
    try:
        tracing.MetaElementwise._shortcut = staticmethod(counting)
        shapes = trace_model(model, torch.empty(REF["padded"], device="meta")).shapes()
    finally:
        tracing.MetaElementwise._shortcut = staticmethod(real)
    assert shapes["P7"] == REF["P7"]
    assert len(calls) > 300 and all(calls)
