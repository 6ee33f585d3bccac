"""Pictures of the pyramid: the padded image and P3..P7 as grids, and activations over the image.

Everything draws on a plain :class:`matplotlib.figure.Figure` (no pyplot state, no ipympl), so
the same code serves the inline backend in a notebook, the Agg backend in tests and the README::

    python -m fpnlab.plots docs/pyramid.png

Each level is drawn over the same image area: a cell of level ``Pk`` covers ``stride x stride``
pixels of the padded input (8 for P3 ... 128 for P7). The zero padding added to reach a multiple of
``size_divisible`` is hatched, and where a level's grid reaches past the padded input (P6 and P7
round up: ``ceil(480 / 64) * 64 = 512``) the overhang is drawn dashed.

Sized for reading on a screen: the layout is in points and the PNGs are made at :data:`DPI` = 72,
so one point is one CSS pixel: titles at :data:`TITLE_PT` (the notebook's text size), tick labels
at :data:`TICK_PT`, grid lines one crisp pixel (two from stride 32). A :class:`PyramidDrawing`
keeps its figure and moves its artists when the shapes change (no new figure, no layout pass, the
photo resampled once per size to the pixels it covers), which is what lets the explorer redraw
as a slider settles. Used in lessons 01 (``levels=()``), 04 (P3-P5) and 06, and in the explorer.
"""
from __future__ import annotations

import io
import sys
import textwrap
from typing import Dict, Mapping, Optional, Sequence, Tuple

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .shapes import LEVELS, REFERENCE, Config, Shape, ShapeError, stage_shapes, strides

PAD_COLOR = "#616161"
PAD_HATCH_COLOR = "#ffffff"
IMAGE_COLOR = "#cfe3f5"
GRID_COLOR = "#0b2a4a"
OVERHANG_COLOR = "#c0392b"

