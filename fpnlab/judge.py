"""Test cells whose verdict the learner's code cannot forge: compute here, judge elsewhere.

A graded test cell holds two functions and the cases to run them on::

    def outputs(case):                # the learner's code runs here
        block = LastLevelP6P7(case.cin, case.cout)
        return {"P6": run_p6p7(block, ...)[0]}

    def judge(case, got):             # the oracle and fpnlab.checks only: never the learner's code
        check_tensor(got["P6"], "P6", expected_shape(case))

    run_test(outputs, judge, [dict(cin=16, cout=8)], grade_id="p6p7-structure")
    # ... and, between nbgrader's hidden-test markers (the release has none of it):
    run_test(outputs, judge, [dict(cin=24, cout=12), dict(cin=12, cout=12)], hidden=True)

In a learner's own kernel (JupyterLab, ``fpnlab check``) :func:`run_test` calls ``outputs`` and
then ``judge`` on each case, so a failure raises the check's message at once. When graded, the
grader's copy of the cell starts with :func:`grading`: the learner's kernel then only *computes*
``outputs(case)`` and hands the result over as data (tensors as raw bytes, the rest as tagged
JSON: :func:`encode`) in a display output of type :data:`MIME`. A separate process with no learner
code in it (``autograder/judge.py``) runs the same cell from the instructor's source with the
hand-over (:func:`judging`): ``judge(case, decode(handed_over))`` decides the points. Expected
values are computed only there; a missing, duplicated or malformed hand-over is 0 for the cell.

Whatever the learner's process does to this module, its tests or Python, it can change only the
data it hands over, and data earns points only when it is what a correct answer computes.

In the learner's own kernel (local mode only; grading never uses any of it):

- a failure shows as its message alone, the cell's whole error, as ``fpnlab check`` prints it
  (:func:`error_text`; ``CheckError`` and :class:`NotAnswered` render themselves through
  IPython's ``_render_traceback_``), with no frame from inside fpnlab;
- an exercise that still holds the stub's ``raise NotImplementedError()`` says so in one line
  naming what to write (:func:`unanswered`), in a test cell and, once the setup cell has called
  :func:`notebook_messages`, wherever the stub is reached;
- ``run_test(..., grade_id=...)`` remembers whether that test cell's visible cases passed, and
  :func:`summary` (a lesson's last cell) adds up the visible tests' points.
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
import sys
import textwrap
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = ["Case", "run_test", "encode", "decode", "MIME", "HandOverError", "NotAnswered",
           "error_text", "unanswered", "notebook_messages", "summary"]

MIME = "application/vnd.fpnlab.handover+json"
VERSION = 1
MAX_DEPTH = 48              # nesting of a handed-over value
MAX_NODES = 20000           # values (and modules) in one hand-over
MAX_STRING = 200            # characters of a handed-over string
MAX_TENSOR_BYTES = 16 << 20  # bytes of one tensor's data
MODULE_DATA = 1 << 20        # a module's parameters travel with values up to this many elements
# Exception names a judge may quote when the learner's code raised (any other: "an exception").
KNOWN_ERRORS = frozenset({
    "ArithmeticError", "AssertionError", "AttributeError", "CheckError", "IndexError",
    "KeyError", "LookupError", "MemoryError", "NameError", "NotImplementedError", "OSError",
    "OverflowError", "RecursionError", "RuntimeError", "StopIteration", "TypeError",
    "UnboundLocalError", "ValueError", "ZeroDivisionError", "AnswerError", "ImportError",
    "ModuleNotFoundError"})
_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.<>]{0,99}\Z")


class HandOverError(ValueError):
    """A hand-over that is not what :func:`encode` makes: the cell scores 0."""

    def _render_traceback_(self):          # in a learner's kernel: the message, no traceback
        return error_text(type(self).__name__, str(self)).splitlines()


class Case(dict):
    """One case of a test: a dict whose keys read as attributes (``case.cin``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def label(self) -> str:
        """``case 2 (cin=16, cout=8)``; a hidden case shows no inputs: ``hidden case 2``."""
        if self.get("_hidden"):
            return f"hidden case {self['_index'] + 1}"
        plain = (int, float, str, bool, tuple, type(None))
        shown = ", ".join(f"{k}={v!r}" for k, v in self.items()
                          if not k.startswith("_") and isinstance(v, plain))
        return f"case {self['_index'] + 1}" + (f" ({shown})" if shown else "")


# ----------------------------------------------------------------------------- modes
# local: outputs then judge, here (the default). handover: outputs only, published as data.
# judging: judge only, on data the grader read from the learner's notebook.
_state: Dict[str, Any] = {"mode": "local", "grade_id": None, "calls": 0, "handovers": None,
                          "verdicts": None}


def grading(grade_id: str) -> None:
    """The first line of every graded test cell in the grader's copy: hand over, do not judge."""
    _state.update(mode="handover", grade_id=str(grade_id), calls=0)


def judging(grade_id: str, handovers: Mapping, verdicts: list) -> None:
    """Set by the judge process before it runs a test cell of the instructor's source:
    ``handovers`` maps ``(call, case)`` to what the learner's kernel handed over."""
    _state.update(mode="judging", grade_id=str(grade_id), calls=0, handovers=handovers,
                  verdicts=verdicts)


def local() -> None:
    _state.update(mode="local", grade_id=None, calls=0, handovers=None, verdicts=None)


def _cases(cases: Iterable[Mapping], hidden: bool) -> List[Case]:
    out = []
    for i, c in enumerate(cases):
        case = Case(c)
        case["_index"], case["_hidden"] = i, bool(hidden)
        out.append(case)
    return out


def run_test(outputs: Callable[[Case], Any], judge: Callable[[Case, Any], None],
             cases: Sequence[Mapping] = ({},), hidden: bool = False,
             grade_id: Optional[str] = None, stage: Optional[str] = None) -> None:
    """Run ``outputs`` on each case and judge the result (see the module's docstring).

    ``grade_id`` (the test cell's own, on its visible call) only serves the learner's
    :func:`summary`; the grader knows each cell's grade id from the notebook. ``stage`` names
    what ``outputs`` runs (``"the FPN forward"``): in the learner's kernel an exception from
    their code keeps its traceback and gains a note with the stage, the case and the likely
    cause (:func:`fpnlab.checks.explain_error`)."""
    mode = _state["mode"]
    call = _state["calls"]
    _state["calls"] = call + 1
    cases = _cases(cases, hidden)
    if mode == "handover":
        for case in cases:
            try:
                value = {"value": encode(outputs(case))}
            except BaseException as e:  # noqa: BLE001 (reported as data; the judge says 0)
                if isinstance(e, KeyboardInterrupt):
                    raise
                name = type(e).__name__
                value = {"raised": name if name in KNOWN_ERRORS else "Exception"}
            _publish({"v": VERSION, "grade_id": _state["grade_id"], "call": call,
                      "case": case["_index"], **value})
        return
    if mode == "judging":
        verdicts = _state["verdicts"]
        for case in cases:
            item = _state["handovers"].get((call, case["_index"]))
            verdicts.append(_judge_one(judge, case, item))
            if not verdicts[-1]["passed"]:
                return
        return
    __tracebackhide__ = True                   # local: the learner sees the message at once,
    try:                                       # and IPython shows no frame of this function
        for case in cases:
            try:
                got = outputs(case)
            except Exception as e:
                _add_note(e, case, stage)
                raise
            judge(case, decode(encode(got)))
    except Exception as e:
        shown = unanswered(e)
        if grade_id is not None and not hidden:
            _record(grade_id, shown or e)
        if shown is not None:
            raise shown from None
        raise
    if grade_id is not None and not hidden:
        _record(grade_id, None)


def _add_note(exc: BaseException, case: Case, stage: Optional[str]) -> None:
    """A learner's exception, in their kernel: one note naming the stage, the case and the
    likely cause (none for the course's own errors, which already say all of it)."""
    from .checks import CheckError, explain_error

    if isinstance(exc, (CheckError, HandOverError, NotAnswered)) or unanswered(exc) is not None \
            or not hasattr(exc, "add_note"):
        return
    where = f"{stage}, {case.label()}" if stage else case.label()
    cause = explain_error(exc)
    exc.add_note(f"fpnlab: raised while running {where}."
                 + (f" Likely cause: {cause}" if cause else ""))


def _judge_one(judge, case: Case, item) -> dict:
    from .checks import CheckError

    where = case.label()
    if item is None:
        return {"passed": False, "message": f"{where}: no result was handed over (the test did "
                                            "not run to this case: run it in your notebook)."}
    if "raised" in item:
        name = item["raised"]
        shown = name if name in KNOWN_ERRORS else "an exception"
        hint = ("a check failed in your notebook" if name == "CheckError" else
                f"your code raised {shown}")
        return {"passed": False, "message": f"{where}: {hint}; run this test in your notebook to "
                                            "see the message."}
    try:
        got = decode(item["value"])
    except HandOverError as e:
        return {"passed": False, "message": f"{where}: the result handed over is malformed ({e})."}
    try:
        judge(case, got)
    except CheckError as e:
        return {"passed": False, "message": f"{where}: {e}"}
    except NameError as e:  # the test's own code is broken (no learner data names a variable)
        return {"passed": False, "message": f"{where}: the judge failed on this test ({e})"}
    except Exception as e:  # noqa: BLE001 (a result of the wrong kind: 0, not a crash)
        import traceback
        traceback.print_exc(file=sys.__stderr__)   # for the instructor's log, never feedback
        return {"passed": False, "message": f"{where}: the result could not be judged "
                                            f"({type(e).__name__}): it is not what the test expects."}
    return {"passed": True, "message": ""}


# ----------------------------------------------------------------------------- the learner's view
# Local mode only: what a learner sees in their own kernel. Nothing here runs when graded.

WIDTH = 88            # characters per line of a shown message: JupyterLab breaks longer lines
                      # anywhere, even inside a word
STUB = "raise NotImplementedError()"


class NotAnswered(NotImplementedError):
    """An exercise that still raises its stub's ``NotImplementedError()``: shown as one line
    that names what to write (:func:`unanswered` makes it)."""

    def _render_traceback_(self):          # IPython shows these lines instead of a traceback
        return error_text(type(self).__name__, str(self)).splitlines()


def error_text(ename: str, evalue: str, width: int = WIDTH) -> str:
    """A failure as the learner reads it: the cell's whole error in the notebook, and what
    ``fpnlab check`` prints under a failing test. ``Name: message``, each line wrapped between
    words at ``width`` (the first line's continuations indented by 4, an indented line's by its
    own indent); an unanswered exercise's message alone, on one line::

        CheckError: stem: shape (1, 64, 119, 143) but expected (1, 64, 120, 144).
          H and W are off by one at stem (119 x 143 instead of 120 x 144): is the input padded
          to a multiple of 32 (size_divisible)?
    """
    evalue = str(evalue or "").strip()
    if ename == NotAnswered.__name__:
        return " ".join(evalue.split())
    lines = []
    for line in (f"{ename}: {evalue}" if evalue else ename).splitlines():
        indent = line[:len(line) - len(line.lstrip())]
        lines += textwrap.wrap(line, width, subsequent_indent=indent or "    ",
                               break_long_words=False, break_on_hyphens=False) or [""]
    return "\n".join(lines)


def unanswered(exc: BaseException) -> Optional[NotAnswered]:
    """``exc`` as :class:`NotAnswered` when it is an exercise's stub: a bare
    ``NotImplementedError()`` raised by code of a notebook cell (not by a library, whose files
    are on disk); else None. The message names the function or method to write, or, for a stub
    at the top level of a cell, that cell."""
    if type(exc) is not NotImplementedError or exc.args or exc.__traceback__ is None:
        return None
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if os.path.isfile(code.co_filename) and "/ipykernel_" not in code.co_filename:
        return None
    if code.co_name == "<module>":
        return NotAnswered(f"This exercise is not answered yet: write your answer in this cell "
                           f"(replace `{STUB}`), then run it.")
    name = getattr(code, "co_qualname", code.co_name)
    return NotAnswered(f"`{name}` is not answered yet: write it in its cell "
                       f"(replace `{STUB}`), run that cell, then this one.")


def _shell():
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def notebook_messages() -> None:
    """Called by every lesson's setup cell. In an IPython kernel, an exercise's stub reached
    anywhere (its own cell, a demonstration, a test) shows as :class:`NotAnswered`'s one line;
    the cell still fails (the kernel replies "error"). Any other ``NotImplementedError`` keeps
    its traceback. Outside IPython it does nothing. Used in 01 .. 07."""
    shell = _shell()
    if shell is None:
        return

    def show(shell, etype, value, tb, tb_offset=None):
        shown = unanswered(value)
        if shown is None:
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        else:
            shell.showtraceback((NotAnswered, shown, tb))

    shell.set_custom_exc((NotImplementedError,), show)


# What run_test(..., grade_id=...) saw in this kernel: grade_id -> whether its visible cases
# passed and the failure as shown; the grade ids recorded by the cell now running.
_results: Dict[str, dict] = {}
_this_cell: List[str] = []
_hooked: list = []          # the shells whose post_run_cell calls _after_cell


def _record(grade_id: str, failure: Optional[BaseException]) -> None:
    message = "" if failure is None else error_text(type(failure).__name__, str(failure))
    if isinstance(failure, NotAnswered):       # the summary lists them all: what, not how
        message = message.split(": ", 1)[0] + "."
    _results[str(grade_id)] = {"passed": failure is None, "message": message}
    shell = _shell()
    if shell is not None:
        _this_cell.append(str(grade_id))
        if shell not in _hooked:
            shell.events.register("post_run_cell", _after_cell)
            _hooked.append(shell)


def _after_cell(result) -> None:
    """A test cell that failed after its run_test passed (code below the call) has not passed."""
    error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
    for grade_id in _this_cell:
        if error is not None and _results[grade_id]["passed"]:
            _results[grade_id] = {"passed": False,
                                  "message": error_text(type(error).__name__, str(error))}
    _this_cell.clear()


def summary(points: Mapping[str, float], out=None) -> None:
    """A lesson's last cell: your visible tests so far, as ``fpnlab check`` reports them, from
    what run_test recorded in this kernel. ``points`` maps each visible test cell's grade id to
    its points, in notebook order; the cell is written from the notebook's nbgrader metadata
    (``autograder.authoring.summary_cell``). A test cell not run in this kernel counts 0.
    Hidden tests are not run in a learner's notebook and not counted. Prints nothing when
    graded. Used in 01 .. 07::

        PASS  resize-trace  1/1
        FAIL  resize-sizes  0/2
              `resized_size` is not answered yet.
        1 of 2 visible tests pass: 1 of 3 points (hidden tests may still fail when graded)
    """
    if _state["mode"] != "local":
        return
    from .selfcheck import Outcome, report

    outcomes = []
    for grade_id, value in points.items():
        rec = _results.get(grade_id) or {"passed": False, "message": "not run yet in this kernel"}
        outcomes.append(Outcome(grade_id, float(value), rec["passed"], rec["message"]))
    report(outcomes, out=out)


def _publish(payload: dict) -> None:
    from IPython.display import display

    display({MIME: payload}, raw=True)


# ----------------------------------------------------------------------------- codec

def _torch():
    import torch
    return torch


def _safe_name(name: str) -> str:
    return name if isinstance(name, str) and _SAFE_NAME.match(name) else "object"


def encode(value, _depth: int = 0, _count: Optional[list] = None) -> Any:
    """``value`` as JSON data: numbers, strings, None, lists, tuples, dicts, torch tensors,
    sizes, dtypes, devices, NumPy arrays and ``nn.Module`` trees; anything else becomes a
    record of its type's name (a checker then says what it got)."""
    count = _count if _count is not None else [0]
    count[0] += 1
    if _depth > MAX_DEPTH or count[0] > MAX_NODES:
        raise HandOverError("a result nested too deeply or too large")
    t = type(value)
    if value is None or t is bool or t is int:
        return value
    if t is float:
        return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
    if t is str:
        return {"t": "str", "v": value[:MAX_STRING]}
    if t in (list, tuple):
        items = [encode(v, _depth + 1, count) for v in value]
        return items if t is list else {"t": "tuple", "v": items}
    if t is dict:
        return {"t": "dict", "k": [encode(k, _depth + 1, count) for k in value],
                "v": [encode(v, _depth + 1, count) for v in value.values()]}
    mod = sys.modules.get("torch")
    if mod is not None:
        if t is mod.Tensor or t is mod.nn.Parameter:
            return _encode_tensor(value, t is mod.nn.Parameter)
        if t is mod.Size:
            return {"t": "size", "v": [int(v) for v in value]}
        if t is mod.dtype:
            return {"t": "dtype", "v": str(value).replace("torch.", "")}
        if t is mod.device:
            return {"t": "device", "v": str(value)}
        if isinstance(value, mod.nn.Module):
            return _encode_module(value, _depth, count)
    np = sys.modules.get("numpy")
    if np is not None and t is np.ndarray and value.dtype.kind in "biuf":
        return {"t": "ndarray", "dtype": str(value.dtype), "shape": list(value.shape),
                "data": _b64(np.ascontiguousarray(value).tobytes())}
    return {"t": "object", "type": _safe_name(t.__name__), "has_shape": hasattr(value, "shape")}


def _b64(raw: bytes) -> str:
    if len(raw) > MAX_TENSOR_BYTES:
        raise HandOverError(f"a tensor of more than {MAX_TENSOR_BYTES >> 20} MB")
    return base64.b64encode(raw).decode("ascii")


def _encode_tensor(x, parameter: bool = False, with_data: bool = True) -> dict:
    torch = _torch()
    rec = {"t": "tensor", "dtype": str(x.dtype).replace("torch.", ""), "shape": list(x.shape),
           "device": x.device.type, "grad": bool(x.requires_grad), "param": parameter,
           "data": None}
    if x.device.type != "meta" and with_data:
        flat = x.detach().to("cpu").contiguous()
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        elif flat.dtype == torch.bool:
            flat = flat.to(torch.uint8)
        rec["data"] = _b64(flat.numpy().tobytes())
    return rec


def _mro(cls) -> List[str]:
    return [f"{_safe_name(c.__module__)}:{_safe_name(c.__qualname__)}" for c in cls.__mro__
            if c is not object][:32]


def _encode_module(m, depth: int, count: list, with_data: Optional[bool] = None) -> dict:
    if with_data is None:            # the whole tree travels with values, or none of it
        with_data = sum(p.numel() for p in m.parameters()) <= MODULE_DATA
    attrs = {}
    for k, v in vars(m).items():
        if k.startswith("_") or k == "training":
            continue
        if type(v) in (bool, int, float, str, type(None)) or (
                type(v) is tuple and all(type(i) in (bool, int, float, str) for i in v)):
            attrs[k] = encode(v, depth + 1, count)
    children = {}
    for name, child in m._modules.items():
        count[0] += 1
        if child is not None:
            children[name] = _encode_module(child, depth + 1, count, with_data)
        if depth > MAX_DEPTH or count[0] > MAX_NODES:
            raise HandOverError("a module tree too large")
    return {"t": "module", "mro": _mro(type(m)), "training": bool(m.training), "attrs": attrs,
            "params": {k: (None if p is None else _encode_tensor(p, True, with_data))
                       for k, p in m._parameters.items()},
            "buffers": {k: (None if b is None else _encode_tensor(b, False, with_data))
                        for k, b in m._buffers.items()},
            "children": children}


_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
           "uint8", "bool", "complex64")


