"""The pyramid drawing and the activation plot: what they label comes from the shape engine,
padding is shaded only where there is padding, the drawings are sized for reading on a screen,
a kept drawing redrawn for another size is the fresh drawing of that size, and the README picture
is up to date."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from fpnlab import plots
from fpnlab.reference import reference_shapes
from fpnlab.shapes import LEVELS, REFERENCE, ShapeError, stage_shapes, strides
from fpnlab.widgets import SIDE_RANGE

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
PHOTO = reference_shapes()["image"][1:]      # the trace's photo (H, W)
PADDED = reference_shapes()["padded"][2:]    # ... padded to a multiple of 32
SIDE_MAX = SIDE_RANGE[1]                     # the explorer's largest side


def titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def shaded(fig):
    """Rectangles drawn (visible) in the padding colour, per axes."""
    pad = to_rgba(plots.PAD_COLOR)[:3]
    return [[p for p in ax.patches
             if p.get_visible() and p.get_facecolor()[:3] == pytest.approx(pad)]
            for ax in fig.axes if ax.get_visible()]


def pixels(png: bytes):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)


def px_per_unit(fig, ax):
    """Screen pixels per data unit (per input pixel) of an axes, at the PNG's resolution."""
    fig.canvas.draw()
    (x0, _), (x1, _) = ax.transData.transform([(0, 0), (100, 0)])
    return abs(x1 - x0) / 100


@pytest.mark.parametrize("hw, cfg", [(PHOTO, REFERENCE),
                                     ((600, 1500), REFERENCE),
                                     (PHOTO, REFERENCE.with_(size_divisible=128,
                                                                  out_channels=256))])
def test_pyramid_labels_every_level_with_the_engine_shapes(hw, cfg):
    shapes = stage_shapes(*hw, cfg)
    st = strides(shapes)
    fig = plots.draw_pyramid(shapes)
    t = titles(fig)
    assert len(t) == 1 + len(LEVELS)
    ph, pw = shapes["padded"][2:]
    rh, rw = shapes["resized"][1:]
    note = "no padding" if (ph, pw) == (rh, rw) else f"+{ph - rh} rows, +{pw - rw} cols"
    assert t[0] == f"padded input {ph}x{pw}\nresized {rh}x{rw}; {note}"
    for title, lv in zip(t[1:], LEVELS):
        c, h, w = shapes[lv][1:]
        assert title.startswith(f"{lv}: {c} x {h} x {w}, stride {st[lv]}")
        assert f"grid {h * st[lv]}x{w * st[lv]} px" in title
    assert plots.figure_png(fig).startswith(PNG)


def test_padding_is_shaded_only_where_there_is_padding():
    padded = plots.draw_pyramid(stage_shapes(*PHOTO))          # 480x561 -> 480x576
    assert all(len(s) == 1 for s in shaded(padded))              # a right strip, in every panel
    strip = shaded(padded)[0][0]
    assert (strip.get_x(), strip.get_width()) == (561, 576 - 561)
    exact = plots.draw_pyramid(stage_shapes(*PADDED))           # already a multiple of 32
    assert all(len(s) == 0 for s in shaded(exact))
    assert "no padding" in titles(exact)[0]


def test_grid_past_the_input_is_marked():
    shapes = stage_shapes(*PHOTO)                              # P6 8x9 cells of 64 = 512 > 480
    fig = plots.draw_pyramid(shapes)
    t = dict(zip(("padded",) + LEVELS, titles(fig)))
    assert "> input" in t["P6"] and "> input" in t["P7"]
    assert "> input" not in t["P3"] and "> input" not in t["P5"]


def test_pyramid_of_chosen_levels_only():
    shapes = stage_shapes(*PHOTO)
    fpn = plots.draw_pyramid(shapes, levels=("P3", "P4", "P5"))
    assert [t.split(":")[0] for t in titles(fpn)[1:]] == ["P3", "P4", "P5"]
    assert fpn._suptitle.get_text().startswith("ResNet-50-FPN P3-P5")
    alone = plots.draw_pyramid(shapes, levels=())
    assert len(titles(alone)) == 1 and titles(alone)[0].startswith("padded input 480x576")


def test_draw_pyramid_names_a_missing_stage():
    shapes = dict(stage_shapes(*PHOTO))
    del shapes["P6"]
    with pytest.raises(ValueError, match="shapes has no 'P6' stage"):
        plots.draw_pyramid(shapes)


def test_impossible_addition_draws_the_two_maps():
    cfg = REFERENCE.with_(size_divisible=0)
    with pytest.raises(ShapeError) as info:
        stage_shapes(*PHOTO, cfg)
    fig = plots.draw_shape_error(info.value)
    (title,) = titles(fig)
    assert title.startswith("P3: upsampled 60x72 (red) + lateral 60x71 (blue)")
    png = plots.pyramid_png(*PHOTO, cfg)
    assert png.startswith(PNG) and png != plots.pyramid_png(*PHOTO)


def test_activation_plot_checks_its_input():
    fig = plots.draw_activation(np.arange(12.0).reshape(3, 4), np.zeros((24, 32, 3)), stride=8,
                                image_hw=(20, 30), title="P3 channel 0")
    assert "P3 channel 0" in titles(fig)
    assert plots.figure_png(fig).startswith(PNG)
    with pytest.raises(ValueError, match=r"expected a 2-D map \(h, w\), got shape \(2, 3, 4\)"):
        plots.draw_activation(np.zeros((2, 3, 4)))


# ----------------------------------------------------------------------------- sized for reading
LESSON_DRAWINGS = {"01 padded photo": (), "04 P3-P5": ("P3", "P4", "P5"), "explorer": LEVELS}


