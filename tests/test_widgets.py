"""The widgets' logic: set a control, the table says what the shape engine says; bad values show a
message and never raise; a slider step updates the table at once and the picture once the slider
settles. The widgets are driven without a kernel (their observers run in plain Python; the
explorer's picture thread runs too, and ``box.settle()`` waits for it), the pictures checked as
PNG bytes. How fast they react is measured by the browser test and the bench, not asserted."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from fpnlab import oracle, plots, tracing, widgets
from fpnlab.reference import reference_image_size, reference_shapes
from fpnlab.shapes import (LEVELS, REFERENCE, STAGES, ShapeError, format_shape, stage_shapes,
                           strides)

PNG = b"\x89PNG\r\n\x1a\n"
PHOTO = reference_shapes()["image"][1:]      # the trace's photo (H, W)
SIDE_RANGE = widgets.SIDE_RANGE


def engine_column(html_text):
    return {s: widgets.displayed_shape(html_text, s) for s in STAGES}


def expected_column(height, width, config=REFERENCE):
    return {s: format_shape(v) for s, v in stage_shapes(height, width, config).items()}


@pytest.fixture(scope="module")
def meta_backbone():
    return widgets.MetaModel(oracle.backbone)


# ----------------------------------------------------------------------------- explore (pure)
def test_explore_reference_rows_are_the_engine():
    res = widgets.explore(*PHOTO)
    assert res.ok and res.messages == []
    shapes = stage_shapes(*PHOTO)
    st = strides(shapes)
    assert [r.stage for r in res.rows] == list(STAGES)
    for r in res.rows:
        assert r.engine == shapes[r.stage]
        assert r.stride == st[r.stage]
        assert r.status == ""          # no model: nothing to compare


@pytest.mark.parametrize("controls", [
    dict(height=600, width=1500),
    dict(height=1600, width=32),
    dict(height=PHOTO[0], width=PHOTO[1], size_divisible=128),
    dict(height=PHOTO[0], width=PHOTO[1], out_channels=256),
    dict(height=PHOTO[0], width=PHOTO[1], p6_from="P5"),
    dict(height=700, width=900, min_size=800, max_size=1333),
    dict(height=700, width=900, min_size=800, max_size=900),
    dict(height=480, width=576, size_divisible=0),      # no padding needed: still possible
])
def test_setting_a_control_changes_the_table_as_the_engine_says(controls):
    box = widgets.shape_explorer(show_pyramid=False)
    before = box.table.value
    assert engine_column(before) == expected_column(*PHOTO)
    for name, value in controls.items():
        box.controls[name].value = value
    cfg = REFERENCE.with_(**{k: v for k, v in controls.items() if k not in ("height", "width")})
    expected = expected_column(controls["height"], controls["width"], cfg)
    assert engine_column(box.table.value) == expected
    if expected != expected_column(*PHOTO):
        assert box.table.value != before


def test_impossible_addition_is_shown_where_and_why():
    res = widgets.explore(*PHOTO, size_divisible=0)
    with pytest.raises(ShapeError) as info:
        stage_shapes(*PHOTO, REFERENCE.with_(size_divisible=0))
    err = info.value
    assert not res.ok and res.messages == []
    bad = [r for r in res.rows if r.status == "error"]
    assert [r.stage for r in bad] == [err.level] == ["P3"]
    assert format_shape(err.left) in bad[0].note and format_shape(err.right) in bad[0].note
    # the stages before the failure are still shown, as the engine computed them
    for r in res.rows:
        if r.stage in err.shapes and r.stage != err.level:
            assert r.engine == err.shapes[r.stage]
    html_text = widgets.explorer_html(res)
    assert widgets.displayed_shape(html_text, "P3") == "impossible"
    assert widgets.displayed_shape(html_text, "C3") == "1x512x60x71"
    assert widgets.displayed_shape(html_text, "P6") == "not reached"
    assert "top-down addition is impossible" in html_text
    # the widget shows it too, and the picture is the failure's
    box = widgets.shape_explorer()
    box.controls["size_divisible"].value = 0
    assert 'data-status="error"' in box.table.value
    assert box.settle()
    assert bytes(box.pyramid.value).startswith(PNG) and box.pyramid.layout.display is None
    assert "the impossible top-down addition at P3" in box.caption.value


@pytest.mark.parametrize("name, value, message", [
    ("height", 10, "height must be between 32 and 1600, got 10"),
    ("height", 0, "height must be between 32 and 1600, got 0"),
    ("width", -3, "width must be between 32 and 1600, got -3"),
    ("width", 5000, "width must be between 32 and 1600, got 5000"),
    ("min_size", 0, "min_size must be between 32 and 1600, got 0"),
    ("max_size", 4000, "max_size must be between 32 and 3200, got 4000"),
])
def test_bad_control_values_show_a_message_and_never_raise(name, value, message):
    box = widgets.shape_explorer()
    box.controls[name].value = value            # would raise here if the view raised
    assert message in box.table.value
    assert "fpnlab-messages" in box.table.value and "fpnlab-shapes" not in box.table.value
    assert box.settle() and box.pyramid.layout.display == "none"
    if name in box.sliders:                     # the slider keeps a value it can show
        assert SIDE_RANGE[0] <= box.sliders[name].value <= SIDE_RANGE[1]
    box.controls[name].value = getattr(REFERENCE, name, PHOTO[0] if name == "height" else PHOTO[1])
    assert "fpnlab-messages" not in box.table.value
    assert engine_column(box.table.value) == expected_column(*PHOTO)
    assert box.settle() and box.pyramid.layout.display is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(height="tall"), "height must be a whole number, got 'tall'"),
    (dict(height=True), "height must be a whole number, got True"),
    (dict(size_divisible=3), "size_divisible must be one of (0, 1, 8, 16, 32, 64, 128), got 3"),
    (dict(out_channels=512), "out_channels must be one of (256, 1024), got 512"),
    (dict(p6_from="C4"), "P6 reads C5 or P5, got 'C4'"),
])
def test_explore_rejects_values_no_control_can_hold(kwargs, message):
    res = widgets.explore(**{"height": PHOTO[0], "width": PHOTO[1], **kwargs})
    assert res.messages == [message] and res.rows == [] and not res.ok
    assert message.replace("'", "&#x27;") in widgets.explorer_html(res)


def test_explorer_starts_from_a_config_and_refuses_one_its_controls_cannot_show():
    cfg = REFERENCE.with_(out_channels=256, size_divisible=64, min_size=800)
    box = widgets.shape_explorer(height=600, width=1500, config=cfg, show_pyramid=False)
    assert engine_column(box.table.value) == expected_column(600, 1500, cfg)
    with pytest.raises(ValueError,
                       match=r"config.out_channels is 512; the control offers \(256, 1024\)"):
        widgets.shape_explorer(config=REFERENCE.with_(out_channels=512))


# ----------------------------------------------------------------------------- sliders, settling
def test_sizes_default_to_the_trace_photo():
    assert tuple(PHOTO) == reference_image_size()
    assert (widgets.explore().height, widgets.explore().width) == tuple(PHOTO)
    assert engine_column(widgets.explorer_html(widgets.explore())) == expected_column(*PHOTO)
    box = widgets.shape_explorer(show_pyramid=False)
    assert (box.controls["height"].value, box.controls["width"].value) == tuple(PHOTO)
    assert (box.sliders["height"].value, box.sliders["width"].value) == tuple(PHOTO)
    assert bytes(widgets.pyramid().value) == plots.pyramid_png(*PHOTO)
    from PIL import Image
    other = Image.new("RGB", (PHOTO[1] + 100, PHOTO[0] + 40))     # an image's own size first
    box = widgets.shape_explorer(image=other, show_pyramid=False)
    assert (box.controls["height"].value, box.controls["width"].value) == (other.height,
                                                                           other.width)


def test_sliders_and_number_boxes_follow_each_other():
    box = widgets.shape_explorer(show_pyramid=False)
    for name in ("height", "width"):
        slider, number = box.sliders[name], box.controls[name]
        assert (slider.min, slider.max) == SIDE_RANGE and slider.continuous_update
        assert not number.continuous_update          # the box sends on Enter
        slider.value = 700
        assert number.value == 700
        number.value = 901
        assert slider.value == 901
        number.value = SIDE_RANGE[1] + 1             # out of range: the box's message, the
        assert slider.value == 901                   # slider stays where it was
        assert f"{name} must be between" in box.table.value
        slider.value = 640                           # the slider brings the box back in range
        assert number.value == 640 and "fpnlab-messages" not in box.table.value
    expected = expected_column(box.controls["height"].value, box.controls["width"].value)
    assert engine_column(box.table.value) == expected


def test_a_slider_step_updates_the_table_at_once_and_the_picture_when_it_settles():
    box = widgets.shape_explorer(settle_s=1.0)
    assert box.settle()
    first, drawn = bytes(box.pyramid.value), len(box.painter.timings)
    steps = [PHOTO[1] + 40 * i for i in range(1, 8)]
    for width in steps:                       # a drag: every step's table at once
        box.sliders["width"].value = width
        assert engine_column(box.table.value) == expected_column(PHOTO[0], width)
    assert box.painter.pending and bytes(box.pyramid.value) == first   # still settling
    assert box.settle()
    assert len(box.painter.timings) == drawn + 1        # one drawing for the whole drag ...
    assert f"{PHOTO[0]}x{steps[-1]} photo" in box.caption.value     # ... of its last step
    assert bytes(box.pyramid.value) == plots.pyramid_png(PHOTO[0], steps[-1])


def test_a_number_box_or_a_control_redraws_without_waiting_for_a_settle():
    box = widgets.shape_explorer(settle_s=30.0)
    assert box.settle(timeout=10)
    box.controls["height"].value = 600
    assert box.settle(timeout=10), "a box change waited for the sliders' settle time"
    assert "600x" in box.caption.value
    box.controls["out_channels"].value = 256
    assert box.settle(timeout=10)


def test_the_picture_thread_never_raises_and_says_what_failed(monkeypatch):
    box = widgets.shape_explorer()
    assert box.settle()

    def broken(self, shapes=None):
        raise RuntimeError("no canvas today")

    monkeypatch.setattr(plots.PyramidDrawing, "png", broken)
    box.controls["width"].value = 700
    assert box.settle()
    assert "explorer picture: RuntimeError: no canvas today" in box.caption.value
    assert engine_column(box.table.value) == expected_column(PHOTO[0], 700)   # the table is fine
    monkeypatch.undo()
    box.controls["width"].value = 720
    assert box.settle() and "x720 photo" in box.caption.value


def test_the_picture_thread_ends_when_idle_and_comes_back():
    box = widgets.shape_explorer()
    painter = box.painter
    assert box.settle()
    painter.idle_exit_s = 0.05
    box.controls["width"].value = 640                # wakes it up with the short idle time
    assert box.settle()
    deadline = time.monotonic() + 5
    while painter._thread is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert painter._thread is None, "the idle picture thread did not end"
    box.controls["width"].value = 660
    assert box.settle() and "x660 photo" in box.caption.value


@pytest.mark.parametrize("settle_s", [-1, "soon", True])
def test_explorer_refuses_a_bad_settle_time(settle_s):
    with pytest.raises(ValueError, match="settle_s must be a number of seconds >= 0"):
        widgets.shape_explorer(settle_s=settle_s)


# ----------------------------------------------------------------------------- with a model
def test_model_shapes_sit_next_to_the_engine(meta_backbone):
    res = widgets.explore(600, 1500, model=meta_backbone)
    shapes = stage_shapes(600, 1500)
    model_rows = [r for r in res.rows if r.stage not in ("image", "resized")]
    assert all(r.status == "ok" and r.model == shapes[r.stage] for r in model_rows)
    html_text = widgets.explorer_html(res)
    assert "shape (your model, meta)" in html_text and "differs" not in html_text


def test_a_model_that_survives_odd_sizes_is_explained(meta_backbone):
    res = widgets.explore(600, 1500, size_divisible=0, model=meta_backbone)
    assert res.shape_error.level == "P4"
    row = next(r for r in res.rows if r.stage == "P4")
    assert row.status == "error" and row.model == (1, 1024, 30, 75)   # torchvision: size=lateral
    assert "Your model produced P4 anyway" in widgets.explorer_html(res)
    fine = widgets.explore(600, 1500, model=meta_backbone)
    assert "anyway" not in widgets.explorer_html(fine)


def test_model_built_for_other_channels_is_flagged(meta_backbone):
    res = widgets.explore(*PHOTO, out_channels=256, model=meta_backbone)
    flagged = {r.stage for r in res.rows if r.status == "mismatch"}
    assert flagged == set(LEVELS)           # the model has 1024 channels, the controls say 256
    assert all(r.status == "ok" for r in res.rows if r.stage in ("padded", "stem", "C2", "C5"))
    assert "built with out_channels=1024; the controls say 256" in widgets.explorer_html(res)
    same = widgets.explore(*PHOTO, model=meta_backbone)
    assert "built with out_channels" not in widgets.explorer_html(same)


def test_a_wrong_model_is_flagged_from_the_first_wrong_stage():
    def no_maxpool():
        m = oracle.backbone()
        m.body.maxpool = nn.Identity()         # stem at stride 2 instead of 4
        return m

    res = widgets.explore(*PHOTO, model=widgets.MetaModel(no_maxpool))
    status = {r.stage: r.status for r in res.rows}
    assert status["padded"] == "ok"
    assert all(status[s] == "mismatch" for s in ("stem", "C2", "C3", "C4", "C5", *LEVELS))
    assert "&#10007; differs" in widgets.explorer_html(res)


class _ToyBody(nn.Module):
    """maskrcnn-benchmark's module names and strides, 1x1 convs only (shapes, not a ResNet)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1))
        chans = (64, 256, 512, 1024, 2048)
        for i in range(4):
            setattr(self, f"layer{i + 1}", nn.Conv2d(chans[i], chans[i + 1], 1, 1 if i == 0 else 2))

    def forward(self, x):
        out, x = [], self.stem(x)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            out.append(x)
        return out