#: PNG resolution: 72 dots per inch makes one point one pixel, the unit of every size below.
DPI = 72
#: Font sizes in points (= CSS pixels at :data:`DPI`): JupyterLab's text is 14 px, code 13 px.
TITLE_PT, TICK_PT, SUPTITLE_PT, LABEL_PT = 13, 12, 14, 13
#: Width of one panel (points) for 1, 2 and 3 panels a row: 640 or 960 points in all (the width
#: of a notebook output in JupyterLab with its file browser open on a 1400-pixel window: 968).
PANEL_PT = {1: 640, 2: 480, 3: 320}
#: Panels never get taller than this (points): a 1600x32 photo gives a narrow panel, not a tower.
MAX_BOX_PT = {1: 620, 2: 460, 3: 340}
#: How much of the photo shows under a level's grid (the padded input's own panel shows it all).
LEVEL_PHOTO_ALPHA = 0.55
_MARGIN = 4           # data units around the padded input


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg, whatever the session's backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def canvas_png(fig: Figure, compress_level: int = 1) -> bytes:
    """The figure as PNG bytes at its own dpi, drawn once on its Agg canvas and encoded by Pillow
    with little compression (the explorer's redraw: ``savefig`` costs another draw and more
    compression time than the transfer it saves)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgba = canvas.buffer_rgba()
    img = Image.frombuffer("RGBA", (rgba.shape[1], rgba.shape[0]), rgba, "raw", "RGBA", 0, 1)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="png", compress_level=compress_level)
    return buf.getvalue()


def _hw(shape: Shape):
    return int(shape[-2]), int(shape[-1])


def _grid_segments(rows: int, cols: int, cell: float):
    h, w = rows * cell, cols * cell
    segs = [((0, r * cell), (w, r * cell)) for r in range(rows + 1)]
    segs += [((c * cell, 0), (c * cell, h)) for c in range(cols + 1)]
    return segs


def _grid(ax, rows: int, cols: int, cell: float, color=GRID_COLOR, lw=1.0) -> LineCollection:
    """``rows x cols`` cells of side ``cell`` from the origin, as one LineCollection."""
    lines = LineCollection(_grid_segments(rows, cols, cell), colors=color, linewidths=lw)
    ax.add_collection(lines)
    return lines


def _image_array(image, height: int, width: int):
    """A PIL image resized to ``height x width`` as an array, or None."""
    if image is None:
        return None
    import numpy as np
    from PIL import Image

    return np.asarray(image.convert("RGB").resize((max(width, 1), max(height, 1)),
                                                  Image.BILINEAR))


def columns(panels: int) -> int:
    """Panels per row: one alone, two for two or four (the FPN lesson's 2 x 2), else three."""
    return 1 if panels == 1 else 2 if panels in (2, 4) else 3


def _ticks(span: int, length_pt: float) -> Tuple[int, ...]:
    """Round tick positions from 0 to ``span``, about one per 55 points of axis."""
    want = max(2, int(length_pt // 55))
    step = next((s for s in (10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000)
                 if span / s <= want), 5000)
    return tuple(range(0, span + 1, step))


class _Panel:
    """One axes of the pyramid and the artists it keeps: the photo (or a tint), the two padding
    strips, the padded input's outline and, for a level, its grid and overhang."""

    def __init__(self, fig: Figure, level: Optional[str]):
        import numpy as np

        self.level = level
        ax = self.ax = fig.add_axes((0, 0, 1, 1))
        ax.set_autoscale_on(False)
        ax.tick_params(labelsize=TICK_PT, length=4, pad=2)
        self.photo = ax.imshow(np.zeros((1, 1, 4), dtype=np.uint8), extent=(0, 1, 1, 0),
                               interpolation="nearest", aspect="auto", zorder=0)
        self.tint = ax.add_patch(Rectangle((0, 0), 1, 1, facecolor=IMAGE_COLOR,
                                           edgecolor="none", zorder=0))
        self.pads = [ax.add_patch(Rectangle((0, 0), 1, 1, facecolor=PAD_COLOR, alpha=0.85,
                                            hatch="//", edgecolor=PAD_HATCH_COLOR, lw=0,
                                            zorder=1)) for _ in range(2)]
        self.outline = ax.add_patch(Rectangle((0, 0), 1, 1, fill=False, edgecolor="black",
                                              lw=1.5, zorder=3))
        self.grid = self.over = self.over_fill = None
        self.ticks = None
        if level is not None:
            self.grid = LineCollection([], colors=GRID_COLOR, linewidths=1.0, antialiaseds=False,
                                       zorder=2)
            ax.add_collection(self.grid)
            self.over = ax.add_patch(Rectangle((0, 0), 1, 1, fill=False, lw=1.5, ls="--",
                                               edgecolor=OVERHANG_COLOR, zorder=4))
            self.over_fill = [ax.add_patch(Rectangle((0, 0), 1, 1, facecolor=OVERHANG_COLOR,
                                                     alpha=0.18, edgecolor="none", zorder=1))
                              for _ in range(2)]


class PyramidDrawing:
    """The padded input and each of ``levels`` on one figure that is kept between drawings.

    :meth:`update` takes the shapes of :func:`fpnlab.shapes.stage_shapes` and moves the artists
    (rectangles, grid segments, titles, limits, the figure's size); :meth:`png` renders it. The
    photo (a PIL image, optional) is resampled once per size to the pixels its panel shows.

    >>> from fpnlab.reference import reference_image_size
    >>> d = PyramidDrawing(levels=("P3", "P4", "P5"))
    >>> d.update(stage_shapes(*reference_image_size())).axes[1].get_title().splitlines()[0]
    'P3: 1024 x 60 x 72, stride 8'
    """

    def __init__(self, levels: Sequence[str] = LEVELS, image=None, title: Optional[str] = None,
                 fig: Optional[Figure] = None, dpi: float = DPI):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.levels = tuple(levels)
        self.image = image
        self.fig = fig if fig is not None else Figure(dpi=dpi)
        self.fig.set_dpi(dpi)
        FigureCanvasAgg(self.fig)
        n = len(self.levels) + 1
        self.cols = columns(n)
        self.rows = -(-n // self.cols)
        self.panels = [_Panel(self.fig, None)] + [_Panel(self.fig, lv) for lv in self.levels]
        for i, p in enumerate(self.panels):   # same limits everywhere: label the outer axes only
            p.ax.tick_params(labelleft=i % self.cols == 0, labelbottom=i + self.cols >= n)
        self.shapes: Optional[Dict[str, Shape]] = None
        self._photo_key = None
        self._photo = None
        self._layout_key = None
        if title is None and self.levels:
            title = (f"ResNet-50-FPN {self.levels[0]}-{self.levels[-1]}: each cell of a level "
                     "covers stride x stride input pixels\n(hatched grey = zero padding, red = "
                     "grid past the input)")
        title = title or "the padded input (hatched grey = zero padding)"
        width = self.cols * PANEL_PT[self.cols]
        per_line = int(width / (0.6 * SUPTITLE_PT))      # characters of DejaVu Sans a line holds
        self._suptitle = "\n".join(line for part in title.splitlines()
                                   for line in textwrap.wrap(part, per_line))

    # -- layout: everything in points, the figure's size follows the input's aspect
    def _layout(self, ratio: float) -> None:
        key = round(ratio, 4)
        if key == self._layout_key:
            return
        self._layout_key = key
        panel = PANEL_PT[self.cols]
        left, right = 9 + 4.6 * 0.62 * TICK_PT, 14
        title_h = 2 * 1.25 * TITLE_PT + 10
        bottom = 1.25 * TICK_PT + 14
        avail = panel - left - right
        box_w, box_h = avail, avail * ratio
        if box_h > MAX_BOX_PT[self.cols]:
            box_h = MAX_BOX_PT[self.cols]
            box_w = box_h / ratio
        sup_h = (self._suptitle.count("\n") + 1) * 1.3 * SUPTITLE_PT + 12
        n = len(self.panels)
        tops = [sup_h]                 # a row with no x tick labels needs no room for them
        for r in range(self.rows):
            labelled = any(i + self.cols >= n for i in range(r * self.cols, (r + 1) * self.cols))
            tops.append(tops[-1] + title_h + box_h + (bottom if labelled else 12))
        fig_w, fig_h = self.cols * panel, tops[-1]
        self.fig.set_size_inches(fig_w / 72, fig_h / 72)
        for i, p in enumerate(self.panels):
            r, c = divmod(i, self.cols)
            x0 = c * panel + left + (avail - box_w) / 2
            top = tops[r] + title_h
            p.ax.set_position((x0 / fig_w, 1 - (top + box_h) / fig_h, box_w / fig_w,
                               box_h / fig_h))
        self._box_pt = (box_w, box_h)
        self.fig.suptitle(self._suptitle, fontsize=SUPTITLE_PT, y=1 - 6 / fig_h, va="top")

    def _photo_array(self, rh: int, rw: int, xspan: float, yspan: float):
        """The photo resized to the pixels its area covers in a panel (cached per size)."""
        if self.image is None:
            return None
        scale = self.fig.dpi / 72
        px_w = max(1, round(rw / xspan * self._box_pt[0] * scale))
        px_h = max(1, round(rh / yspan * self._box_pt[1] * scale))
        key = (px_h, px_w)
        if key != self._photo_key:
            import numpy as np

            full = _image_array(self.image, px_h, px_w)
            washed = (full * LEVEL_PHOTO_ALPHA + 255 * (1 - LEVEL_PHOTO_ALPHA)).astype(np.uint8)
            opaque = np.full(full.shape[:2] + (1,), 255, dtype=np.uint8)
            # blended and made RGBA once here, not by Agg and matplotlib on every draw
            self._photo = tuple(np.ascontiguousarray(np.concatenate([a, opaque], axis=2))
                                for a in (full, washed))
            self._photo_key = key
        return self._photo

    def update(self, shapes: Mapping[str, Shape]) -> Figure:
        """Draw ``shapes`` (a dict of :func:`fpnlab.shapes.stage_shapes`). Returns the figure."""
        for k in ("resized", "padded") + self.levels:
            if k not in shapes:
                raise ValueError(f"draw_pyramid: shapes has no {k!r} stage "
                                 f"(got {', '.join(shapes)})")
        st = strides(dict(shapes))
        rh, rw = _hw(shapes["resized"])
        ph, pw = _hw(shapes["padded"])
        extent = {lv: (_hw(shapes[lv])[0] * st[lv], _hw(shapes[lv])[1] * st[lv])
                  for lv in self.levels}
        eh = max([ph] + [e[0] for e in extent.values()])
        ew = max([pw] + [e[1] for e in extent.values()])
        xspan, yspan = ew + 2 * _MARGIN, eh + 2 * _MARGIN
        self._layout(yspan / xspan)
        arr = self._photo_array(rh, rw, xspan, yspan)
        xticks, yticks = _ticks(ew, self._box_pt[0]), _ticks(eh, self._box_pt[1])
        for p in self.panels:
            self._background(p, (rh, rw), (ph, pw),
                             None if arr is None else arr[0 if p.level is None else 1])
            p.ax.set_xlim(-_MARGIN, ew + _MARGIN)
            p.ax.set_ylim(eh + _MARGIN, -_MARGIN)
            if p.ticks != (xticks, yticks):   # fixed ticks: no locator or formatter per draw
                p.ax.set_xticks(xticks, [str(t) for t in xticks])
                p.ax.set_yticks(yticks, [str(t) for t in yticks])
                p.ticks = (xticks, yticks)
        pad_note = "no padding" if (ph, pw) == (rh, rw) else f"+{ph - rh} rows, +{pw - rw} cols"
        self.panels[0].ax.set_title(f"padded input {ph}x{pw}\nresized {rh}x{rw}; {pad_note}",
                                    fontsize=TITLE_PT, y=1, pad=5)
        for p in self.panels[1:]:
            lv = p.level
            h, w = _hw(shapes[lv])
            s = st[lv]
            p.grid.set_segments(_grid_segments(h, w, s))
            p.grid.set_linewidth(1.0 if s <= 16 else 2.0)
            lh, lw_ = extent[lv]
            past = lh > ph or lw_ > pw     # the level's last row/column reaches past the input
            p.over.set_visible(past)
            p.over.set_bounds(0, 0, lw_, lh)
            for fill, (x, y, ww, hh) in zip(p.over_fill, ((pw, 0, lw_ - pw, lh),
                                                          (0, ph, min(lw_, pw), lh - ph))):
                fill.set_visible(past and ww > 0 and hh > 0)
                fill.set_bounds(x, y, ww, hh)
            c = shapes[lv][-3] if len(shapes[lv]) >= 3 else "?"
            over = f"\ngrid {lh}x{lw_} px" + (" > input" if past else "")
            p.ax.set_title(f"{lv}: {c} x {h} x {w}, stride {s}{over}", fontsize=TITLE_PT, y=1,
                           pad=5)
        self.shapes = dict(shapes)
        return self.fig

    @staticmethod
    def _background(p: _Panel, resized_hw, padded_hw, arr) -> None:
        """The resized image (or a tint), the hatched padding, the padded input's outline."""
        rh, rw = resized_hw
        ph, pw = padded_hw
        if arr is not None:
            p.photo.set_data(arr)
            p.photo.set_extent((0, rw, rh, 0))
        p.photo.set_visible(arr is not None)
        p.tint.set_visible(arr is None)
        p.tint.set_bounds(0, 0, rw, rh)
        right, bottom = p.pads       # the zero padding: right strip and bottom strip
        right.set_visible(pw > rw)
        right.set_bounds(rw, 0, pw - rw, ph)
        bottom.set_visible(ph > rh)
        bottom.set_bounds(0, rh, rw, ph - rh)
        p.outline.set_bounds(0, 0, pw, ph)

    def png(self, shapes: Optional[Mapping[str, Shape]] = None) -> bytes:
        """PNG bytes of the drawing (of ``shapes`` first, when given), at the figure's dpi."""
        if shapes is not None:
            self.update(shapes)
        if self.shapes is None:
            raise ValueError("PyramidDrawing.png: nothing drawn yet (pass the shapes)")
        return canvas_png(self.fig)


def draw_pyramid(shapes: Mapping[str, Shape], image=None, fig: Optional[Figure] = None,
                 levels: Sequence[str] = LEVELS, title: Optional[str] = None) -> Figure:
    """Draw the padded input and each level of ``shapes`` (from :func:`fpnlab.shapes.stage_shapes`).

    ``image`` (a PIL image, optional) is shown in the resized area; ``fig`` is drawn into (and
    resized) when given. Returns the figure; :class:`PyramidDrawing` keeps it for redrawing.
    """
    return PyramidDrawing(levels, image=image, title=title, fig=fig).update(shapes)


class ShapeErrorDrawing:
    """The impossible top-down addition of a :class:`ShapeError`, on one kept figure: the
    bottom-right corner of the upsampled map (red) over the lateral map (blue), in cells; the
    cells only one of them has are filled."""

    def __init__(self, fig: Optional[Figure] = None, window: int = 6, dpi: float = DPI):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.window = window
        self.fig = fig if fig is not None else Figure(figsize=(640 / 72, 470 / 72), dpi=dpi)
        self.fig.set_dpi(dpi)
        FigureCanvasAgg(self.fig)
        ax = self.ax = self.fig.add_axes((0.12, 0.14, 0.84, 0.72))
        ax.set_autoscale_on(False)
        ax.tick_params(labelsize=TICK_PT)
        ax.set_xlabel("column (bottom-right corner shown)", fontsize=LABEL_PT)
        ax.set_ylabel("row", fontsize=LABEL_PT)
        self.lateral = LineCollection([], colors=GRID_COLOR, linewidths=2.5)
        self.upsampled = LineCollection([], colors=OVERHANG_COLOR, linewidths=1.5)
        ax.add_collection(self.lateral)
        ax.add_collection(self.upsampled)
        self.fills = [ax.add_patch(Rectangle((0, 0), 1, 1, facecolor=OVERHANG_COLOR, alpha=0.3,
                                             edgecolor="none")) for _ in range(2)]
        self.note = ax.text(0.5, 0.5, "", ha="center", va="center", wrap=True,
                            fontsize=TITLE_PT, transform=ax.transAxes)
        self.err: Optional[ShapeError] = None

    def update(self, err: ShapeError) -> Figure:
        ax = self.ax
        self.err = err
        if err.left is None or err.right is None:
            for a in (self.lateral, self.upsampled, *self.fills):
                a.set_visible(False)
            self.note.set_text(str(err))
            ax.set_title("")
            ax.set_axis_off()
            return self.fig
        ax.set_axis_on()
        self.note.set_text("")
        (uh, uw), (lh, lw_) = _hw(err.left), _hw(err.right)
        rows, cols = max(uh, lh), max(uw, lw_)
        r0, c0 = max(rows - self.window - 1, 0), max(cols - self.window - 1, 0)
        self.lateral.set_segments(_window_grid(lh, lw_, r0, c0))
        self.upsampled.set_segments(_window_grid(uh, uw, r0, c0))
        for a in (self.lateral, self.upsampled):
            a.set_visible(True)
        # cells covered by one map but not the other: a bottom strip and a right strip
        for fill, (a0, b0, a1, b1) in zip(self.fills, (
                (min(uh, lh), 0, max(uh, lh), max(uw, lw_)),
                (0, min(uw, lw_), min(uh, lh), max(uw, lw_)))):
            fill.set_visible(a1 > a0 and b1 > b0)
            fill.set_bounds(b0, a0, b1 - b0, a1 - a0)
        ax.set_xlim(max(cols - self.window, 0) - 0.3, cols + 0.5)
        ax.set_ylim(rows + 0.5, max(rows - self.window, 0) - 0.3)
        ax.set_title(f"{err.level}: upsampled {uh}x{uw} (red) + lateral {lh}x{lw_} (blue)\n"
                     "cannot be added: the sizes must match exactly", fontsize=TITLE_PT)
        return self.fig

    def png(self, err: Optional[ShapeError] = None) -> bytes:
        if err is not None:
            self.update(err)
        return canvas_png(self.fig)


def _window_grid(rows: int, cols: int, r0: int, c0: int):
    """The grid lines of a ``rows x cols`` map from row ``r0`` and column ``c0`` on (the only
    part :class:`ShapeErrorDrawing` shows: a P3 map has thousands of cells)."""
    r0, c0 = min(r0, rows), min(c0, cols)
    segs = [((c0, r), (cols, r)) for r in range(r0, rows + 1)]
    segs += [((c, r0), (c, rows)) for c in range(c0, cols + 1)]
    return segs


def draw_shape_error(err: ShapeError, fig: Optional[Figure] = None, window: int = 6) -> Figure:
    """The impossible top-down addition of ``err``: the bottom-right corner of the upsampled
    map (red) drawn over the lateral map (blue), in cells; the cells only one of them has are
    filled."""
    return ShapeErrorDrawing(fig, window).update(err)


def pyramid_png(height: int, width: int, config: Config = REFERENCE, image=None,
                dpi: int = DPI, levels: Sequence[str] = LEVELS) -> bytes:
    """PNG of the pyramid for a ``height x width`` image, or of the failure when the top-down
    addition is impossible for this configuration. At ``dpi`` 72 a point is a pixel (labels at
    the notebook's text size); 144 makes a picture for a high-density screen."""
    try:
        shapes = stage_shapes(height, width, config)
    except ShapeError as err:
        return ShapeErrorDrawing(dpi=dpi).png(err)
    return PyramidDrawing(levels, image=image, dpi=dpi).png(shapes)


def pyramid_image(height: int, width: int, config: Config = REFERENCE, image=None,
                  levels: Sequence[str] = LEVELS, dpi: int = DPI):
    """The pyramid as a plain ``IPython.display.Image`` (an ``image/png`` output): shows in any
    notebook front end and in nbconvert/nbgrader HTML, with no widget state to store. Used in
    lessons 01 (``levels=()``: the padded photo alone, 640 px wide) and 04 (P3-P5, 2 x 2)."""
    from IPython.display import Image as DisplayImage

    return DisplayImage(data=pyramid_png(height, width, config, image=image, dpi=dpi,
                                         levels=levels), format="png")


def draw_activation(activation, background=None, stride: int = 1, image_hw=None,
                    title: str = "", fig: Optional[Figure] = None) -> Figure:
    """One channel of a feature map (2-D array, ``h x w``) over the image it was computed from.

    ``background`` is an ``H x W x 3`` array in 0..1 (the padded input); each activation cell
    covers ``stride x stride`` pixels. ``image_hw`` (the resized size) outlines the real image.
    """
    import numpy as np

    act = np.asarray(activation, dtype=float)
    if act.ndim != 2:
        raise ValueError(f"draw_activation: expected a 2-D map (h, w), got shape {act.shape}")
    fig = fig or Figure(figsize=(960 / 72, 400 / 72), dpi=DPI)
    ax_img, ax_map = fig.subplots(1, 2)
    h, w = act.shape
    extent = (0, w * stride, h * stride, 0)
    lo, hi = float(act.min()), float(act.max())
    for ax in (ax_img, ax_map):
        if background is not None:
            ax.imshow(background, extent=(0, background.shape[1], background.shape[0], 0))
        ax.set_xlim(0, max(w * stride, background.shape[1] if background is not None else 0))
        ax.set_ylim(max(h * stride, background.shape[0] if background is not None else 0), 0)
        ax.tick_params(labelsize=TICK_PT)
        if image_hw is not None:
            ax.add_patch(Rectangle((0, 0), image_hw[1], image_hw[0], fill=False,
                                   edgecolor="white", lw=1, ls="--"))
    im = ax_map.imshow(act, extent=extent, cmap="magma",
                       alpha=0.75 if background is not None else 1,
                       interpolation="nearest", vmin=lo, vmax=hi if hi > lo else lo + 1)
    fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.04).ax.tick_params(labelsize=TICK_PT)
    ax_img.set_title("input (padded)", fontsize=TITLE_PT)
    ax_map.set_title(title, fontsize=TITLE_PT)
    fig.tight_layout()
    return fig


def readme_figure(path: str) -> str:
    """Write the README's pyramid picture (the trace's sample image, reference configuration):
    the explorer's drawing, at the same size."""
    from PIL import Image

    from .images import sample_image

    img = sample_image()
    png = PyramidDrawing(image=img).png(stage_shapes(img.height, img.width, REFERENCE))
    # a photo in a PNG: 256 colours keep it readable at a third of the size
    picture = Image.open(io.BytesIO(png)).convert("RGB")
    picture.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m fpnlab.plots OUT.png   (the pyramid picture of the README)",
              file=sys.stderr)
        return 2
    print(readme_figure(argv[0]))
    return 0


__all__ = ["draw_pyramid", "draw_shape_error", "draw_activation", "figure_png", "canvas_png",
           "pyramid_png", "pyramid_image", "readme_figure", "main", "PyramidDrawing",
           "ShapeErrorDrawing", "columns", "DPI", "TITLE_PT", "TICK_PT"]

if __name__ == "__main__":
    sys.exit(main())
