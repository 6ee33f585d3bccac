"""Record the shapes a model produces at named stages, render a trace, diff two traces.

Forward hooks record each stage's output shape, so the same code traces a model on the CPU, on a
GPU or on the meta device (shapes only, no weights, no compute)::

    >>> model = fpnlab.oracle.backbone().to("meta")              # doctest: +SKIP
    >>> t = trace_model(model, torch.empty(1, 3, 480, 576, device="meta"))  # doctest: +SKIP
    >>> print(t.render())                                        # doctest: +SKIP
    padded  input                1x3x480x576
    stem    body.stem            1x64x120x144
    ...
"""
from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .shapes import LEVELS, STAGES, Shape, format_shape

#: Where each stage's output comes from, for the two namings the course meets.
#: A value is a module path; for a module returning several levels, a tuple of stage names.
MASKRCNN_POINTS: Dict[str, object] = {
    "body.stem": "stem", "body.layer1": "C2", "body.layer2": "C3", "body.layer3": "C4",
    "body.layer4": "C5", "fpn": LEVELS,
}
TORCHVISION_POINTS: Dict[str, object] = {
    "body.maxpool": "stem", "body.layer1": "C2", "body.layer2": "C3", "body.layer3": "C4",
    "body.layer4": "C5", "fpn": LEVELS,
}


@dataclass
class Entry:
    stage: str
    op: str
    shape: Shape


@dataclass
class Trace:
    """An ordered list of (stage, operation, shape)."""

    entries: List[Entry] = field(default_factory=list)

    def add(self, stage: str, op: str, shape: Sequence[int]) -> None:
        self.entries.append(Entry(stage, op, tuple(int(d) for d in shape)))

    def shapes(self) -> Dict[str, Shape]:
        return {e.stage: e.shape for e in self.entries}

    def __getitem__(self, stage: str) -> Shape:
        return self.shapes()[stage]

    def __contains__(self, stage: str) -> bool:
        return stage in self.shapes()

    def render(self) -> str:
        if not self.entries:
            return "(empty trace)"
        w1 = max(len(e.stage) for e in self.entries)
        w2 = max(len(e.op) for e in self.entries)
        return "\n".join(f"{e.stage:<{w1}}  {e.op:<{w2}}  {format_shape(e.shape)}"
                         for e in self.entries)

    def __str__(self) -> str:
        return self.render()

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], op: str = "") -> "Trace":
        t = cls()
        for k, v in shapes.items():
            t.add(k, op, v)
        return t


@dataclass
class Difference:
    stage: str
    expected: Optional[Shape]
    actual: Optional[Shape]

    def __str__(self) -> str:
        def f(s):
            return "missing" if s is None else format_shape(s)
        return f"{self.stage}: expected {f(self.expected)}, got {f(self.actual)}"


def diff(actual: Trace | Mapping[str, Shape], expected: Trace | Mapping[str, Shape],
         stages: Optional[Iterable[str]] = None) -> List[Difference]:
    """Every stage whose shape differs, in canonical order (a stage missing on one side counts).

    By default the stages compared are those ``expected`` names, in canonical order; ``stages``
    chooses them and their order.
    """
    a = actual.shapes() if isinstance(actual, Trace) else dict(actual)
    e = expected.shapes() if isinstance(expected, Trace) else dict(expected)
    if stages is not None:
        names = list(stages)
    else:
        order = {s: i for i, s in enumerate(STAGES)}
        names = sorted(e, key=lambda s: order.get(s, len(order)))
    out = []
    for s in names:
        ea, ee = a.get(s), e.get(s)
        ea = tuple(ea) if ea is not None else None
        ee = tuple(ee) if ee is not None else None
        if ea != ee:
            out.append(Difference(s, ee, ea))
    return out


def first_difference(actual, expected, stages=None) -> Optional[Difference]:
    d = diff(actual, expected, stages)
    return d[0] if d else None