class _ToyFPN(nn.Module):
    """Doubles the top-down map with scale_factor=2, as maskrcnn-benchmark does: odd sizes fail."""

    def __init__(self, out=256):
        super().__init__()
        self.inner = nn.ModuleList(nn.Conv2d(c, out, 1) for c in (512, 1024, 2048))
        self.p6, self.p7 = nn.Conv2d(2048, out, 3, 2, 1), nn.Conv2d(out, out, 3, 2, 1)

    def forward(self, feats):
        c3, c4, c5 = feats[1:]
        p5 = self.inner[2](c5)
        p4 = self.inner[1](c4) + nn.functional.interpolate(p5, scale_factor=2.0, mode="nearest")
        p3 = self.inner[0](c3) + nn.functional.interpolate(p4, scale_factor=2.0, mode="nearest")
        p6 = self.p6(c5)
        return p3, p4, p5, p6, self.p7(nn.functional.relu(p6))


def _toy_model():
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(body=_ToyBody(), fpn=_ToyFPN()))


def test_a_maskrcnn_style_model_fails_where_the_engine_says():
    toy = widgets.MetaModel(_toy_model)
    fine = widgets.explore(*PHOTO, out_channels=256, model=toy)
    assert fine.model_error is None
    assert all(r.status == "ok" for r in fine.rows if r.stage not in ("image", "resized"))
    broken = widgets.explore(*PHOTO, size_divisible=0, out_channels=256, model=toy)
    assert broken.shape_error.level == "P3"
    assert broken.model_error.startswith("RuntimeError: ")      # the model's own message
    assert "72" in broken.model_error and "71" in broken.model_error   # P3 widths
    text = widgets.explorer_html(broken)
    assert "your model raised" in text and "anyway" not in text


