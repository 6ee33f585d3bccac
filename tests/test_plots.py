"""The pyramid drawing and the activation plot: what they label comes from the shape engine,
padding is shaded only where there is padding, and the README picture is up to date."""
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

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
PHOTO = reference_shapes()["image"][1:]      # the trace's photo (H, W)
PADDED = reference_shapes()["padded"][2:]    # ... padded to a multiple of 32


def titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def shaded(fig):
    """Rectangles drawn in the padding colour, per axes."""
    pad = to_rgba(plots.PAD_COLOR)[:3]
    return [[p for p in ax.patches if p.get_facecolor()[:3] == pytest.approx(pad)]
            for ax in fig.axes if ax.get_visible()]


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
