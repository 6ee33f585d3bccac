"""Pictures of the pyramid: the padded image and P3..P7 as grids, and activations over the image.

Everything draws on a plain :class:`matplotlib.figure.Figure` (no pyplot state, no ipympl), so
the same code serves the inline backend in a notebook, the Agg backend in tests and the README::

    python -m fpnlab.plots docs/pyramid.png

Each level is drawn over the same image area: a cell of level ``Pk`` covers ``stride x stride``
pixels of the padded input (8 for P3 ... 128 for P7). The zero padding added to reach a multiple of
``size_divisible`` is shaded, and where a level's grid reaches past the padded input (P6 and P7
round up: ``ceil(480 / 64) * 64 = 512``) the overhang is drawn dashed.
"""
from __future__ import annotations

import io
import sys
from typing import Mapping, Optional, Sequence

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .shapes import LEVELS, REFERENCE, Config, Shape, ShapeError, stage_shapes, strides

PAD_COLOR = "#9e9e9e"
IMAGE_COLOR = "#cfe3f5"
GRID_COLOR = "#1f4e79"
OVERHANG_COLOR = "#c0392b"


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg, whatever the session's backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _hw(shape: Shape):
    return int(shape[-2]), int(shape[-1])


def _grid(ax, rows: int, cols: int, cell: float, color=GRID_COLOR, lw=0.5) -> None:
    """``rows x cols`` cells of side ``cell`` from the origin, as one LineCollection."""
    h, w = rows * cell, cols * cell
    segs = [((0, r * cell), (w, r * cell)) for r in range(rows + 1)]
    segs += [((c * cell, 0), (c * cell, h)) for c in range(cols + 1)]
    ax.add_collection(LineCollection(segs, colors=color, linewidths=lw))


def _image_array(image, height: int, width: int):
    """A PIL image resized to ``height x width`` as an array, or None."""
    if image is None:
        return None
    import numpy as np
    from PIL import Image

    return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))


def _panel(ax, resized_hw, padded_hw, extent_hw, image_arr=None) -> None:
    """Common background: the resized image (or a tint), the shaded padding, the axes limits."""
    rh, rw = resized_hw
    ph, pw = padded_hw
    eh, ew = extent_hw
    if image_arr is not None:
        ax.imshow(image_arr, extent=(0, rw, rh, 0), interpolation="bilinear", alpha=0.85)
    else:
        ax.add_patch(Rectangle((0, 0), rw, rh, facecolor=IMAGE_COLOR, edgecolor="none"))
    # the zero padding: right strip and bottom strip of the padded input
    if pw > rw:
        ax.add_patch(Rectangle((rw, 0), pw - rw, ph, facecolor=PAD_COLOR, alpha=0.6,
                               hatch="//", edgecolor="white", lw=0))
    if ph > rh:
        ax.add_patch(Rectangle((0, rh), rw, ph - rh, facecolor=PAD_COLOR, alpha=0.6,
                               hatch="//", edgecolor="white", lw=0))
    ax.add_patch(Rectangle((0, 0), pw, ph, fill=False, edgecolor="black", lw=1.2))
    ax.set_xlim(-4, max(pw, ew) + 4)
    ax.set_ylim(max(ph, eh) + 4, -4)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def draw_pyramid(shapes: Mapping[str, Shape], image=None, fig: Optional[Figure] = None,
                 levels: Sequence[str] = LEVELS, title: Optional[str] = None) -> Figure:
    """Draw the padded input and each level of ``shapes`` (from :func:`fpnlab.shapes.stage_shapes`).

    ``image`` (a PIL image, optional) is shown in the resized area. Returns the figure.
    """
    for k in ("resized", "padded") + tuple(levels):
        if k not in shapes:
            raise ValueError(f"draw_pyramid: shapes has no {k!r} stage (got {', '.join(shapes)})")
    st = strides(dict(shapes))
    rh, rw = _hw(shapes["resized"])
    ph, pw = _hw(shapes["padded"])
    extent = {lv: (_hw(shapes[lv])[0] * st[lv], _hw(shapes[lv])[1] * st[lv]) for lv in levels}
    eh = max([ph] + [e[0] for e in extent.values()])
    ew = max([pw] + [e[1] for e in extent.values()])
    n = len(levels) + 1
    cols = n if n <= 4 else 3
    rows = -(-n // cols)
    if fig is None:   # panels as wide as the figure allows, as high as the input's aspect needs
        fig_w = min(11.0, 3.7 * cols)
        panel_w = fig_w / cols
        fig = Figure(figsize=(fig_w, rows * (panel_w * (eh + 8) / (ew + 8) + 0.75) + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    arr = _image_array(image, rh, rw)

    ax = axes[0]
    _panel(ax, (rh, rw), (ph, pw), (eh, ew), arr)
    pad_note = "no padding" if (ph, pw) == (rh, rw) else f"+{ph - rh} rows, +{pw - rw} cols"
    ax.set_title(f"padded input {ph}x{pw}\nresized {rh}x{rw}; {pad_note}", fontsize=9)

    for ax, lv in zip(axes[1:], levels):
        h, w = _hw(shapes[lv])
        s = st[lv]
        _panel(ax, (rh, rw), (ph, pw), (eh, ew), arr)
        _grid(ax, h, w, s, lw=0.35 if s <= 8 else 0.7)
        lh, lw_ = extent[lv]
        if lh > ph or lw_ > pw:   # the level's last row/column reaches past the padded input
            ax.add_patch(Rectangle((0, 0), lw_, lh, fill=False, edgecolor=OVERHANG_COLOR,
                                   lw=1.2, ls="--"))
            for x, y, ww, hh in ((pw, 0, lw_ - pw, lh), (0, ph, min(lw_, pw), lh - ph)):
                if ww > 0 and hh > 0:
                    ax.add_patch(Rectangle((x, y), ww, hh, facecolor=OVERHANG_COLOR, alpha=0.15,
                                           edgecolor="none"))
        c = shapes[lv][-3] if len(shapes[lv]) >= 3 else "?"
        over = f"\ngrid {lh}x{lw_} px > input" if (lh > ph or lw_ > pw) else f"\ngrid {lh}x{lw_} px"
        ax.set_title(f"{lv}: {c} x {h} x {w}, stride {s}{over}", fontsize=9)
    for ax in axes[n:]:
        ax.set_visible(False)
    if title is None and levels:
        title = (f"ResNet-50-FPN {levels[0]}-{levels[-1]}: each cell of a level covers stride x "
                 "stride input pixels (grey = zero padding, red = grid past the input)")
    fig.suptitle(title or "the padded input (grey = zero padding)", fontsize=10)
    fig.tight_layout()
    return fig


def draw_shape_error(err: ShapeError, fig: Optional[Figure] = None, window: int = 6) -> Figure:
    """The impossible top-down addition of ``err``: the bottom-right corner of the upsampled
    map (red) drawn over the lateral map (blue), in cells; the cells only one of them has are
    filled."""
    fig = fig or Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    if err.left is None or err.right is None:
        ax.text(0.5, 0.5, str(err), ha="center", va="center", wrap=True, fontsize=9)
        ax.set_axis_off()
        return fig
    (uh, uw), (lh, lw_) = _hw(err.left), _hw(err.right)
    _grid(ax, lh, lw_, 1, color=GRID_COLOR, lw=1.6)
    _grid(ax, uh, uw, 1, color=OVERHANG_COLOR, lw=0.9)
    # cells covered by one map but not the other: a bottom strip and a right strip
    for r0, c0, r1, c1 in ((min(uh, lh), 0, max(uh, lh), max(uw, lw_)),
                           (0, min(uw, lw_), min(uh, lh), max(uw, lw_))):
        if r1 > r0 and c1 > c0:
            ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, facecolor=OVERHANG_COLOR,
                                   alpha=0.3, edgecolor="none"))
    rows, cols = max(uh, lh), max(uw, lw_)
    ax.set_xlim(max(cols - window, 0) - 0.3, cols + 0.5)
    ax.set_ylim(rows + 0.5, max(rows - window, 0) - 0.3)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)
    ax.set_xlabel("column (bottom-right corner shown)", fontsize=8)
    ax.set_ylabel("row", fontsize=8)
    ax.set_title(f"{err.level}: upsampled {uh}x{uw} (red) + lateral {lh}x{lw_} (blue)\n"
                 "cannot be added: the sizes must match exactly", fontsize=9)
    fig.tight_layout()
    return fig


