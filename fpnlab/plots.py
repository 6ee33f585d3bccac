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

:func:`diagram` draws the lessons' dataflow pictures (``stem``, ``bottleneck``, ``stage``,
``top-down``, ``p6p7``, ``backbone``): boxes and arrows labelled in words and with the shapes of
:func:`fpnlab.shapes.stage_shapes`, one colour per kind of layer (:data:`KINDS`).
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
            title = (f"ResNet-50-FPN {self.levels[0]}-{self.levels[-1]}: the cells of a level "
                     "step stride pixels apart (each sees far more: its receptive field)\n"
                     "(hatched grey = zero padding, red = grid past the input)")
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


# ============================================================================ dataflow diagrams
#: The drawings :func:`diagram` makes, in the order the lessons meet them.
DIAGRAMS = ("stem", "bottleneck", "stage", "top-down", "p6p7", "backbone")
#: Width of every diagram (points; at :data:`DPI` one point is one pixel): a notebook's width.
DIAGRAM_PT = 720
#: Text sizes of the diagrams (points): box text and shape labels, titles.
BOX_PT, DIAGRAM_TITLE_PT = 12, 14
#: One colour per kind of thing drawn: (fill, edge, legend name).
KINDS = {
    "tensor": ("#fff2cc", "#7f6000", "tensor (C x H x W)"),
    "conv": ("#cfe2f3", "#1f4e79", "convolution"),
    "norm": ("#fce5cd", "#b45f06", "FrozenBN"),
    "act": ("#d9ead3", "#38761d", "ReLU"),
    "pool": ("#d0e0e3", "#134f5c", "max-pool"),
    "add": ("#f4cccc", "#990000", "addition"),
    "upsample": ("#d9d2e9", "#351c75", "nearest x2"),
    "block": ("#ead1dc", "#741b47", "several layers"),
    "unused": ("#eeeeee", "#9e9e9e", "not used"),
}
ARROW_COLOR, NOTE_COLOR, UNUSED_TEXT = "#333333", "#444444", "#8a8a8a"
STRIDE_COLOR = "#c0392b"
_LINE_PT = 1.2 * BOX_PT          # one line of box text


def _chw(shape: Shape) -> str:
    """``(1, 512, 60, 72)`` -> ``512 x 60 x 72`` (channels x height x width, batch left off)."""
    return " x ".join(str(int(d)) for d in shape[-3:])


def _hw_text(shape: Shape) -> str:
    return f"{int(shape[-2])} x {int(shape[-1])}"


class _Box:
    """Where a drawn box (or the add circle) lies, in points from the top left; the middles of
    its sides are where arrows start and end."""

    def __init__(self, x0: float, y0: float, x1: float, y1: float):
        self.x0, self.y0, self.x1, self.y1 = x0, y0, x1, y1

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    def top(self, dx: float = 0.0):
        return (self.cx + dx, self.y0)

    def bottom(self, dx: float = 0.0):
        return (self.cx + dx, self.y1)

    def left(self, dy: float = 0.0):
        return (self.x0, self.cy + dy)

    def right(self, dy: float = 0.0):
        return (self.x1, self.cy + dy)