def test_a_model_that_fails_shows_its_error_and_never_raises():
    res = widgets.explore(*PHOTO, model=widgets.MetaModel(nn.Linear(3, 3)))
    assert res.model_error.startswith("ValueError: cannot tell where the stages are")
    assert res.rows and res.rows[-1].engine == stage_shapes(*PHOTO)["P7"]
    assert "your model raised" in widgets.explorer_html(res)
    box = widgets.shape_explorer(model="not a model")
    assert "cannot use this model: TypeError" in box.table.value
    assert widgets.displayed_shape(box.table.value, "P7") == "1x1024x4x5"


def test_widget_with_a_model_follows_the_controls(meta_backbone):
    box = widgets.shape_explorer(meta_backbone, show_pyramid=False)
    box.controls["height"].value = 600
    box.controls["width"].value = 1500
    expected = format_shape(stage_shapes(600, 1500)["P7"])
    assert widgets.displayed_shape(box.table.value, "P7") == expected
    assert f'<td class="fpnlab-model" style="padding:1px 10px">{expected}</td>' in box.table.value


def test_a_model_is_traced_once_per_padded_size(monkeypatch):
    calls = []
    real = tracing.meta_shapes

    def counting(*args, **kwargs):
        calls.append(args[1:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(tracing, "meta_shapes", counting)
    meta = widgets.MetaModel(oracle.backbone)
    padded = {tuple(stage_shapes(PHOTO[0], w)["padded"][2:]) for w in range(PHOTO[1], PHOTO[1] + 6)}
    rows = [widgets.explore(PHOTO[0], w, model=meta).rows for w in range(PHOTO[1], PHOTO[1] + 6)]
    assert len(calls) == len(padded) < len(rows)        # a drag's steps share padded sizes
    assert all(r.status in ("", "ok") for rs in rows for r in rs)
    broken = widgets.MetaModel(nn.Linear(3, 3))
    for _ in range(2):                                    # a failure is remembered too
        assert widgets.explore(*PHOTO, model=broken).model_error.startswith("ValueError")
    assert len(calls) == len(padded) + 1


def test_meta_copy_leaves_the_model_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = widgets.meta_copy(model)
    assert all(t.device.type == "meta" for t in copy.state_dict().values())
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not copy.training


# ----------------------------------------------------------------------------- pyramid widget
def test_pyramid_widget_is_a_png_that_changes_with_the_size():
    a, b = widgets.pyramid(*PHOTO), widgets.pyramid(600, 1500)
    pa, pb = bytes(a.value), bytes(b.value)
    assert pa.startswith(PNG) and pb.startswith(PNG) and pa != pb
    box = widgets.shape_explorer()
    assert box.settle()
    first = bytes(box.pyramid.value)
    box.controls["width"].value = 1500
    assert box.settle()
    assert bytes(box.pyramid.value).startswith(PNG) and bytes(box.pyramid.value) != first


# ----------------------------------------------------------------------------- trace diff
def _ref():
    return tracing.reference_trace()


def test_trace_diff_identical_traces_have_no_divergence():
    rows = widgets.trace_diff_rows(_ref(), _ref())
    assert all(r.status == "same" for r in rows)
    assert "Every stage you traced matches the reference." in widgets.trace_diff_html(_ref())


def test_trace_diff_highlights_the_first_divergence():
    shapes = _ref().shapes()
    right = shapes["C3"]
    shapes["C3"] = right[:-1] + (right[-1] - 1,)
    shapes["P3"] = shapes["P3"][:-1] + (shapes["P3"][-1] - 1,)
    rows = {r.stage: r.status for r in widgets.trace_diff_rows(tracing.Trace.from_shapes(shapes))}
    assert rows["C3"] == "first" and rows["P3"] == "differs"
    assert [s for s, v in rows.items() if v not in ("same",)] == ["C3", "P3"]
    text = widgets.trace_diff_html(tracing.Trace.from_shapes(shapes), _ref())
    shown = "x".join(map(str, shapes["C3"])), "x".join(map(str, right))
    assert f"First divergence at C3: yours {shown[0]}, reference {shown[1]}." in text
    assert "off by one" in text                     # checks.diagnose names the likely cause
    assert text.count("first divergence") == 1


def test_trace_diff_of_a_model_trace_names_missing_levels():
    shapes = {k: v for k, v in _ref().shapes().items() if k not in ("image", "resized", "P6", "P7")}
    rows = {r.stage: r.status for r in widgets.trace_diff_rows(shapes, _ref())}
    assert rows["image"] == rows["resized"] == "not traced"
    assert rows["P6"] == "first" and rows["P7"] == "differs"
    assert "Your trace has no such stage." in widgets.trace_diff_html(shapes, _ref())


def test_trace_diff_widget_shows_errors_instead_of_raising():
    w = widgets.trace_diff(42, _ref())
    assert "trace_diff: TypeError" in w.value
    ok = widgets.trace_diff(_ref())
    assert ok.value == widgets.trace_diff_html(_ref(), _ref())


# ----------------------------------------------------------------------------- feature maps
@pytest.fixture(scope="module")
def small_run():
    """The reference backbone at out_channels 256 on a small input: fast on two CPU cores."""
    torch.manual_seed(0)
    model = oracle.backbone(REFERENCE.with_(out_channels=256)).eval()
    cfg = REFERENCE.with_(min_size=96, max_size=160)
    from fpnlab.images import sample_image
    image = oracle.preprocess(sample_image(), cfg)
    return model, image, cfg


def test_feature_maps_levels_have_the_engine_shapes(small_run):
    model, image, cfg = small_run
    levels = widgets.compute_levels(model, image)
    (h, w), = image["image_sizes"]
    shapes = stage_shapes(*PHOTO, cfg.with_(out_channels=256))
    assert list(levels.maps) == list(LEVELS)
    for lv in LEVELS:
        assert tuple(levels.maps[lv].shape) == shapes[lv][1:]
        assert levels.maps[lv].device.type == "cpu"
    assert levels.image_hw == (h, w) == shapes["resized"][1:]
    assert levels.background.shape == tuple(shapes["padded"][2:]) + (3,)
    assert 0.0 <= levels.background.min() and levels.background.max() <= 1.0


def test_feature_maps_widget_redraws_and_bounds_the_channel(small_run):
    model, image, _ = small_run
    box = widgets.feature_maps(model, image)
    first = bytes(box.picture.value)
    assert first.startswith(PNG) and box.controls["channel"].max == 255
    box.controls["level"].value = "P6"
    assert bytes(box.picture.value).startswith(PNG) and bytes(box.picture.value) != first
    second = bytes(box.picture.value)
    box.controls["channel"].value = 7
    assert bytes(box.picture.value) != second
    with pytest.raises(ValueError, match="P6 has channels 0..255, got 256"):
        widgets.activation_png(box.levels, "P6", 256)
    with pytest.raises(ValueError, match="no level 'P2'"):
        widgets.activation_png(box.levels, "P2", 0)


def test_feature_maps_problems_show_a_message(small_run):
    model, image, _ = small_run
    on_meta = widgets.feature_maps(widgets.meta_copy(model), image)
    assert "not one on the meta device" in on_meta.children[0].value
    bad_image = widgets.feature_maps(model, "photo.jpg")
    assert "image must be a PIL image" in bad_image.children[0].value


# ----------------------------------------------------------------------------- the demo notebook
def test_demo_notebook_uses_every_widget_and_carries_no_outputs():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "explore" / "shape-explorer.ipynb"
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "fpnlab"
    assert "widgets" not in nb["metadata"], "widget state saved in the notebook"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    source = "\n".join("".join(c["source"]) for c in code)
    for call in ("widgets.shape_explorer(", "widgets.pyramid(", "widgets.feature_maps(",
                 "widgets.trace_diff("):
        assert call in source, f"the demo notebook does not use {call}...)"
    assert "pip install" not in source and "urlopen" not in source