def _outputs(value) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [v for v in value.values() if isinstance(v, torch.Tensor)]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def detect_points(model: nn.Module) -> Dict[str, object]:
    """The stage map that fits ``model``'s naming (maskrcnn-benchmark or torchvision)."""
    names = {n for n, _ in model.named_modules()}
    for points in (MASKRCNN_POINTS, TORCHVISION_POINTS):
        if all(p in names for p in points):
            return points
    raise ValueError("cannot tell where the stages are in this model: expected modules "
                     f"{', '.join(MASKRCNN_POINTS)} (maskrcnn-benchmark names) or "
                     f"{', '.join(TORCHVISION_POINTS)} (torchvision names); pass points=")


def record(model: nn.Module, x: torch.Tensor, points: Mapping[str, object],
           input_stage: Optional[str] = "padded", *,
           inputs: Optional[Mapping[str, str]] = None,
           calls: Optional[Mapping[Callable, Sequence[str]]] = None) -> Trace:
    """Run ``model(x)`` once and return the shapes it produced, in the order they were produced.

    ``points`` maps a module path to the stage its output is, or to a tuple of stage names for a
    module that returns several tensors. ``inputs`` maps a module path to the stage its first
    input is (the FPN's merged map entering a 3x3, say). ``calls`` maps a torch function (such as
    ``F.interpolate``) to the stage names of its successive results. Runs under
    ``torch.no_grad``; works on the meta device, where elementwise operations take the
    :class:`MetaElementwise` short cut.
    """
    modules = dict(model.named_modules())
    t = Trace()
    if input_stage:
        t.add(input_stage, "input", x.shape)
    handles = []

    def add(stage, op, value):
        outs = _outputs(value)
        stages = (stage,) if isinstance(stage, str) else tuple(stage)
        for name, out in zip(stages, outs):
            t.add(name, op, out.shape)

    def hook_for(path, target):
        return lambda _m, _i, output: add(target, path, output)

    def pre_hook_for(path, target):
        return lambda _m, args: add(target, f"{path} (input)", args[0] if args else None)

    try:
        for path, target in points.items():
            if path not in modules:
                raise ValueError(f"no module named {path!r} in this model")
            handles.append(modules[path].register_forward_hook(hook_for(path, target)))
        for path, target in (inputs or {}).items():
            if path not in modules:
                raise ValueError(f"no module named {path!r} in this model")
            handles.append(modules[path].register_forward_pre_hook(pre_hook_for(path, target)))
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if x.is_meta:
                stack.enter_context(MetaElementwise())
            if calls:
                stack.enter_context(_CallRecorder(calls, add))
            model(x)
    finally:
        for h in handles:
            h.remove()
    return t


def _elementwise_table() -> Dict[Callable, Tuple[bool, bool]]:
    """torch function -> (binary, in place), for the elementwise operations a backbone runs."""
    table: Dict[Callable, Tuple[bool, bool]] = {}
    base = torch._C.TensorBase
    for name in ("add", "sub", "mul", "div"):
        table[getattr(base, name)] = (True, False)
        table[getattr(base, name + "_")] = (True, True)
        table[getattr(torch, name)] = (True, False)
    table[torch.Tensor.__rsub__] = (True, False)
    for name in ("rsqrt", "sqrt", "relu", "sigmoid", "neg", "exp"):
        table[getattr(base, name)] = (False, False)
        table[getattr(base, name + "_")] = (False, True)
        table[getattr(torch, name)] = (False, False)
        table[getattr(torch, name + "_")] = (False, True)
    return table


_ELEMENTWISE = _elementwise_table()


def _broadcast(a: torch.Size, b: torch.Size) -> Optional[Tuple[int, ...]]:
    """NumPy broadcasting of two shapes, or None where they do not broadcast."""
    if a == b:
        return tuple(a)
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return tuple(out)