class _Sheet:
    """One diagram: a single axes whose data units are points, y pointing down, so that boxes,
    arrows and text are placed the way the drawing is read."""

    def __init__(self, fig: Figure, height: float, title: str, subtitle: str = ""):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.fig, self.width, self.height = fig, DIAGRAM_PT, height
        fig.set_dpi(DPI)
        fig.set_size_inches(DIAGRAM_PT / 72, height / 72)
        if not isinstance(fig.canvas, FigureCanvasAgg):
            FigureCanvasAgg(fig)
        ax = self.ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, DIAGRAM_PT)
        ax.set_ylim(height, 0)
        ax.set_axis_off()
        self.kinds = []
        ax.text(14, 10, title, fontsize=DIAGRAM_TITLE_PT, fontweight="bold", va="top",
                ha="left")
        if subtitle:
            ax.text(14, 32, subtitle, fontsize=BOX_PT, va="top", ha="left", color=NOTE_COLOR)

    def _use(self, kind: str) -> None:
        if kind not in self.kinds:
            self.kinds.append(kind)

    def box(self, cx: float, cy: float, w: float, h: float, text: str, kind: str,
            dashed: bool = False, bold: bool = False) -> _Box:
        from matplotlib.patches import FancyBboxPatch

        face, edge, _ = KINDS[kind]
        self._use(kind)
        b = _Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        self.ax.add_patch(FancyBboxPatch((b.x0, b.y0), w, h, boxstyle="round,pad=0,rounding_size=6",
                                         facecolor=face, edgecolor=edge,
                                         lw=2.2 if bold else 1.3,
                                         ls=(0, (4, 3)) if dashed else "-", zorder=2))
        self.ax.text(cx, cy, text, ha="center", va="center", fontsize=BOX_PT, linespacing=1.2,
                     color=UNUSED_TEXT if kind == "unused" else "black", zorder=3)
        return b

    def add(self, cx: float, cy: float, r: float = 13) -> _Box:
        from matplotlib.patches import Circle

        face, edge, _ = KINDS["add"]
        self._use("add")
        self.ax.add_patch(Circle((cx, cy), r, facecolor=face, edgecolor=edge, lw=1.3, zorder=2))
        self.ax.text(cx, cy, "+", ha="center", va="center_baseline", fontsize=16,
                     fontweight="bold", zorder=3)
        return _Box(cx - r, cy - r, cx + r, cy + r)

    def dot(self, x: float, y: float) -> None:
        from matplotlib.patches import Circle

        self.ax.add_patch(Circle((x, y), 3.2, facecolor=ARROW_COLOR, edgecolor="none", zorder=4))

    def arrow(self, a, b, label: str = "", at: Optional[Tuple[float, float]] = None,
              ha: str = "left", va: str = "center", dashed: bool = False, head: bool = True,
              color: str = ARROW_COLOR, connection: str = "arc3", label_color: str = "black",
              gid: Optional[str] = None):
        """An arrow from point ``a`` to point ``b`` (tip exactly on ``b``), and its label at
        ``at`` (default: beside its middle)."""
        from matplotlib.patches import FancyArrowPatch

        patch = FancyArrowPatch(a, b, arrowstyle="-|>" if head else "-", mutation_scale=15,
                                shrinkA=0, shrinkB=0, lw=1.4, color=color,
                                linestyle=(0, (5, 3)) if dashed else "-",
                                connectionstyle=connection, zorder=1)
        if gid:
            patch.set_gid(gid)
        self.ax.add_patch(patch)
        if label:
            x, y = at if at is not None else ((a[0] + b[0]) / 2 + 8, (a[1] + b[1]) / 2)
            self.ax.text(x, y, label, ha=ha, va=va, fontsize=BOX_PT, color=label_color,
                         linespacing=1.2, zorder=3)
        return patch

    def note(self, x: float, y: float, text: str, ha: str = "left", va: str = "center",
             color: str = NOTE_COLOR, style: str = "normal", weight: str = "normal") -> None:
        self.ax.text(x, y, text, ha=ha, va=va, fontsize=BOX_PT, color=color, linespacing=1.2,
                     fontstyle=style, fontweight=weight, zorder=3)

    def legend(self, y: float) -> None:
        """Swatches of the kinds drawn, left to right from the left margin, at ``y``."""
        from matplotlib.patches import FancyBboxPatch

        renderer = self.fig.canvas.get_renderer()
        x = 14.0
        order = [k for k in KINDS if k in self.kinds]
        for kind in order:
            face, edge, name = KINDS[kind]
            self.ax.add_patch(FancyBboxPatch((x, y - 7), 22, 14,
                                             boxstyle="round,pad=0,rounding_size=3",
                                             facecolor=face, edgecolor=edge, lw=1.2))
            t = self.ax.text(x + 28, y, name, ha="left", va="center", fontsize=BOX_PT,
                             color=NOTE_COLOR)
            width = t.get_window_extent(renderer).width * 72 / self.fig.dpi
            x += 28 + width + 18