def decode(data, _depth: int = 0) -> Any:
    """The value :func:`encode` made; :class:`HandOverError` for anything it did not."""
    if _depth > MAX_DEPTH + 2:
        raise HandOverError("nested too deeply")
    if data is None or type(data) in (bool, int):
        return data
    if type(data) is float:
        return data
    if type(data) is list:
        return [decode(v, _depth + 1) for v in data]
    if type(data) is not dict:
        raise HandOverError(f"unexpected {type(data).__name__}")
    kind = data.get("t")
    try:
        if kind == "float":
            return float(data["v"])
        if kind == "str":
            return str(data["v"])[:MAX_STRING]
        if kind == "tuple":
            return tuple(decode(v, _depth + 1) for v in _list(data["v"]))
        if kind == "dict":
            keys, values = _list(data["k"]), _list(data["v"])
            if len(keys) != len(values):
                raise HandOverError("a dict with as many keys as values")
            out = {}
            for k, v in zip(keys, values):
                key = decode(k, _depth + 1)
                if not isinstance(key, (str, int, float, bool, tuple, type(None))):
                    raise HandOverError("a dict key that is not a plain value")
                out[key] = decode(v, _depth + 1)
            return out
        if kind == "size":
            return _torch().Size([int(v) for v in _list(data["v"])])
        if kind == "dtype":
            if data["v"] not in _DTYPES:
                raise HandOverError("an unknown dtype")
            return getattr(_torch(), data["v"])
        if kind == "device":
            return _torch().device(str(data["v"]))
        if kind == "tensor":
            return _decode_tensor(data)
        if kind == "ndarray":
            import numpy as np
            if data["dtype"] not in ("float32", "float64", "int64", "int32", "uint8", "bool", "int8"):
                raise HandOverError("an unknown array dtype")
            raw = base64.b64decode(data["data"], validate=True)
            return np.frombuffer(raw, dtype=data["dtype"]).reshape(_shape(data["shape"])).copy()
        if kind == "module":
            return _decode_module(data, _depth)
        if kind == "object":
            return _opaque(_safe_name(data.get("type")), bool(data.get("has_shape")))
    except HandOverError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise HandOverError(f"a {kind!s:.20} record that cannot be read ({type(e).__name__})") from None
    raise HandOverError("an unknown record")