def pyramid_png(height: int, width: int, config: Config = REFERENCE, image=None,
                dpi: int = 72, levels: Sequence[str] = LEVELS) -> bytes:
    """PNG of the pyramid for a ``height x width`` image, or of the failure when the top-down
    addition is impossible for this configuration."""
    try:
        shapes = stage_shapes(height, width, config)
    except ShapeError as err:
        return figure_png(draw_shape_error(err), dpi=dpi)
    return figure_png(draw_pyramid(shapes, image=image, levels=levels), dpi=dpi)


def pyramid_image(height: int, width: int, config: Config = REFERENCE, image=None,
                  levels: Sequence[str] = LEVELS, dpi: int = 72):
    """The pyramid as a plain ``IPython.display.Image`` (an ``image/png`` output): shows in any
    notebook front end and in nbconvert/nbgrader HTML, with no widget state to store."""
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
    fig = fig or Figure(figsize=(8, 3.4))
    ax_img, ax_map = fig.subplots(1, 2)
    h, w = act.shape
    extent = (0, w * stride, h * stride, 0)
    lo, hi = float(act.min()), float(act.max())
    for ax in (ax_img, ax_map):
        if background is not None:
            ax.imshow(background, extent=(0, background.shape[1], background.shape[0], 0))
        ax.set_xlim(0, max(w * stride, background.shape[1] if background is not None else 0))
        ax.set_ylim(max(h * stride, background.shape[0] if background is not None else 0), 0)
        ax.tick_params(labelsize=7)
        if image_hw is not None:
            ax.add_patch(Rectangle((0, 0), image_hw[1], image_hw[0], fill=False,
                                   edgecolor="white", lw=1, ls="--"))
    im = ax_map.imshow(act, extent=extent, cmap="magma",
                       alpha=0.75 if background is not None else 1,
                       interpolation="nearest", vmin=lo, vmax=hi if hi > lo else lo + 1)
    fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    ax_img.set_title("input (padded)", fontsize=9)
    ax_map.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def readme_figure(path: str) -> str:
    """Write the README's pyramid picture (the trace's sample image, reference configuration)."""
    from .images import sample_image

    img = sample_image()
    shapes = stage_shapes(img.height, img.width, REFERENCE)
    fig = draw_pyramid(shapes, image=img)
    # a photo in a PNG: 256 colours keep it readable at a third of the size
    from PIL import Image

    picture = Image.open(io.BytesIO(figure_png(fig, dpi=80))).convert("RGB")
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


__all__ = ["draw_pyramid", "draw_shape_error", "draw_activation", "figure_png", "pyramid_png",
           "pyramid_image", "readme_figure", "main"]

if __name__ == "__main__":
    sys.exit(main())