def _diagram_shapes(name: str, height: int, width: int, config: Config) -> Dict[str, Shape]:
    """The engine's shapes (with the FPN internals). The stem, bottleneck and stage drawings
    need no FPN, so a configuration whose top-down addition fails still draws them."""
    try:
        return stage_shapes(height, width, config, internals=True)
    except ShapeError as err:
        if name in ("stem", "bottleneck", "stage") and all(
                k in err.shapes for k in ("padded", "stem", "C2", "C3", "C4", "C5")):
            return dict(err.shapes)
        raise


def _stem(sheet_for, s: Dict[str, Shape], config: Config) -> None:
    from .shapes import STEM_OUT_CHANNELS, conv_out

    ph, pw = s["padded"][-2:]
    conv_hw = (conv_out(ph, 7, 2, 3), conv_out(pw, 7, 2, 3))
    after_conv = (STEM_OUT_CHANNELS,) + conv_hw
    stride = strides(s)["stem"]
    h1, h2, gap = 52, 38, 34
    items = [("tensor", f"padded image\n{_chw(s['padded'])}", h1, "", ""),
             ("conv", f"conv1: 7x7 conv, stride 2\n{s['padded'][-3]} -> {STEM_OUT_CHANNELS} "
                      "channels", h1, f"padding 3, no bias:\n{_hw_text(s['padded'])} -> "
                                      f"{_hw_text(after_conv)}", _chw(after_conv)),
             ("norm", "FrozenBN", h2, "a fixed scale and shift\nper channel (no eps)",
              _chw(after_conv)),
             ("act", "ReLU", h2, "", _chw(after_conv)),
             ("pool", "max-pool 3x3, stride 2", h2,
              f"padding 1, sizes rounded down:\n{_hw_text(after_conv)} -> {_hw_text(s['stem'])}",
              ""),
             ("tensor", f"stem output (C1), stride {stride}\n{_chw(s['stem'])}", h1, "", "")]
    height = 60 + sum(i[2] for i in items) + gap * (len(items) - 1) + 56
    sh = sheet_for(height, "The stem: image to C1, a quarter of the padded size each side",
                   "conv1 and the max-pool halve each side; FrozenBN and ReLU keep the shape.")
    cx, w, y = 230, 230, 62
    prev = None
    for kind, text, h, note, label_after in items:
        b = sh.box(cx, y + h / 2, w, h, text, kind, bold=kind == "tensor")
        if prev is not None:
            sh.arrow(prev[0].bottom(), b.top(), prev[1])
        if note:
            sh.note(b.x1 + 22, b.cy, note)
        prev = (b, label_after)
        y += h + gap
    sh.legend(height - 24)