def _list(v) -> list:
    if type(v) is not list:
        raise HandOverError("a list expected")
    return v


def _shape(v) -> List[int]:
    shape = _list(v)
    if len(shape) > 8 or any(type(d) is not int or d < 0 for d in shape):
        raise HandOverError("a shape of non-negative ints")
    if math.prod(shape) > (1 << 40):
        raise HandOverError("a shape too large")
    return shape


def _device(kind: str):
    torch = _torch()
    if kind == "meta":
        return torch.device("meta")
    if kind == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    if kind in ("cpu", "cuda", "mps"):
        return torch.device("cpu")
    raise HandOverError("an unknown device")


def _decode_tensor(data: dict):
    torch = _torch()
    if data["dtype"] not in _DTYPES:
        raise HandOverError("an unknown dtype")
    dtype = getattr(torch, data["dtype"])
    shape = _shape(data["shape"])
    device = _device(data["device"])
    if data.get("data") is None:
        x = torch.empty(shape, dtype=dtype, device="meta")   # shapes only (meta, or a large module)
    else:
        if device.type == "meta":
            raise HandOverError("a meta tensor with data")
        raw = bytearray(base64.b64decode(data["data"], validate=True))
        store = {torch.bfloat16: torch.int16, torch.bool: torch.uint8}.get(dtype, dtype)
        itemsize = torch.empty((), dtype=store).element_size()
        if len(raw) != math.prod(shape) * itemsize:
            raise HandOverError("tensor data of the wrong length")
        x = torch.frombuffer(raw, dtype=store) if raw else torch.empty(0, dtype=store)
        x = x.view(dtype) if store is not dtype and dtype is not torch.bool else x
        if dtype is torch.bool:
            x = x.to(torch.bool)
        x = x.reshape(shape).to(device)
    if data.get("param") is True:     # an nn.Parameter stays one (a checker says what it got)
        return torch.nn.Parameter(x, requires_grad=bool(data.get("grad")) and dtype.is_floating_point)
    if data.get("grad") and dtype.is_floating_point:
        x.requires_grad_(True)
    return x


