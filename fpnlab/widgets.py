"""Interactive views of the shapes: the explorer, the feature maps, the trace diff (ipywidgets 8).

The logic lives in pure functions that return data and HTML (:func:`explore`,
:func:`explorer_html`, :func:`trace_diff_rows`, :func:`trace_diff_html`, :func:`compute_levels`,
:func:`activation_png`); the widgets only wire controls to them, so everything is testable
without a kernel. Pictures are PNG bytes in an ``Image`` widget (Agg, no ipympl), and a bad value
in a control shows a message in the widget instead of raising into the notebook::

    fpnlab.widgets.shape_explorer()                       # the shape engine alone
    fpnlab.widgets.shape_explorer(fpnlab.oracle.backbone)  # ... and a model's real shapes (meta)
    fpnlab.widgets.pyramid()                               # the pyramid of the trace's photo
    fpnlab.widgets.feature_maps(model, fpnlab.oracle.preprocess(fpnlab.images.sample_image()))
    fpnlab.widgets.trace_diff(my_trace, fpnlab.tracing.reference_trace())

The explorer reacts at once: its height and width are sliders (with a number box beside each
for an exact value); the table follows every slider step in the kernel's own thread (the shape
engine answers in microseconds, a model on the meta device in milliseconds), and the picture is
redrawn by a thread of its own (:class:`Painter`) once the slider has settled for
:data:`SETTLE_S`, on one kept figure (:class:`fpnlab.plots.PyramidDrawing`): neither waits for
the other. Sizes default to the trace's photo (:func:`fpnlab.reference.reference_image_size`).
"""
from __future__ import annotations

import copy
import html
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .reference import reference_image_size
from .shapes import (INTERNALS, LEVELS, REFERENCE, SIZE_DIVISIBLE_CHOICES, STAGES, Config, Shape,
                     ShapeError, format_shape, pad_to, resized_size, stage_shapes, strides)

#: Control ranges (the issue's): image sides, resize limits, and the choices.
SIDE_RANGE = (32, 1600)
MIN_SIZE_RANGE = (32, 1600)
MAX_SIZE_RANGE = (32, 3200)
OUT_CHANNELS_CHOICES = (256, 1024)
P6_CHOICES = ("C5", "P5")

BAD_BG, ERROR_BG, FIRST_BG = "#ffe0e0", "#ffc7c7", "#ff8a80"

#: Seconds a height/width slider must rest before the picture is redrawn (the table does not wait).
SETTLE_S = 0.08


def _photo_size(height, width, image=None) -> Tuple[object, object]:
    """``(height, width)`` with None replaced: the image's size, else the trace's photo's."""
    if height is None or width is None:
        h, w = (image.height, image.width) if image is not None else reference_image_size()
        height = h if height is None else height
        width = w if width is None else width
    return height, width


# ============================================================================ the model, on meta
def meta_copy(model):
    """A copy of ``model`` whose parameters and buffers live on the meta device.

    Nothing is copied but the module structure: the learner's model (and its device) is left
    alone, and tracing the copy costs no memory and no compute.
    """
    import torch
    from torch import nn

    memo: Dict[int, object] = {}     # deepcopy takes what the memo holds instead of copying
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in memo:
            continue
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
        else:
            new = torch.empty_like(t, device="meta")
        memo[id(t)] = new
    return copy.deepcopy(model, memo).eval()


class MetaModel:
    """A model to trace on the meta device: an ``nn.Module`` (copied to meta) or a function that
    builds one (called under ``torch.device("meta")``)."""

    def __init__(self, model):
        from torch import nn

        if isinstance(model, nn.Module):
            self.module = meta_copy(model)
        elif callable(model):
            import torch

            with torch.device("meta"):
                built = model()
            if not isinstance(built, nn.Module):
                raise TypeError(f"the model function returned {type(built).__name__}, "
                                "not a torch.nn.Module")
            self.module = built.to("meta").eval()
        else:
            raise TypeError("model must be a torch.nn.Module or a function that builds one, "
                            f"got {type(model).__name__}")
        self.name = type(self.module).__name__
        self._seen: Dict[Tuple[int, int, int], object] = {}

    def shapes(self, height: int, width: int, batch: int = 1) -> Dict[str, Shape]:
        """The stage shapes the model produces for an ``N x 3 x height x width`` input.

        Remembered per input size (the last 256; an exception too): a slider drag changes the
        photo at every step but the padded input only every ``size_divisible`` pixels, so most
        steps need no trace."""
        from .tracing import meta_shapes

        key = (height, width, batch)
        if key not in self._seen:
            if len(self._seen) >= 256:
                self._seen.pop(next(iter(self._seen)))
            try:
                self._seen[key] = meta_shapes(lambda: self.module, height, width, batch)
            except Exception as err:
                self._seen[key] = err
        found = self._seen[key]
        if isinstance(found, Exception):
            raise found
        return dict(found)

    def forget(self) -> None:
        """Drop the remembered shapes (the bench times a trace with it)."""
        self._seen.clear()