def _bottleneck(sheet_for, s: Dict[str, Shape], config: Config) -> None:
    from .shapes import RESNET50_WIDTHS

    st = strides(s)
    cin, cout = s["C2"][-3], s["C3"][-3]
    width = RESNET50_WIDTHS[1]
    stride = st["C3"] // st["C2"]
    mid_in = (width,) + tuple(s["C2"][-2:])       # the stride in the 3x3: full size after conv1
    mid_out = (width,) + tuple(s["C3"][-2:])
    one, two, gap, gap2, small = 24 + 12, 2 * _LINE_PT + 12, 28, 46, 18
    # (kind, text, height, gap before, label on the arrow in)
    chain = [("tensor", f"input x = C2\n{_chw(s['C2'])}", two, 0, ""),
             ("conv", f"conv1: 1x1 conv\n{cin} -> {width}", two, gap, ""),
             ("norm", "FrozenBN", one, small, ""),
             ("act", "ReLU", one, small, ""),
             ("conv", f"conv2: 3x3 conv\n{width} -> {width}", two, gap2,
              f"A: {_chw(mid_out)}\nB: {_chw(mid_in)}"),
             ("norm", "FrozenBN", one, small, ""),
             ("act", "ReLU", one, small, ""),
             ("conv", f"conv3: 1x1 conv\n{width} -> {cout}", two, gap, _chw(mid_out)),
             ("norm", "FrozenBN (no ReLU)", one, small, ""),
             ("add", "+", 26, gap, _chw(s["C3"])),
             ("act", "ReLU", one, small, ""),
             ("tensor", f"output = C3\n{_chw(s['C3'])}", two, gap, "")]
    height = 74 + sum(c[2] + c[3] for c in chain) + 56
    sh = sheet_for(height, f"A bottleneck: layer2, block 0 ({cin} -> {width} -> {width} -> "
                           f"{cout} channels)",
                   "1x1 reduces, 3x3 works at the reduced width, 1x1 expands 4x; "
                   "the shortcut is added, then one ReLU.")
    cx, w = 300, 200
    y = 70
    boxes = []
    for kind, text, h, before, label in chain:
        y += before
        if kind == "add":
            b = sh.add(cx, y + h / 2, h / 2)
        else:
            b = sh.box(cx, y + h / 2, w, h, text, kind, bold=kind == "tensor")
        if boxes:
            sh.arrow(boxes[-1].bottom(), b.top(), label)
        boxes.append(b)
        y += h
    x_in, conv1, conv2, plus = boxes[0], boxes[1], boxes[4], boxes[9]
    # where the stride goes: two labelled alternatives
    for b, tag in ((conv1, f"A: stride_in_1x1 True\n(the default, MSRA):\nstride {stride} here"),
                   (conv2, f"B: stride_in_1x1 False\n(torchvision's v1.5):\nstride {stride} here")):
        sh.arrow((b.x0 - 34, b.cy), b.left(), color=STRIDE_COLOR)
        sh.note(b.x0 - 40, b.cy, tag, ha="right", color=STRIDE_COLOR)
    # the shortcut: block 0's downsample (solid), the identity of the other blocks (dashed)
    sx, sw = 560, 190
    ds_h = 2 * _LINE_PT + 12
    ds = sh.box(sx, conv2.cy - 24, sw, ds_h, f"downsample: 1x1 conv\n{cin} -> {cout}, "
                                             f"stride {stride}", "conv")
    ds_bn = sh.box(sx, ds.y1 + 22 + 19, sw, 38, "FrozenBN", "norm")
    sh.arrow(x_in.right(), ds.top(), connection="angle,angleA=0,angleB=90")
    sh.note(sx + 8, (x_in.cy + ds.y0) / 2 + 8, "block 0 only", ha="left")
    sh.arrow(ds.bottom(), ds_bn.top())
    sh.arrow(ds_bn.bottom(), plus.right(), _chw(s["C3"]), at=(sx + 8, (ds_bn.y1 + plus.cy) / 2),
             connection="angle,angleA=-90,angleB=180")
    ix = sx + sw / 2 + 24
    sh.arrow((sx, x_in.cy), (ix, x_in.cy), head=False, dashed=True)
    sh.arrow((ix, x_in.cy), (ix, plus.cy), head=False, dashed=True)
    sh.arrow((ix, plus.cy), (sx, plus.cy), head=False, dashed=True)
    sh.note(sx, plus.cy + 30, "blocks 1 and later:\nidentity shortcut (dashed),\n"
                              f"no stride, {cout} -> {cout}", ha="center", va="top")
    sh.legend(height - 24)