@pytest.mark.parametrize("name", list(LESSON_DRAWINGS))
def test_drawings_are_sized_for_reading(name):
    """Labels at the notebook's text size, the padding's columns and P3's cells a few screen
    pixels wide at least, grid lines crisp, and a picture that fits a notebook's width."""
    from fpnlab.images import sample_image

    levels = LESSON_DRAWINGS[name]
    drawing = plots.PyramidDrawing(levels, image=sample_image())
    fig = drawing.update(stage_shapes(*PHOTO))
    px = fig.dpi / 72                                  # CSS pixels per point
    for ax in fig.axes:
        assert ax.title.get_fontsize() * px >= 13, (name, ax.get_title())
        labels = [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_visible()]
        assert all(t.get_fontsize() * px >= 12 for t in labels)
    assert fig._suptitle.get_fontsize() * px >= 14
    scale = px_per_unit(fig, fig.axes[0])
    pad_cols = PADDED[1] - reference_shapes()["resized"][2]
    assert pad_cols * scale >= (14 if not levels else 6), f"{name}: the padding is too thin"
    if "P3" in levels:
        p3 = fig.axes[1 + levels.index("P3")]
        cell = strides(stage_shapes(*PHOTO))["P3"] * px_per_unit(fig, p3)
        # lesson 04's 2 x 2 panels: cells of 5.5 px and more; six panels a row of three: 3 px
        assert cell >= (5.5 if len(levels) == 3 else 3), f"{name}: P3 cells of {cell:.1f} px"
        grid = p3.collections[0]
        assert not grid.get_antialiased()[0] and grid.get_linewidth()[0] * px >= 1
    png = drawing.png()
    h, w = pixels(png).shape[:2]
    assert 600 <= w <= 1000, f"{name}: {w} px wide"
    # the hatched padding is visible: its strip differs from the photo beside it
    img = pixels(png)
    ax = fig.axes[0]
    (x_img, y), (x_pad, _) = ax.transData.transform(
        [(reference_shapes()["resized"][2] - 30, 100), (PADDED[1] - 4, 100)])
    row = int(h - y)
    assert np.abs(img[row, int(x_pad)] - img[row, int(x_img)]).sum() > 30


def test_a_kept_drawing_redrawn_is_the_fresh_drawing_of_that_size():
    from fpnlab.images import sample_image

    photo = sample_image()
    kept = plots.PyramidDrawing(image=photo)
    first = kept.png(stage_shapes(*PHOTO))
    artists = [id(a) for ax in kept.fig.axes for a in ax.get_children()]
    for hw in ((600, 1500), (1333, 1333), PHOTO):
        png = kept.png(stage_shapes(*hw))
        fresh = plots.PyramidDrawing(image=photo).png(stage_shapes(*hw))
        a, b = pixels(png), pixels(fresh)
        assert a.shape == b.shape and np.abs(a - b).max() == 0, hw
    assert [id(a) for ax in kept.fig.axes for a in ax.get_children()] == artists   # same artists
    assert png == first
    with pytest.raises(ValueError, match="nothing drawn yet"):
        plots.PyramidDrawing().png()


def test_a_kept_error_drawing_redrawn_is_the_fresh_one():
    errors = []
    for hw in (PHOTO, (600, 1500)):
        with pytest.raises(ShapeError) as info:
            stage_shapes(*hw, REFERENCE.with_(size_divisible=0))
        errors.append(info.value)
    kept = plots.ShapeErrorDrawing()
    kept.png(errors[0])
    assert kept.png(errors[1]) == plots.ShapeErrorDrawing().png(errors[1])
    assert kept.png(errors[0]) == plots.pyramid_png(*PHOTO, REFERENCE.with_(size_divisible=0))


def test_tall_and_wide_photos_keep_the_figure_in_bounds():
    for hw in ((SIDE_MAX, 32), (300, SIDE_MAX)):
        h, w = pixels(plots.pyramid_png(*hw)).shape[:2]
        assert w <= 1000 and h <= 1000, (hw, w, h)


def test_command_line_writes_the_picture(tmp_path, capsys):
    out = tmp_path / "pyramid.png"
    assert plots.main([str(out)]) == 0
    assert out.read_bytes().startswith(PNG)
    assert plots.main([]) == 2
    assert "usage: python -m fpnlab.plots OUT.png" in capsys.readouterr().err


def test_readme_picture_is_up_to_date(tmp_path):
    """docs/pyramid.png is what `python -m fpnlab.plots docs/pyramid.png` makes today."""
    committed = ROOT / "docs" / "pyramid.png"
    regenerate = "python -m fpnlab.plots docs/pyramid.png"
    assert committed.exists(), f"docs/pyramid.png is missing: {regenerate}"
    fresh = tmp_path / "pyramid.png"
    plots.readme_figure(str(fresh))
    a = np.asarray(Image.open(committed).convert("RGB"), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(fresh.read_bytes())).convert("RGB"), dtype=float)
    assert a.shape == b.shape, f"docs/pyramid.png is {a.shape}, a fresh one {b.shape}: {regenerate}"
    assert np.abs(a - b).mean() < 1.0, f"docs/pyramid.png is stale: {regenerate}"


def test_pyramid_image_is_a_static_png_output():
    shown = plots.pyramid_image(*PHOTO, levels=("P3", "P4", "P5"))
    assert shown.data == plots.pyramid_png(*PHOTO, levels=("P3", "P4", "P5"))
    assert shown.format == "png" and shown.data.startswith(PNG)