def _opaque(name: str, has_shape: bool):
    cls = type(name, (), {"__module__": "handed-over", "__repr__": lambda self: f"<{name}>"})
    obj = cls()
    if has_shape:
        obj.shape = None
    return obj


_SHADOWS: Dict[tuple, type] = {}


def _module_class(mro: List[str]):
    """The class a handed-over module had: torch.nn's own when it was one of them, else a
    stand-in with the same names (module and qualname) along the whole class hierarchy."""
    torch = _torch()
    key = tuple(mro)
    if key in _SHADOWS:
        return _SHADOWS[key]
    first_mod, _, first_name = mro[0].partition(":")
    real = None
    if first_mod.startswith("torch.nn.") and "." not in first_name:
        real = getattr(sys.modules.get(first_mod), first_name, None)
        if not (isinstance(real, type) and issubclass(real, torch.nn.Module)
                and _mro(real) == list(mro)):
            real = None
    if real is None:
        base = torch.nn.Module
        for entry in reversed(mro):
            mod, _, name = entry.partition(":")
            if entry == "torch.nn.modules.module:Module":
                continue
            base = type(name.rsplit(".", 1)[-1], (base,), {"__module__": mod, "__qualname__": name,
                                                         "forward": _no_forward})
        real = base
    _SHADOWS[key] = real
    return real