def _stage(sheet_for, s: Dict[str, Shape], config: Config) -> None:
    from .shapes import RESNET50_BLOCKS, RESNET50_WIDTHS

    st = strides(s)
    pitch, h, top = 104, 3 * _LINE_PT + 12, 64
    height = top + 4 * pitch + 30 + 44
    sh = sheet_for(height, "ResNet-50's four stages: block 0 changes the size, the rest keep it",
                   "Each block is a bottleneck; block 0 has the downsample shortcut and the "
                   "stage's stride.")
    tw, b0w, bw, gap = 124, 104, 40, 18
    for i, (blocks, width) in enumerate(zip(RESNET50_BLOCKS, RESNET50_WIDTHS)):
        src, dst = ("stem", "C2", "C3", "C4")[i], f"C{i + 2}"
        stride = st[dst] // st[src]
        cin, cout = s[src][-3], s[dst][-3]
        y_title = top + i * pitch + 10
        sh.note(14, y_title, f"layer{i + 1}: {blocks} blocks, {cin} -> {width} -> {width} -> "
                             f"{cout} channels, stride {stride}", color="black", weight="bold")
        cy = y_title + 14 + h / 2
        name = "stem output" if src == "stem" else src
        prev = sh.box(14 + tw / 2, cy, tw, h, f"{name}\nstride {st[src]}\n{_chw(s[src])}",
                      "tensor", bold=True)
        x = prev.x1 + gap
        b = sh.box(x + b0w / 2, cy, b0w, h, f"block 0\ndownsample\nstride {stride}", "block",
                   bold=True)
        sh.arrow(prev.right(), b.left())
        prev, x = b, b.x1 + gap
        for j in range(1, blocks):
            b = sh.box(x + bw / 2, cy, bw, h, str(j), "block")
            sh.arrow(prev.right(), b.left())
            prev, x = b, b.x1 + gap
        out = sh.box(DIAGRAM_PT - 14 - tw / 2, cy, tw, h,
                     f"{dst}\nstride {st[dst]}\n{_chw(s[dst])}", "tensor", bold=True)
        sh.arrow(prev.right(), out.left())
    sh.note(14, top + 4 * pitch + 10, "Blocks 1 and later: the same bottleneck with an identity "
            "shortcut and no stride.", va="center")
    sh.legend(height - 24)