def _as_meta_model(model) -> Optional[MetaModel]:
    if model is None or isinstance(model, MetaModel):
        return model
    return MetaModel(model)


# ============================================================================ explorer: pure logic
@dataclass
class Row:
    """One stage of the explorer's table."""

    stage: str
    engine: Optional[Shape]
    stride: Optional[int]
    model: Optional[Shape] = None
    status: str = ""          # "", "ok", "mismatch", "error"
    note: str = ""


@dataclass
class Exploration:
    """What the explorer shows for one setting of its controls."""

    height: object
    width: object
    config: Optional[Config]
    shapes: Dict[str, Shape] = field(default_factory=dict)
    messages: List[str] = field(default_factory=list)   # bad control values: nothing else shown
    shape_error: Optional[ShapeError] = None
    model_shapes: Optional[Dict[str, Shape]] = None
    model_error: Optional[str] = None
    model_out_channels: Optional[int] = None     # the model's ``out_channels``, when it says
    rows: List[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.messages and self.shape_error is None


def _check_int(name: str, value, lo: int, hi: int, messages: List[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        messages.append(f"{name} must be a whole number, got {value!r}")
    elif not lo <= value <= hi:
        messages.append(f"{name} must be between {lo} and {hi}, got {value}")


def validate(height, width, min_size, max_size, size_divisible, out_channels, p6_from) -> List[str]:
    """Every problem with the control values, as messages (empty when all are usable)."""
    msgs: List[str] = []
    _check_int("height", height, *SIDE_RANGE, msgs)
    _check_int("width", width, *SIDE_RANGE, msgs)
    _check_int("min_size", min_size, *MIN_SIZE_RANGE, msgs)
    _check_int("max_size", max_size, *MAX_SIZE_RANGE, msgs)
    if size_divisible not in SIZE_DIVISIBLE_CHOICES:
        msgs.append(f"size_divisible must be one of {SIZE_DIVISIBLE_CHOICES}, "
                    f"got {size_divisible!r}")
    if out_channels not in OUT_CHANNELS_CHOICES:
        msgs.append(f"out_channels must be one of {OUT_CHANNELS_CHOICES}, got {out_channels!r}")
    if p6_from not in P6_CHOICES:
        msgs.append(f"P6 reads C5 or P5, got {p6_from!r}")
    return msgs


def explore(height=None, width=None, min_size: int = REFERENCE.min_size,
            max_size: int = REFERENCE.max_size, size_divisible: int = REFERENCE.size_divisible,
            out_channels: int = REFERENCE.out_channels, p6_from: str = REFERENCE.p6_from,
            model: Optional[MetaModel] = None) -> Exploration:
    """The explorer's content for one setting of its controls. Never raises.

    Shapes and strides come from :func:`fpnlab.shapes.stage_shapes`; with ``model`` (a
    :class:`MetaModel`), the shapes it produces on the meta device for the padded input sit next
    to them and every stage where the two disagree is marked ``mismatch``. When the top-down
    addition is impossible, the row of the failing level says why (``status == "error"``).
    ``height`` and ``width`` default to the trace's photo.
    """
    height, width = _photo_size(height, width)
    res = Exploration(height, width, None)
    res.messages = validate(height, width, min_size, max_size, size_divisible, out_channels,
                            p6_from)
    if res.messages:
        return res
    try:
        cfg = REFERENCE.with_(min_size=min_size, max_size=max_size, size_divisible=size_divisible,
                              out_channels=out_channels, p6_from=p6_from)
        res.config = cfg
        try:
            res.shapes = stage_shapes(height, width, cfg)
        except ShapeError as err:
            res.shape_error = err
            res.shapes = dict(err.shapes)
        if model is not None:
            rh, rw = resized_size(height, width, cfg.min_size, cfg.max_size)
            ph, pw = pad_to(rh, cfg.size_divisible), pad_to(rw, cfg.size_divisible)
            oc = getattr(model.module, "out_channels", None)
            res.model_out_channels = oc if isinstance(oc, int) else None
            try:
                res.model_shapes = model.shapes(ph, pw, cfg.batch)
            except Exception as err:  # the learner's model may fail: show it, never raise
                res.model_error = f"{type(err).__name__}: {err}"
        res.rows = _explorer_rows(res)
    except Exception as err:  # pragma: no cover - a last guard: the widget must never raise
        res.messages.append(f"unexpected {type(err).__name__}: {err}")
    return res


def _explorer_rows(res: Exploration) -> List[Row]:
    st = strides({k: () for k in STAGES})
    rows = []
    err = res.shape_error
    for stage in STAGES:
        engine = res.shapes.get(stage)
        row = Row(stage, engine, st.get(stage))
        if res.model_shapes is not None:
            row.model = res.model_shapes.get(stage)
            if engine is not None and row.model is not None:
                row.status = "ok" if tuple(row.model) == tuple(engine) else "mismatch"
            elif engine is not None and stage not in ("image", "resized"):
                row.status, row.note = "mismatch", "the model produced no such stage"
        if err is not None and stage == err.level:
            row.engine = None
            row.status = "error"
            row.note = (f"impossible top-down addition: upsampled {format_shape(err.left)} + "
                        f"lateral {format_shape(err.right)}")
        rows.append(row)
    return rows


def _cell(value: Optional[Shape]) -> str:
    return "-" if value is None else format_shape(value)


_COLUMNS = ("fpnlab-stage", "fpnlab-engine", "fpnlab-stride", "fpnlab-model", "fpnlab-mark")


def explorer_html(res: Exploration) -> str:
    """The explorer's HTML: the messages, or the table of every stage (and the error)."""
    esc = html.escape
    if res.messages:
        items = "".join(f"<li>{esc(m)}</li>" for m in res.messages)
        return (f'<div class="fpnlab-messages" style="color:#b00020">'
                f"<b>Cannot compute the shapes:</b><ul>{items}</ul></div>")
    with_model = res.model_shapes is not None or res.model_error is not None
    head = ["stage", "shape (shape engine)", "stride"] + (["shape (your model, meta)", ""]
                                                          if with_model else [])
    out = ['<table class="fpnlab-shapes" style="border-collapse:collapse;font-family:monospace">',
           "<tr>" + "".join(f'<th style="text-align:left;padding:2px 10px">{esc(h)}</th>'
                            for h in head) + "</tr>"]
    for r in res.rows:
        bg = {"mismatch": BAD_BG, "error": ERROR_BG}.get(r.status, "")
        style = f' style="background:{bg}"' if bg else ""
        engine = _cell(r.engine)
        if r.status == "error":
            engine = "impossible"
        elif r.engine is None and res.shape_error is not None and r.stage not in res.shapes:
            engine = "not reached"
        cells = [r.stage, engine,
                 "-" if r.stride is None else str(r.stride)]
        if with_model:
            mark = {"ok": "&#10003;", "mismatch": "&#10007; differs", "error": "&#10007;"}.get(
                r.status, "")
            cells += [_cell(r.model), mark]
        tds = []
        for i, c in enumerate(cells):
            cls = _COLUMNS[i]
            text = c if cls == "fpnlab-mark" else esc(c)
            tds.append(f'<td class="{cls}" style="padding:1px 10px">{text}</td>')
        out.append(f'<tr data-stage="{esc(r.stage)}" data-status="{r.status}"{style}>'
                   + "".join(tds) + "</tr>")
        if r.note:
            out.append(f'<tr data-note="{esc(r.stage)}"{style}><td></td>'
                       f'<td colspan="{len(cells) - 1}" style="padding:1px 10px">'
                       f"{esc(r.note)}</td></tr>")
    out.append("</table>")
    if res.shape_error is not None:
        out.append(f'<div class="fpnlab-error" style="color:#b00020;margin-top:4px">'
                   f"{esc(str(res.shape_error))}</div>")
    err = res.shape_error
    if err is not None and res.model_shapes is not None and err.level in res.model_shapes:
        out.append(f'<div class="fpnlab-model-note" style="margin-top:4px">Your model produced '
                   f"{esc(err.level)} anyway: it resizes the top-down map to the lateral's size "
                   "(torchvision's FPN interpolates with <code>size=</code>) instead of doubling "
                   "it; maskrcnn-benchmark's <code>scale_factor=2</code> fails here.</div>")
    if res.model_error is not None:
        out.append(f'<div class="fpnlab-model-error" style="color:#b00020;margin-top:4px">'
                   f"<b>your model raised</b> {esc(res.model_error)}</div>")
    oc = res.model_out_channels
    if oc is not None and res.config is not None and oc != res.config.out_channels:
        out.append(f'<div class="fpnlab-model-note" style="margin-top:4px">Your model was built '
                   f"with out_channels={oc}; the controls say {res.config.out_channels}.</div>")
    if res.model_shapes is not None and any(r.status == "mismatch" for r in res.rows):
        out.append('<div style="margin-top:4px">Rows in red: your model and the shape engine '
                   "disagree (same controls, same padded input).</div>")
    return "\n".join(out)


def displayed_shape(html_text: str, stage: str) -> Optional[str]:
    """The shape the explorer's HTML shows for ``stage`` (the shape-engine column), or None."""
    import re

    m = re.search(rf'<tr data-stage="{re.escape(stage)}"[^>]*>.*?<td class="fpnlab-engine"[^>]*>'
                  r"([^<]*)</td>", html_text, re.S)
    return m.group(1) if m else None


# ============================================================================ widgets: thin views
def _widgets():
    import ipywidgets

    return ipywidgets


def _png(data: bytes):
    w = _widgets()
    # natural size (a VBox would stretch it to the cell's width), never wider than the cell
    return w.Image(value=data, format="png",
                   layout=w.Layout(max_width="100%", align_self="flex-start"))


def pyramid(height: Optional[int] = None, width: Optional[int] = None,
            config: Config = REFERENCE, image=None, levels: Sequence[str] = LEVELS):
    """The pyramid drawing of :mod:`fpnlab.plots` as an ``Image`` widget (inline, no ipympl):
    the padded input and each of ``levels`` (P3..P7 by default; ``("P3", "P4", "P5")`` for the
    FPN lesson) as grids with sizes and strides. An impossible configuration draws its failure.
    ``height`` and ``width`` default to ``image``'s size, else the trace's photo's."""
    from .plots import pyramid_png

    height, width = _photo_size(height, width, image)
    return _png(pyramid_png(height, width, config, image=image, levels=levels))


def picture_label(res: Exploration) -> str:
    """What the explorer's picture shows, in words (the caption under it, which the browser
    test reads to tell one picture from the next)."""
    if res.messages:
        return ""
    if res.shape_error is not None:
        return (f"the impossible top-down addition at {res.shape_error.level} for a "
                f"{res.height}x{res.width} photo")
    ph, pw = res.shapes["padded"][-2:]
    return f"the pyramid of a {res.height}x{res.width} photo, padded to {ph}x{pw}"


class Painter:
    """Draws the explorer's picture on a thread of its own, newest request first.

    :meth:`request` hands over an :class:`Exploration` and a delay; the thread waits until no
    newer request has come for that long (a slider that settles), draws the newest one on a kept
    :class:`fpnlab.plots.PyramidDrawing` (or :class:`fpnlab.plots.ShapeErrorDrawing`) and sets
    the ``Image`` widget, so the kernel's own thread is free for the table meanwhile; ``caption``
    (an HTML widget) says what the picture shows, or why it could not be drawn. The thread ends
    after :attr:`idle_exit_s` without work and starts again on the next request. :meth:`wait`
    blocks until the picture shows the last request (tests, the bench).
    """

    idle_exit_s = 30.0

    def __init__(self, picture, image=None, levels: Sequence[str] = LEVELS, caption=None):
        self.picture, self.image, self.levels, self.caption = picture, image, tuple(levels), caption
        self._cond = threading.Condition()
        self._job: Optional[Tuple[int, float, Exploration]] = None
        self._requested = 0
        self._drawn = 0
        self._thread: Optional[threading.Thread] = None
        self._drawing = None
        self._error_drawing = None
        #: (request number, seconds from the request's due time to the picture set) per drawing
        self.timings: List[Tuple[int, float]] = []

    def request(self, res: Exploration, delay: float = 0.0) -> int:
        """Draw ``res`` once ``delay`` seconds pass with no newer request. Returns its number."""
        with self._cond:
            self._requested += 1
            self._job = (self._requested, time.monotonic() + max(delay, 0.0), res)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fpnlab-explorer-picture",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return self._requested

    def wait(self, timeout: float = 30.0) -> bool:
        """Block until the last request is drawn; False when ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._drawn >= self._requested, timeout)

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._drawn < self._requested

    def _next(self) -> Optional[Tuple[int, float, Exploration]]:
        with self._cond:
            while True:
                if self._job is None:
                    if not self._cond.wait(self.idle_exit_s) and self._job is None:
                        self._thread = None
                        return None
                    continue
                left = self._job[1] - time.monotonic()
                if left <= 0:
                    job, self._job = self._job, None
                    return job
                self._cond.wait(left)

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            number, due, res = job
            self.draw(res)
            with self._cond:
                self.timings.append((number, time.monotonic() - due))
                self._drawn = max(self._drawn, number)
                self._cond.notify_all()

    def draw(self, res: Exploration) -> None:
        """Draw ``res`` now, in the calling thread (never raises: a failure shows in the
        caption)."""
        try:
            picture = self.picture
            if res.messages:
                picture.layout.display = "none"
                self._say("")
                return
            from .plots import PyramidDrawing, ShapeErrorDrawing

            if res.shape_error is not None:
                if self._error_drawing is None:
                    self._error_drawing = ShapeErrorDrawing()
                png = self._error_drawing.png(res.shape_error)
            else:
                if self._drawing is None:
                    self._drawing = PyramidDrawing(self.levels, image=self.image)
                png = self._drawing.png(res.shapes)
            # the caption first: when the new picture arrives, it already says what it shows
            # (one message each: this front end fails on a binary value sent with another trait)
            self._say(f"<small>{html.escape(picture_label(res))}</small>")
            picture.value = png
            picture.layout.display = None
        except Exception as err:  # never raise: the thread must go on
            self._say(f'<span style="color:#b00020">explorer picture: '
                      f"{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>")

    def _say(self, text: str) -> None:
        if self.caption is not None and self.caption.value != text:
            self.caption.value = text


def shape_explorer(model=None, height: Optional[int] = None, width: Optional[int] = None,
                   config: Config = REFERENCE, image=None, show_pyramid: bool = True,
                   settle_s: float = SETTLE_S):
    """Sliders (and number boxes) for the image size, controls for the configuration, the table
    of every stage's shape and stride, and the pyramid drawing; with ``model`` (an ``nn.Module``
    or a function building one), the shapes that model really produces on the meta device too,
    mismatches in red. Used in lesson 06 and the explorer notebook.

    The table follows every step of a slider at once; the picture is redrawn on a thread of its
    own when the slider has rested ``settle_s`` seconds, and at once after a number box (Enter)
    or another control. ``height`` and ``width`` default to ``image``'s size, else the trace's
    photo's.

    Returns a ``VBox``; ``box.controls`` maps ``height``, ``width`` (the number boxes),
    ``min_size``, ``max_size``, ``size_divisible``, ``out_channels``, ``p6_from`` to their widgets,
    ``box.sliders`` maps ``height`` and ``width`` to the sliders, ``box.table`` is the HTML widget,
    ``box.pyramid`` the Image widget and ``box.caption`` the line under it (both None without the
    picture), ``box.settle()`` waits until the picture shows the current controls and
    ``box.painter`` is the :class:`Painter`.
    """
    w = _widgets()
    for name, allowed in (("size_divisible", SIZE_DIVISIBLE_CHOICES),
                          ("out_channels", OUT_CHANNELS_CHOICES), ("p6_from", P6_CHOICES)):
        if getattr(config, name) not in allowed:
            raise ValueError(f"shape_explorer: config.{name} is {getattr(config, name)!r}; the "
                             f"control offers {allowed}")
    if isinstance(settle_s, bool) or not isinstance(settle_s, (int, float)) or settle_s < 0:
        raise ValueError(f"shape_explorer: settle_s must be a number of seconds >= 0, "
                         f"got {settle_s!r}")
    height, width = _photo_size(height, width, image)
    meta = None
    model_problem = None
    if model is not None:
        try:
            meta = _as_meta_model(model)
        except Exception as err:
            model_problem = f"cannot use this model: {type(err).__name__}: {err}"

    style = {"description_width": "90px"}
    layout = w.Layout(width="230px")
    controls = {
        "height": w.IntText(value=height, style=style, layout=w.Layout(width="80px"),
                            continuous_update=False),
        "width": w.IntText(value=width, style=style, layout=w.Layout(width="80px"),
                           continuous_update=False),
        "min_size": w.IntText(value=config.min_size, description="min_size", style=style,
                              layout=layout, continuous_update=False),
        "max_size": w.IntText(value=config.max_size, description="max_size", style=style,
                              layout=layout, continuous_update=False),
        "size_divisible": w.Dropdown(options=list(SIZE_DIVISIBLE_CHOICES),
                                     value=config.size_divisible, description="size_divisible",
                                     style=style, layout=layout),
        "out_channels": w.Dropdown(options=list(OUT_CHANNELS_CHOICES), value=config.out_channels,
                                   description="out_channels", style=style, layout=layout),
        "p6_from": w.ToggleButtons(options=list(P6_CHOICES), value=config.p6_from,
                                   description="P6 from", style={"description_width": "90px",
                                                                 "button_width": "60px"}),
    }
    sliders = {name: w.IntSlider(value=_clamp(controls[name].value), min=SIDE_RANGE[0],
                                 max=SIDE_RANGE[1], description=name, readout=False,
                                 continuous_update=True, style=style,
                                 layout=w.Layout(width="330px"))
               for name in ("height", "width")}
    for name, c in controls.items():
        c.add_class(f"fpnlab-{name.replace('_', '-')}")
    for name, c in sliders.items():
        c.add_class(f"fpnlab-{name}-slider")
    hint = w.HTML(f"<small>height and width: {SIDE_RANGE[0]}..{SIDE_RANGE[1]} pixels; drag a "
                  "slider (the table follows at once, the picture when you let go), or type an "
                  "exact value in its box and press Enter.</small>")
    table = w.HTML()
    table.add_class("fpnlab-table")
    picture = _png(b"") if show_pyramid else None
    status = w.HTML()
    caption = painter = None
    if picture is not None:
        picture.add_class("fpnlab-pyramid")
        caption = w.HTML()
        caption.add_class("fpnlab-pyramid-caption")
        painter = Painter(picture, image=image, caption=caption)
    syncing = [False]      # a slider and its box are setting each other: one update, not two

    def refresh(settled: bool = True):
        """The table now; the picture now (``settled``) or once the sliders rest."""
        try:
            values = {k: c.value for k, c in controls.items()}
            res = explore(**values, model=meta)
            text = explorer_html(res)
            if model_problem:
                text = (f'<div class="fpnlab-model-error" style="color:#b00020">'
                        f"{html.escape(model_problem)}</div>") + text
            table.value = text
            if painter is not None:
                painter.request(res, 0.0 if settled else settle_s)
            status.value = ""
        except Exception as err:  # never raise into the notebook
            status.value = (f'<span style="color:#b00020">explorer error: '
                            f"{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>")

    def from_slider(name):
        def changed(change):
            if syncing[0]:
                return
            syncing[0] = True
            try:
                controls[name].value = change["new"]
            finally:
                syncing[0] = False
            refresh(settled=False)
        return changed

    def from_box(name):
        def changed(change):
            if syncing[0]:
                return
            value = change["new"]
            if isinstance(value, int) and SIDE_RANGE[0] <= value <= SIDE_RANGE[1]:
                syncing[0] = True
                try:
                    sliders[name].value = value
                finally:
                    syncing[0] = False
            refresh(settled=True)
        return changed

    for name, c in controls.items():
        c.observe(from_box(name) if name in sliders else (lambda _change: refresh()),
                  names="value")
    for name, c in sliders.items():
        c.observe(from_slider(name), names="value")
    rows = [w.HBox([sliders[k], controls[k]]) for k in ("height", "width")]
    left = w.VBox(rows + [controls[k] for k in ("min_size", "max_size")])
    right = w.VBox([controls[k] for k in ("size_divisible", "out_channels", "p6_from")])
    parts = [w.HBox([left, right]), hint, table, status]
    parts += [picture, caption] if picture is not None else []
    box = w.VBox(parts)
    box.add_class("fpnlab-explorer")
    box.controls, box.sliders, box.table, box.pyramid = controls, sliders, table, picture
    box.caption, box.painter, box.update = caption, painter, refresh
    box.settle = ((lambda timeout=30.0: painter.wait(timeout)) if painter
                  else (lambda timeout=0.0: True))
    refresh()
    return box


def _clamp(value) -> int:
    """A slider's value for a box's: inside :data:`SIDE_RANGE` (a bad box value keeps its
    message; the slider shows the nearest end)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return SIDE_RANGE[0]
    return min(max(value, SIDE_RANGE[0]), SIDE_RANGE[1])


# ============================================================================ feature maps
@dataclass
class Levels:
    """A model's pyramid for one image, kept on the CPU for display."""

    maps: Dict[str, object]              # level -> tensor (C, h, w), float32, CPU
    background: object                   # padded input as H x W x 3 in 0..1 (numpy)
    image_hw: Tuple[int, int]            # the real (resized) image inside the padded input
    strides: Dict[str, int]


def _input_tensor(image):
    """(padded NCHW tensor, image (H, W), background HxWx3) from a PIL image, the dict of
    :func:`fpnlab.oracle.preprocess`, or a tensor."""
    import numpy as np
    import torch

    from .oracle import PIXEL_MEAN, preprocess

    if hasattr(image, "convert") and hasattr(image, "size"):      # a PIL image
        image = preprocess(image)
    if isinstance(image, Mapping):
        if "padded" not in image:
            raise ValueError("feature_maps: the image dict has no 'padded' tensor "
                             "(use fpnlab.oracle.preprocess(img))")
        x = image["padded"]
        sizes = image.get("image_sizes") or [tuple(x.shape[-2:])]
        bgr = x[0].detach().float().cpu() + torch.tensor(PIXEL_MEAN).view(3, 1, 1)
        bg = (bgr[[2, 1, 0]] / 255).clamp(0, 1).permute(1, 2, 0).numpy()
        hw = tuple(int(v) for v in sizes[0])
    elif type(image) is torch.Tensor:
        x = image if image.dim() == 4 else image[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("feature_maps: expected a 1 x 3 x H x W tensor, "
                             f"got {tuple(image.shape)}")
        t = x[0].detach().float().cpu()
        t = (t - t.min()) / (t.max() - t.min()).clamp_min(1e-12)
        bg = t.permute(1, 2, 0).numpy()
        hw = tuple(int(v) for v in x.shape[-2:])
    else:
        raise TypeError("feature_maps: image must be a PIL image, fpnlab.oracle.preprocess(...)'s "
                        f"dict or a tensor, got {type(image).__name__}")
    return x, hw, np.ascontiguousarray(bg)


def compute_levels(model, image) -> Levels:
    """Run ``model`` once on ``image`` (on the model's device) and keep P3..P7 on the CPU."""
    import torch

    from .oracle import fpn_outputs

    x, hw, bg = _input_tensor(image)
    params = list(itertools.chain(model.parameters(), model.buffers()))
    dev = params[0].device if params else x.device
    if dev.type == "meta":
        raise ValueError("feature_maps needs a model with weights, not one on the meta device")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(x.to(dev))
    finally:
        model.train(was_training)
    maps = {k: v[0].detach().float().cpu() for k, v in fpn_outputs(out).items()}
    st = strides({k: () for k in LEVELS})
    return Levels(maps, bg, hw, {k: st[k] for k in LEVELS})


def activation_png(levels: Levels, level: str, channel: int, dpi: int = 72) -> bytes:
    """PNG of one channel of one level over the padded input."""
    from .plots import draw_activation, figure_png

    if level not in levels.maps:
        raise ValueError(f"no level {level!r}: choose one of {', '.join(levels.maps)}")
    fmap = levels.maps[level]
    if not 0 <= channel < fmap.shape[0]:
        raise ValueError(f"{level} has channels 0..{fmap.shape[0] - 1}, got {channel}")
    act = fmap[channel].numpy()
    title = (f"{level} channel {channel}: {act.shape[0]}x{act.shape[1]}, stride "
             f"{levels.strides[level]}")
    return figure_png(draw_activation(act, levels.background, levels.strides[level],
                                      levels.image_hw, title), dpi=dpi)


def feature_maps(model, image):
    """Pick a level and a channel, see that channel's activation over the image.

    ``model`` returns the pyramid (torchvision's ``BackboneWithFPN`` or a maskrcnn-benchmark
    style tuple), ``image`` is a PIL image, the dict of :func:`fpnlab.oracle.preprocess` or a
    1 x 3 x H x W tensor. The model runs once, on its own device; moving the controls only redraws.
    """
    w = _widgets()
    status = w.HTML()
    try:
        levels = compute_levels(model, image)
    except Exception as err:
        status.value = (f'<span style="color:#b00020">feature_maps: cannot run the model: '
                        f"{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>")
        return w.VBox([status])
    names = list(levels.maps)
    level = w.Dropdown(options=names, value=names[0], description="level")
    channel = w.BoundedIntText(value=0, min=0, max=levels.maps[names[0]].shape[0] - 1,
                               description="channel")
    level.add_class("fpnlab-level")
    channel.add_class("fpnlab-channel")
    picture = _png(b"")

    def update(_change=None):
        try:
            c = levels.maps[level.value].shape[0]
            channel.max = c - 1
            picture.value = activation_png(levels, level.value, min(channel.value, c - 1))
            fmap = levels.maps[level.value]
            status.value = (f"<small>{html.escape(level.value)}: {fmap.shape[0]} channels of "
                            f"{fmap.shape[1]}x{fmap.shape[2]}</small>")
        except Exception as err:
            status.value = (f'<span style="color:#b00020">{html.escape(type(err).__name__)}: '
                            f"{html.escape(str(err))}</span>")

    level.observe(update, names="value")
    channel.observe(update, names="value")
    box = w.VBox([w.HBox([level, channel]), status, picture])
    box.add_class("fpnlab-feature-maps")
    box.controls, box.picture, box.levels, box.update = (
        {"level": level, "channel": channel}, picture, levels, update)
    update()
    return box


# ============================================================================ trace diff
@dataclass
class DiffRow:
    stage: str
    learner: Optional[Shape]
    reference: Optional[Shape]
    op: str = ""
    status: str = "same"   # "same", "first", "differs", "not traced", "extra"


def _shapes_and_ops(trace) -> Tuple[Dict[str, Shape], Dict[str, str]]:
    from .tracing import Trace

    if isinstance(trace, Trace):
        shapes: Dict[str, Shape] = {}
        ops: Dict[str, str] = {}
        for e in trace.entries:
            shapes.setdefault(e.stage, tuple(e.shape))
            ops.setdefault(e.stage, e.op)
        return shapes, ops
    if isinstance(trace, Mapping):
        return {k: tuple(int(d) for d in v) for k, v in trace.items()}, {}
    raise TypeError(f"trace_diff: expected a fpnlab.tracing.Trace or a dict of shapes, "
                    f"got {type(trace).__name__}")


def trace_diff_rows(learner, reference=None) -> List[DiffRow]:
    """Both traces' stages in forward order (canonical stages, then the FPN internals, then any
    other in the order met).

    A stage the reference has but your trace lacks counts as a difference once your trace has
    started (a model that stops at P5 lacks P6 and P7); the stages before your trace's first one
    (``image`` and ``resized`` for a model's trace) are ``not traced``, stages only your trace has
    are ``extra``. The first difference is ``first``, the later ones ``differs``.
    """
    from .tracing import reference_trace

    a, ops = _shapes_and_ops(learner)
    e, ref_ops = _shapes_and_ops(reference if reference is not None else reference_trace())
    known = list(STAGES) + list(INTERNALS)
    order = {s: i for i, s in enumerate(known)}
    seen = list(dict.fromkeys(list(e) + list(a)))
    names = sorted(seen, key=lambda s: (order.get(s, len(order)), seen.index(s)))
    started = False
    rows, first = [], True
    for s in names:
        ls, rs = a.get(s), e.get(s)
        started = started or ls is not None
        row = DiffRow(s, ls, rs, ops.get(s) or ref_ops.get(s, ""))
        if ls is None and not started:
            row.status = "not traced"
        elif rs is None:
            row.status = "extra"
        elif ls != rs:
            row.status = "first" if first else "differs"
            first = False
        rows.append(row)
    return rows


def trace_diff_html(learner, reference=None) -> str:
    """The two traces side by side as HTML, the first divergence highlighted and named."""
    esc = html.escape
    rows = trace_diff_rows(learner, reference)
    out = ['<table class="fpnlab-trace-diff" '
           'style="border-collapse:collapse;font-family:monospace">',
           "<tr>" + "".join(f'<th style="text-align:left;padding:2px 10px">{h}</th>'
                            for h in ("stage", "op", "yours", "reference", "")) + "</tr>"]
    for r in rows:
        bg = {"first": FIRST_BG, "differs": BAD_BG}.get(r.status, "")
        style = f' style="background:{bg}"' if bg else ""
        if r.status in ("not traced", "extra"):
            style = ' style="color:#888"'
        mark = {"first": "&#9664; first divergence", "differs": "differs",
                "not traced": "not in your trace",
                "extra": "not in the reference"}.get(r.status, "")
        out.append(f'<tr data-stage="{esc(r.stage)}" data-status="{r.status}"{style}>'
                   + "".join(f'<td style="padding:1px 10px">{v}</td>' for v in
                             (esc(r.stage), esc(r.op), esc(_cell(r.learner)),
                              esc(_cell(r.reference)), mark)) + "</tr>")
    out.append("</table>")
    first = next((r for r in rows if r.status == "first"), None)
    if first is None:
        out.append('<div class="fpnlab-diff-summary" style="color:#1b5e20">'
                   "Every stage you traced matches the reference.</div>")
    else:
        from .checks import diagnose

        cause = None
        if first.learner is not None and first.reference is not None:
            cause = diagnose(first.stage, first.reference, first.learner)
        text = (f"First divergence at {first.stage}: yours {_cell(first.learner)}, "
                f"reference {_cell(first.reference)}.")
        if first.learner is None:
            text += " Your trace has no such stage."
        if cause:
            text += f" {cause}"
        out.append(f'<div class="fpnlab-diff-summary" style="color:#b00020">{esc(text)}</div>')
    return "\n".join(out)


def trace_diff(learner, reference=None):
    """Two traces side by side (yours, the reference trace by default), the first divergence
    highlighted. Traces are :class:`fpnlab.tracing.Trace` (or dicts of shapes)."""
    w = _widgets()
    try:
        value = trace_diff_html(learner, reference)
    except Exception as err:
        value = (f'<span style="color:#b00020">trace_diff: {html.escape(type(err).__name__)}: '
                 f"{html.escape(str(err))}</span>")
    out = w.HTML(value)
    out.add_class("fpnlab-trace-diff")
    return out


__all__ = ["shape_explorer", "pyramid", "feature_maps", "trace_diff", "explore", "explorer_html",
           "displayed_shape", "validate", "MetaModel", "meta_copy", "compute_levels", "Painter",
           "picture_label", "SETTLE_S",
           "activation_png", "trace_diff_rows", "trace_diff_html", "Exploration", "Row", "DiffRow",
           "Levels"]