def _no_forward(self, *args, **kwargs):
    raise RuntimeError("a handed-over module has no forward")


def _decode_module(data: dict, depth: int):
    torch = _torch()
    mro = [str(s) for s in _list(data["mro"])]
    if not mro or len(mro) > 32:
        raise HandOverError("a module without classes")
    cls = _module_class(mro)
    m = cls.__new__(cls)
    torch.nn.Module.__init__(m)
    for k, v in data.get("attrs", {}).items():
        if _SAFE_NAME.match(str(k)):
            object.__setattr__(m, str(k), decode(v, depth + 1))
    m.training = bool(data.get("training"))
    for k, v in data.get("params", {}).items():
        m._parameters[str(k)] = None if v is None else torch.nn.Parameter(
            _decode_tensor(v), requires_grad=bool(v.get("grad")))
    for k, v in data.get("buffers", {}).items():
        m._buffers[str(k)] = None if v is None else _decode_tensor(v)
    for k, v in data.get("children", {}).items():
        m._modules[str(k)] = _decode_module(v, depth + 1)
    return m


# ----------------------------------------------------------------------------- hand-over reading

def handovers_of(cell, grade_id: str) -> tuple:
    """``({(call, case): item}, problem)`` from a test cell's outputs in an autograded notebook;
    ``problem`` says why the hand-over is unusable (a duplicate, a foreign grade id), else ''."""
    found: Dict[tuple, dict] = {}
    for out in cell.get("outputs", []) or []:
        data = out.get("data") or {}
        if MIME not in data:
            continue
        try:                              # plain JSON types (nbformat reads NotebookNodes)
            item = json.loads(json.dumps(data[MIME]))
        except (TypeError, ValueError):
            return {}, "a malformed hand-over"
        if (type(item) is not dict or item.get("v") != VERSION or item.get("grade_id") != grade_id
                or type(item.get("call")) is not int or type(item.get("case")) is not int
                or ("value" in item) == ("raised" in item)):
            return {}, "a malformed hand-over"
        if "raised" in item and type(item["raised"]) is not str:
            return {}, "a malformed hand-over"
        key = (item["call"], item["case"])
        if key in found:
            return {}, "more than one result for one case"
        found[key] = item
    return found, ""