def _top_down(sheet_for, s: Dict[str, Shape], config: Config) -> None:
    st = strides(s)
    out = config.out_channels
    rows = {5: 128, 4: 262, 3: 396, 2: 486}
    h = 2 * _LINE_PT + 12
    lat_h = 3 * _LINE_PT + 12
    height = rows[2] + h / 2 + 20 + 2 * _LINE_PT + 16 + 50
    sh = sheet_for(height, "The FPN: lateral 1x1 convolutions and the top-down pathway",
                   f"C3, C4 and C5 are brought to {out} channels, merged from the top down, "
                   "and smoothed by a 3x3 each.")
    xc, xl, xm, x3, xp = 68, 188, 382, 488, 636
    for x, text in ((xc, "ResNet body"), (xl, "lateral 1x1"), (xm, "top-down"),
                    (x3, "output 3x3"), (xp, "returned")):
        sh.note(x, 68, text, ha="center", color=NOTE_COLOR, style="italic")
    merged = {}
    for k in (5, 4, 3):
        y = rows[k]
        c = sh.box(xc, y, 116, h, f"C{k}, stride {st[f'C{k}']}\n{_chw(s[f'C{k}'])}", "tensor",
                   bold=True)
        lat = sh.box(xl, y, 100, lat_h, f"fpn_inner{k - 1}\n1x1 conv\n{s[f'C{k}'][-3]} -> {out}",
                     "conv")
        sh.arrow(c.right(), lat.left())
        lateral = s["fpn_inner4"] if k == 5 else s[f"fpn_inner{k - 1}_lateral"]
        smooth = sh.box(x3, y, 100, lat_h, f"fpn_layer{k - 1}\n3x3 conv\n{out} -> {out}", "conv")
        p = sh.box(xp, y, 136, h, f"P{k}, stride {st[f'P{k}']}\n{_chw(s[f'P{k}'])}", "tensor",
                   bold=True)
        sh.arrow(smooth.right(), p.left())
        label_at = ((lat.x1 + xm - 13) / 2, y + 14)
        if k == 5:                       # nothing to add at the top: the lateral is the merge
            sh.arrow(lat.right(), smooth.left(), _chw(lateral), at=label_at, ha="center")
            sh.dot(xm, y)
            merged[k] = _Box(xm - 3, y - 3, xm + 3, y + 3)
        else:
            plus = sh.add(xm, y)
            sh.arrow(lat.right(), plus.left(), _chw(lateral), at=label_at, ha="center")
            sh.arrow(plus.right(), smooth.left())
            up_y = (rows[k + 1] + y) / 2 - 8
            up = sh.box(xm, up_y, 104, 30, "nearest x2", "upsample")
            sh.arrow(merged[k + 1].bottom(), up.top())
            sh.arrow(up.bottom(), plus.top(), _chw(s[f"fpn_inner{k - 1}_upsample"]),
                     at=(xm - 8, (up.y1 + plus.y0) / 2), ha="right")
            merged[k] = plus
    y = rows[2]
    c2 = sh.box(xc, y, 116, h, f"C2, stride {st['C2']}\n{_chw(s['C2'])}", "unused", dashed=True)
    none = sh.box(xl, y, 100, h, "no lateral:\nin_channels 0", "unused", dashed=True)
    sh.arrow(c2.right(), none.left(), dashed=True, color=KINDS["unused"][1])
    sh.note(none.x1 + 14, y, "C2 is left out: a P3-P7 pyramid has no P2", color=UNUSED_TEXT)
    sh.note(14, y + h / 2 + 18, "Arrows carry the tensors' shapes (C x H x W); the dot is where "
            "a merged map leaves for the level below.", va="top")
    sh.legend(height - 24)


def _p6p7(sheet_for, s: Dict[str, Shape], config: Config) -> None:
    st = strides(s)
    out = config.out_channels
    use_p5 = config.use_p5
    cin = out if use_p5 else config.p6_in_channels
    h = 2 * _LINE_PT + 12
    r1, r2, r3, r4 = 112, 196, 280, 364
    height = r4 + h / 2 + 24 + 2 * _LINE_PT + 16 + 50
    sh = sheet_for(height, "P6 and P7: two 3x3 stride-2 convolutions above the FPN",
                   f"p6 reads {'P5' if use_p5 else 'C5'}; p7 reads P6 after a ReLU. "
                   "Both have a bias.")
    c5 = sh.box(80, r1, 132, h, f"C5, stride {st['C5']}\n{_chw(s['C5'])}", "tensor", bold=True)
    p5 = sh.box(80, r2 + 12, 132, h, f"P5, stride {st['P5']}\n{_chw(s['P5'])}", "tensor",
                bold=True)
    p6c = sh.box(300, r1, 176, h, f"p6: 3x3 conv, stride 2\n{cin} -> {out}", "conv")
    p6 = sh.box(500, r1, 132, h, f"P6, stride {st['P6']}\n{_chw(s['P6'])}", "tensor", bold=True)
    relu = sh.box(500, r2 + 12, 80, 36, "ReLU", "act")
    p7c = sh.box(500, r3, 176, h, f"p7: 3x3 conv, stride 2\n{out} -> {out}", "conv")
    p7 = sh.box(500, r4, 132, h, f"P7, stride {st['P7']}\n{_chw(s['P7'])}", "tensor", bold=True)
    sh.arrow(c5.right(), p6c.left(), dashed=use_p5, gid="p6-from-C5",
             color=KINDS["unused"][1] if use_p5 else ARROW_COLOR)
    bend = (p6c.x0 + 40, p6c.y1)
    sh.arrow(p5.right(), bend, "use_P5 rule", at=((p5.x1 + bend[0]) / 2, p5.cy + 14),
             ha="center", dashed=not use_p5, gid="p6-from-P5",
             color=ARROW_COLOR if use_p5 else KINDS["unused"][1],
             connection="angle,angleA=0,angleB=90")
    sh.arrow(p6c.right(), p6.left())
    sh.arrow(p6.bottom(), relu.top())
    sh.arrow(relu.bottom(), p7c.top(), _chw(s["P6"]), at=(relu.cx + 8, (relu.y1 + p7c.y0) / 2))
    sh.arrow(p7c.bottom(), p7.top())
    sh.arrow(p6.right(), (p6.x1 + 26, p6.cy))
    sh.note(p6.x1 + 30, p6.cy, "returned\nbefore the ReLU")
    sh.arrow(p7.right(), (p7.x1 + 26, p7.cy))
    sh.note(p7.x1 + 30, p7.cy, "returned")
    if use_p5:
        rule = (f"use_P5 rule: p6's input and output channels are equal ({out}), so p6 reads P5"
                + (" even though C5 was asked for." if config.p6_from == "C5" else "."))
    else:
        rule = (f"use_P5 rule: p6 reads P5 only when its input and output channels are equal; "
                f"\nhere {config.p6_in_channels} and {out}, so it reads C5 (dashed: the other "
                "choice).")
    sh.note(14, r4 + h / 2 + 24, rule, va="top")
    sh.legend(height - 24)