class MetaElementwise(torch.overrides.TorchFunctionMode):
    """Shapes only: answers elementwise operations on meta tensors by broadcasting.

    On the meta device PyTorch computes an elementwise result's shape in Python (its reference
    implementations), about 80 us a call; a ResNet-50 with frozen batch norm makes some 400
    such calls a forward, nearly all of a meta forward's time. Here the result is an empty meta
    tensor of the broadcast shape and the operands' dtype, laid out like the operand of that
    shape. Anything else (mixed dtypes, ``out=``, autograd, shapes that do not broadcast) goes
    to PyTorch, so a mismatch raises PyTorch's own error message.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = _ELEMENTWISE.get(func)
        if kind is not None and not (kwargs and set(kwargs) - {"alpha"}):
            out = self._shortcut(kind, args)
            if out is not None:
                return out
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _shortcut(kind: Tuple[bool, bool], args) -> Optional[torch.Tensor]:
        binary, inplace = kind
        if len(args) != (2 if binary else 1):
            return None
        tensors = [a for a in args if type(a) is torch.Tensor]
        if not tensors or len(tensors) + sum(type(a) in (int, float) for a in args) != len(args):
            return None
        first = tensors[0]
        for t in tensors:
            if not t.is_meta or t.dtype != first.dtype or (t.requires_grad and torch.is_grad_enabled()):
                return None
        if not first.dtype.is_floating_point:
            return None
        shape = tuple(first.shape)
        for t in tensors[1:]:
            shape = _broadcast(shape, t.shape)
            if shape is None:
                return None
        if inplace:
            return args[0] if type(args[0]) is torch.Tensor and tuple(args[0].shape) == shape else None
        like = next((t for t in tensors if tuple(t.shape) == shape), None)
        if like is not None and not like.is_contiguous():
            # (torch.empty_like on meta goes through the slow Python path this class avoids)
            return torch.empty_strided(shape, like.stride(), dtype=first.dtype, device="meta")
        return torch.empty(shape, dtype=first.dtype, device="meta")


class _CallRecorder(torch.overrides.TorchFunctionMode):
    """Records the results of chosen torch functions (hooks cannot see functional calls)."""

    def __init__(self, calls, add):
        super().__init__()
        self.pending = {fn: list(names) for fn, names in calls.items()}
        self.add = add

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        names = self.pending.get(func)
        if names:
            self.add(names.pop(0), getattr(func, "__name__", str(func)), out)
        return out


def trace_model(model: nn.Module, x: torch.Tensor, points: Optional[Mapping[str, object]] = None
                ) -> Trace:
    """:func:`record` with the stage map detected from the model's module names."""
    return record(model, x, points or detect_points(model))


def meta_shapes(model_fn: Callable[[], nn.Module], height: int, width: int, batch: int = 1,
                points: Optional[Mapping[str, object]] = None) -> Dict[str, Shape]:
    """Build a model on the meta device and return its stage shapes for an N x 3 x H x W input."""
    with torch.device("meta"):
        model = model_fn()
    model = model.to("meta").eval()
    x = torch.empty(batch, 3, height, width, device="meta")
    return trace_model(model, x, points).shapes()


def reference_trace() -> Trace:
    """The reference trace's stages as a :class:`Trace`."""
    from .reference import reference_shapes
    return Trace.from_shapes(reference_shapes(), op="reference")


def side_by_side(actual: Trace, expected: Trace) -> str:
    """Two traces in two columns, ``<-`` on every stage that differs."""
    a, e = actual.shapes(), expected.shapes()
    order = {s: i for i, s in enumerate(STAGES)}
    names = sorted(set(a) | set(e), key=lambda s: order.get(s, len(order)))
    rows = [("stage", "yours", "reference", "")]
    for s in names:
        fa = format_shape(a[s]) if s in a else "-"
        fe = format_shape(e[s]) if s in e else "-"
        rows.append((s, fa, fe, "" if fa == fe else "<- differs"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}".rstrip()
                     for r in rows)
