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


# ----------------------------------------------------------------------------- dataflow diagrams
def texts(fig):
    """Every visible, non-empty text on a figure, as drawn."""
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def words(fig) -> str:
    return "\n".join(t.get_text() for t in texts(fig))


def chw(shape) -> str:
    c, h, w = shape[-3:]
    return f"{c} x {h} x {w}"


#: the engine's stages each drawing must label
DIAGRAM_STAGES = {
    "stem": ("padded", "stem"),
    "bottleneck": ("C2", "C3"),
    "stage": ("stem", "C2", "C3", "C4", "C5"),
    "top-down": ("C2", "C3", "C4", "C5", "P3", "P4", "P5", "fpn_inner4",
                 "fpn_inner3_upsample", "fpn_inner2_upsample"),
    "p6p7": ("C5", "P5", "P6", "P7"),
    "backbone": ("padded", "stem", "C2", "C3", "C4", "C5") + LEVELS,
}
DIAGRAM_CASES = {"trace": (PHOTO, REFERENCE),
                 "600x1500, 256 channels": ((600, 1500), REFERENCE.with_(out_channels=256))}


@pytest.mark.parametrize("name", plots.DIAGRAMS)
def test_each_diagram_draws_a_figure_of_notebook_width(name):
    import matplotlib._pylab_helpers as pylab

    managers = pylab.Gcf.get_num_fig_managers()
    fig = plots.diagram(name)
    assert isinstance(fig, plots.Figure)
    assert pylab.Gcf.get_num_fig_managers() == managers      # no pyplot state: shown once
    assert 9 <= fig.get_size_inches()[0] <= 10
    png = plots.figure_png(fig, dpi=plots.DPI)
    assert png.startswith(PNG) and 600 <= pixels(png).shape[1] <= 1000
    assert all(t.get_fontsize() >= 12 for t in texts(fig))
    # the same drawing for the default size and for the trace's photo given explicitly
    assert words(fig) == words(plots.diagram(name, *PHOTO))


@pytest.mark.parametrize("case", list(DIAGRAM_CASES))
@pytest.mark.parametrize("name", plots.DIAGRAMS)
def test_diagram_labels_are_the_engine_shapes(name, case):
    hw, cfg = DIAGRAM_CASES[case]
    shapes = stage_shapes(*hw, cfg, internals=True)
    text = words(plots.diagram(name, *hw, cfg))
    for stage in DIAGRAM_STAGES[name]:
        assert chw(shapes[stage]) in text, (name, stage, chw(shapes[stage]))
    st = strides(shapes)
    if name == "backbone":
        for stage in ("stem", "C2", "C3", "C4", "C5") + LEVELS:
            assert f"{stage}, stride {st[stage]}" in text
    if name == "bottleneck":        # the two places the stride can go change conv1's output
        from fpnlab.shapes import RESNET50_WIDTHS

        width = RESNET50_WIDTHS[1]
        assert f"A: {chw((width,) + shapes['C3'][-2:])}" in text
        assert f"B: {chw((width,) + shapes['C2'][-2:])}" in text
        assert "stride_in_1x1 True" in text and "stride_in_1x1 False" in text
    if name in ("top-down", "p6p7"):
        assert f"-> {cfg.out_channels}" in text


CODE_LIKE = [r"\([^)]*=", r"\bnn\.", r"\bF\.", r"\btorch\.", r"==", r"interpolate", r"Sequential"]


@pytest.mark.parametrize("name", plots.DIAGRAMS)
def test_diagrams_use_words_not_code(name):
    import re

    for t in texts(plots.diagram(name)):
        for pattern in CODE_LIKE:
            assert not re.search(pattern, t.get_text()), (name, pattern, t.get_text())


@pytest.mark.parametrize("name", plots.DIAGRAMS)
def test_diagram_text_never_overlaps_and_stays_in_its_box(name):
    """No two texts overlap, every text lies on the figure, and a text drawn on a box fits
    inside it (for the trace's photo and for a large square one)."""
    import itertools

    from matplotlib.patches import Circle, FancyBboxPatch

    for hw in (PHOTO, (1333, 1333)):
        fig = plots.diagram(name, *hw)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        drawn = [(t.get_text(), t.get_window_extent(renderer)) for t in texts(fig)]
        for (a, ea), (b, eb) in itertools.combinations(drawn, 2):
            assert not ea.overlaps(eb), (name, hw, a, b)
        for text, e in drawn:
            assert 0 <= e.x0 and e.x1 <= fig.bbox.width and 0 <= e.y0 and e.y1 <= fig.bbox.height
        boxes = [p.get_window_extent(renderer) for p in fig.axes[0].patches
                 if isinstance(p, (FancyBboxPatch, Circle))]
        for text, e in drawn:
            for b in boxes:
                if b.contains((e.x0 + e.x1) / 2, (e.y0 + e.y1) / 2) and text != "+":
                    assert (b.x0 + 2 <= e.x0 and e.x1 <= b.x1 - 2
                            and b.y0 + 1 <= e.y0 and e.y1 <= b.y1 - 1), (name, hw, text)


def test_p6_reads_what_the_use_p5_rule_says():
    from matplotlib.patches import FancyArrowPatch

    def arrows(cfg):
        fig = plots.diagram("p6p7", config=cfg)
        styles = {p.get_gid(): p.get_linestyle() in ("-", "solid")
                  for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch) and p.get_gid()}
        return styles, words(fig)

    solid, text = arrows(REFERENCE)                                # 2048 -> 1024: C5
    assert solid == {"p6-from-C5": True, "p6-from-P5": False}
    assert "use_P5 rule" in text
    assert f"{REFERENCE.p6_in_channels} -> {REFERENCE.out_channels}" in text
    for cfg in (REFERENCE.with_(p6_from="P5"), REFERENCE.with_(out_channels=2048)):
        solid, text = arrows(cfg)                                  # equal channels: P5
        assert solid == {"p6-from-C5": False, "p6-from-P5": True}, cfg
        assert f"{cfg.out_channels} -> {cfg.out_channels}" in text


def test_unknown_diagram_names_the_choices():
    with pytest.raises(ValueError) as info:
        plots.diagram("fpn")
    assert "'fpn'" in str(info.value)
    assert all(repr(name) in str(info.value) for name in plots.DIAGRAMS)


def test_diagram_shows_once_in_a_notebook_and_redraws_a_given_figure():
    from IPython.core.formatters import DisplayFormatter

    fig = plots.diagram("stem")
    data, _ = DisplayFormatter().format(fig)
    assert data["image/png"].startswith(PNG)                    # one image, without pyplot
    kept = plots.Figure()
    assert plots.diagram("p6p7", fig=kept) is kept
    assert plots.diagram("stem", fig=kept) is kept and len(kept.axes) == 1
    assert words(kept) == words(fig)


def test_body_diagrams_draw_without_padding_the_fpn_ones_say_why_not():
    cfg = REFERENCE.with_(size_divisible=0)
    with pytest.raises(ShapeError) as info:
        stage_shapes(*PHOTO, cfg)
    assert chw(info.value.shapes["C3"]) in words(plots.diagram("stage", config=cfg))
    assert chw(info.value.shapes["stem"]) in words(plots.diagram("stem", config=cfg))
    for name in ("top-down", "backbone", "p6p7"):
        with pytest.raises(ShapeError, match="top-down addition is impossible"):
            plots.diagram(name, config=cfg)