def _backbone(sheet_for, s: Dict[str, Shape], config: Config) -> None:
    from .shapes import RESNET50_BLOCKS

    st = strides(s)
    h, pitch, r0 = 2 * _LINE_PT + 12, 62, 116
    row = {name: r0 + i * pitch for i, name in
           enumerate(("P7", "P6", "5", "4", "3", "2", "stem", "image"))}
    height = row["image"] + h / 2 + 24 + _LINE_PT + 50
    sh = sheet_for(height, "The whole backbone: body, FPN and top blocks",
                   "The image goes up the body; the FPN and the top blocks return P3 to P7, "
                   f"{config.out_channels} channels each.")
    xb, xc, xf, xp = 82, 262, 432, 616
    for x, text in ((xb, "body (ResNet-50)"), (xc, "body outputs"), (xf, "FPN, top_blocks"),
                    (xp, "returned")):
        sh.note(x, 72, text, ha="center", style="italic")
    img = sh.box(xb, row["image"], 136, h, f"padded image\n{_chw(s['padded'])}", "tensor",
                 bold=True)
    stem = sh.box(xb, row["stem"], 136, h, "stem\nconv, BN, ReLU, pool", "block")
    sh.arrow(img.top(), stem.bottom())
    stem_t = sh.box(xc, row["stem"], 150, h, f"stem, stride {st['stem']}\n{_chw(s['stem'])}",
                    "tensor", bold=True)
    sh.arrow(stem.right(), stem_t.left())
    prev, cs = stem, {}
    for i, blocks in enumerate(RESNET50_BLOCKS):
        k = i + 2
        y = row[str(k)]
        layer = sh.box(xb, y, 136, h, f"layer{i + 1}\n{blocks} bottlenecks", "block")
        sh.arrow(prev.top(), layer.bottom())
        cs[k] = sh.box(xc, y, 150, h, f"C{k}, stride {st[f'C{k}']}\n{_chw(s[f'C{k}'])}", "tensor",
                       bold=True)
        sh.arrow(layer.right(), cs[k].left())
        prev = layer
    fpn_top, fpn_bot = row["5"] - h / 2, row["3"] + h / 2
    fpn = sh.box(xf, (fpn_top + fpn_bot) / 2, 124, fpn_bot - fpn_top,
                 "FPN\nlateral 1x1,\ntop-down:\nnearest x2, +,\n3x3 out", "block")
    for k in (5, 4, 3):
        y = row[str(k)]
        sh.arrow(cs[k].right(), (fpn.x0, y))
        p = sh.box(xp, y, 168, h, f"P{k}, stride {st[f'P{k}']}\n{_chw(s[f'P{k}'])}", "tensor",
                   bold=True)
        sh.arrow((fpn.x1, y), p.left())
    sh.note(cs[2].x1 + 14, row["2"], "C2: not used", color=UNUSED_TEXT)
    tb_top, tb_bot = row["P7"] - h / 2, row["P6"] + h / 2
    tb = sh.box(xf, (tb_top + tb_bot) / 2, 124, tb_bot - tb_top,
                "top_blocks\np6, ReLU, p7", "block")
    if config.use_p5:
        sh.arrow(fpn.top(), tb.bottom(), "P5", at=(fpn.cx + 8, (fpn.y0 + tb.y1) / 2))
    else:
        sh.arrow(cs[5].top(), tb.left(), "C5", at=(cs[5].cx + 8, tb.cy + 8),
                 connection="angle,angleA=90,angleB=0")
    for lv in ("P6", "P7"):
        y = row[lv]
        p = sh.box(xp, y, 168, h, f"{lv}, stride {st[lv]}\n{_chw(s[lv])}", "tensor", bold=True)
        sh.arrow((tb.x1, y), p.left())
    sh.note(14, row["image"] + h / 2 + 22, "Returned in the order P3, P4, P5, P6, P7: strides "
            + ", ".join(str(st[lv]) for lv in LEVELS) + ".", va="center")
    sh.legend(height - 24)


