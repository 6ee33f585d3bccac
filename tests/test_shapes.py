"""The shape engine against the trace, against torchvision on the meta device, and its rules."""
import random

import pytest
import torch

from fpnlab import oracle
from fpnlab.reference import reference_shapes
from fpnlab.shapes import (Config, ShapeError, conv_out, pad_to, resized_size, stage_shapes,
                           strides, table)
from fpnlab.tracing import trace_model

PHOTO = reference_shapes()["image"][1:]      # the trace's photo (H, W)
MODEL_STAGES = ("stem", "C2", "C3", "C4", "C5", "P3", "P4", "P5", "P6", "P7")


def test_reference_image_gives_the_trace():
    ref = reference_shapes()
    assert stage_shapes(ref["image"][1], ref["image"][2]) == ref


def test_resize_truncates_where_rounding_would_differ():
    # find sizes whose exact long side has a fractional part >= 0.5: round() and int() differ there
    cases = [(h, w) for h in range(300, 480) for w in (512, 640, 700)
             if (480 * w / h) % 1 >= 0.5][:20]
    assert cases, "no size where rounding and truncation differ"
    for h, w in cases:
        exact = 480 * w / h
        assert resized_size(h, w) == (480, int(exact))
        assert resized_size(h, w)[1] != round(exact)


def test_resize_rules():
    assert resized_size(600, 400) == (720, 480)          # portrait: width is the short side
    assert resized_size(480, 700) == (480, 700)          # already the right size
    h, w = resized_size(100, 1000)                       # long side clamped to max_size
    assert w <= 1333 and h == int(round(1333 * 100 / 1000))
    h, w = PHOTO                                         # maskrcnn-benchmark's default 800
    assert resized_size(h, w, min_size=800) == (800, int(round(800 * w / h)))
    with pytest.raises(ValueError, match="height"):
        resized_size(0, 10)


def test_padding_and_conv_arithmetic():
    assert pad_to(561, 32) == 576 and pad_to(576, 32) == 576 and pad_to(561, 0) == 561
    assert conv_out(576, 7, 2, 3) == 288 and conv_out(288, 3, 2, 1) == 144
    for n in range(32, 700, 32):
        s = stage_shapes(n, n, Config(min_size=n, max_size=10 * n))
        assert s["C3"][-1] == -(-n // 8) and s["P7"][-1] == -(-n // 128)


def test_no_padding_makes_p3_impossible_and_names_both_shapes():
    ref = reference_shapes()
    with pytest.raises(ShapeError) as e:
        stage_shapes(ref["image"][1], ref["image"][2], Config(size_divisible=0))
    assert e.value.level == "P3"
    assert e.value.left[-1] == 72 and e.value.right[-1] == 71
    assert "P3" in str(e.value) and "x72" in str(e.value) and "x71" in str(e.value)


def test_out_channels_and_p6_source():
    s = stage_shapes(*PHOTO, Config(out_channels=256, p6_from="P5"))
    assert all(s[k][1] == 256 for k in ("P3", "P4", "P5", "P6", "P7"))
    assert Config(out_channels=256, p6_from="P5", in_channels_stage2=32).use_p5
    assert not Config().use_p5 and Config().p6_in_channels == 2048


@pytest.mark.parametrize("bad", [dict(min_size=0), dict(size_divisible=-1), dict(out_channels=1.5),
                                 dict(p6_from="C4"), dict(max_size=True)])
def test_bad_configurations_are_refused(bad):
    with pytest.raises(ValueError):
        Config(**bad)


def test_strides_and_table():
    s = stage_shapes(*PHOTO)
    st = strides(s)
    assert st["P3"] == 8 and st["P7"] == 128 and st["image"] is None
    text = table(s)
    assert "P7" in text and "1x1024x4x5" in text and "128" in text


@pytest.fixture(scope="module")
def meta_models():
    models = {}
    for out in (256, 1024):
        for p6 in ("C5", "P5"):
            cfg = Config(out_channels=out, p6_from=p6)
            with torch.device("meta"):
                models[(out, p6)] = oracle.backbone(cfg).eval()
    return models


def test_engine_agrees_with_torchvision_on_the_meta_device(meta_models):
    rng = random.Random(1234)
    checked = impossible = 0
    while checked < 200:
        out, p6 = rng.choice([(256, "C5"), (256, "P5"), (1024, "C5"), (1024, "P5")])
        cfg = Config(min_size=rng.choice([32, 64, 200, 480, 800]),
                     max_size=rng.choice([333, 1000, 1333]),
                     size_divisible=rng.choice([0, 1, 8, 16, 32, 64, 128]),
                     out_channels=out, p6_from=p6)
        h, w = rng.randint(32, 1600), rng.randint(32, 1600)
        rh, rw = resized_size(h, w, cfg.min_size, cfg.max_size)
        ph, pw = pad_to(rh, cfg.size_divisible), pad_to(rw, cfg.size_divisible)
        x = torch.empty(1, 3, ph, pw, device="meta")
        got = trace_model(meta_models[(out, p6)], x).shapes()
        try:
            want = stage_shapes(h, w, cfg)
        except ShapeError as e:
            # torchvision upsamples to the lateral's size and survives; x2 nearest would not:
            # the sizes it reports must be the ones that fail to double.
            impossible += 1
            k = int(e.level[1])              # P4: C4 vs 2 x C5; P3: C3 vs 2 x C4
            lower, upper = got[f"C{k}"], got[f"C{k + 1}"]
            assert (2 * upper[2], 2 * upper[3]) != (lower[2], lower[3])
            continue
        checked += 1
        assert got["padded"] == want["padded"]
        for stage in MODEL_STAGES:
            assert got[stage] == want[stage], (h, w, cfg, stage)
    assert impossible > 0