_DRAW = {"stem": _stem, "bottleneck": _bottleneck, "stage": _stage, "top-down": _top_down,
         "p6p7": _p6p7, "backbone": _backbone}


class DiagramFigure(Figure):
    """A figure that shows itself as one PNG in a notebook, whether or not pyplot's inline
    support is loaded (a plain :class:`Figure` then shows only its text)."""

    def _repr_png_(self) -> bytes:
        return figure_png(self, dpi=DPI)


def diagram(name: str, height: Optional[int] = None, width: Optional[int] = None,
            config: Config = REFERENCE, *, fig: Optional[Figure] = None) -> Figure:
    """A dataflow drawing for the lessons: boxes for the layers, arrows labelled with the
    shapes :func:`fpnlab.shapes.stage_shapes` gives for a ``height x width`` image (default:
    the trace's photo) under ``config``. ``name`` is one of :data:`DIAGRAMS`:

    ``"stem"`` conv1, FrozenBN, ReLU, max-pool; ``"bottleneck"`` layer2's block 0 with both
    places the stride can go and both shortcuts; ``"stage"`` layer1..layer4 as blocks;
    ``"top-down"`` the FPN's laterals, upsampling and 3x3 outputs; ``"p6p7"`` the top blocks and
    the use_P5 rule; ``"backbone"`` the whole model with its strides.

    ``fig`` is cleared, resized and drawn into when given; otherwise a new figure (no pyplot
    state) that a notebook shows once when it is a cell's value.
    """
    if name not in _DRAW:
        raise ValueError(f"diagram: unknown name {name!r}; choose one of "
                         + ", ".join(repr(n) for n in DIAGRAMS))
    if height is None or width is None:
        from .reference import reference_image_size

        h, w = reference_image_size()
        height = h if height is None else height
        width = w if width is None else width
    shapes = _diagram_shapes(name, height, width, config)
    if fig is None:
        fig = DiagramFigure(dpi=DPI)
    else:
        fig.clear()

    def sheet_for(h: float, title: str, subtitle: str = "") -> _Sheet:
        return _Sheet(fig, h, title, subtitle)

    _DRAW[name](sheet_for, shapes, config)
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
           "ShapeErrorDrawing", "columns", "DPI", "TITLE_PT", "TICK_PT", "diagram", "DIAGRAMS",
           "DiagramFigure", "KINDS"]

if __name__ == "__main__":
    sys.exit(main())
