"""Load a learner's own answers from an earlier lesson notebook, to reuse them later in the course.

Stage 6 runs the parts a learner wrote in stages 1-5 end to end. This module reads a lesson
notebook (``nbformat``) and executes, in a fresh namespace and in notebook order:

- every autograded-answer cell (nbgrader metadata ``solution: true``) in full: the learner's code;
- from the other code cells, only what defines names: ``import`` statements, ``def`` and
  ``class`` blocks, assignments of plain literals, aliases and ``namedtuple``-like definitions. Test cells (``grade: true``) are skipped
  entirely, and nothing else runs: no demonstrations, no prints, no training loops.

::

    own = load_answers("../05-p6p7/05-p6p7.ipynb", ["LastLevelP6P7"])
    block = own["LastLevelP6P7"](2048, 1024)

Errors are :class:`AnswerError` and say what to do: ``lesson 05-p6p7: `LastLevelP6P7` still
raises NotImplementedError: finish exercise `p6p7` first``.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

__all__ = ["AnswerError", "load_answers", "answer_cells", "LEARNER_PARTS", "learner_backbone"]


class AnswerError(RuntimeError):
    """A lesson's answers cannot be used (yet): the message names the lesson, the name and the fix."""


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _python(source: str) -> str:
    """Cell source as plain Python: IPython magics and ``!`` commands become calls we can drop."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # pragma: no cover - IPython comes with jupyter
        return source
    return TransformerManager().transform_cell(source)


def _is_ipython_call(node: ast.stmt) -> bool:
    """``get_ipython().run_line_magic(...)``: what a magic becomes after transformation."""
    if isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Call):
        inner = node.value.func
        while isinstance(inner, ast.Attribute):
            inner = inner.value
        if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name):
            return inner.func.id == "get_ipython"
    return False


def _is_literal_assign(node: ast.stmt) -> bool:
    if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
        return False
    try:
        ast.literal_eval(node.value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


#: Calls whose result is a definition, kept from given cells (``ImageList = namedtuple(...)``).
_DEFINING_CALLS = {"namedtuple", "NamedTuple", "partial", "TypeVar", "dataclass"}


def _is_definition_assign(node: ast.stmt) -> bool:
    """A literal, an alias (``X = torch.nn.Conv2d``) or a defining call such as namedtuple."""
    if _is_literal_assign(node):
        return True
    if not isinstance(node, ast.Assign):
        return False
    value = node.value
    if isinstance(value, (ast.Name, ast.Attribute)):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        return name in _DEFINING_CALLS
    return False


def _definitions(tree: ast.Module) -> List[ast.stmt]:
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [n for n in tree.body if isinstance(n, keep) or _is_definition_assign(n)]


def _defined_names(tree: ast.Module) -> List[str]:
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.extend(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.extend((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _raises_not_implemented(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Raise) and sub.exc is not None:
            exc = sub.exc.func if isinstance(sub.exc, ast.Call) else sub.exc
            if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                return True
    return False


def answer_cells(nb) -> List[Tuple[str, ast.Module]]:
    """(grade_id, parsed source) of each autograded-answer cell, in notebook order."""
    out = []
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type == "code" and meta.get("solution") and not meta.get("grade"):
            out.append((meta.get("grade_id", "?"), ast.parse(_python(cell.source))))
    return out


def _lesson_name(path: Path) -> str:
    return path.stem


def load_answers(notebook_path, names: Optional[Iterable[str]] = None,
                 namespace: Optional[dict] = None) -> Dict[str, object]:
    """Execute a learner's lesson notebook's answers and return the requested names.

    ``names`` defaults to every name the answer cells define at top level. ``namespace`` seeds
    the fresh namespace (``DEVICE`` and the usual imports are there already). Raises
    :class:`AnswerError` when the notebook is missing or unreadable, an answer cell fails to run,
    a requested name is not defined, or its exercise still raises ``NotImplementedError``.
    """
    import nbformat

    path = Path(notebook_path)
    lesson = _lesson_name(path)
    if not path.is_file():
        raise AnswerError(f"lesson {lesson}: notebook not found at {path}: open and save that "
                          "lesson first (or pass the path to your copy)")
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as e:  # nbformat raises several kinds for a broken file
        raise AnswerError(f"lesson {lesson}: cannot read {path}: {type(e).__name__}: {e}") from None

    env = _fresh_namespace()
    env.update(namespace or {})
    owner: Dict[str, Tuple[str, ast.AST]] = {}   # name -> (exercise grade_id, defining node)
    stubbed: set = set()                         # exercises whose cell still raises its stub
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = _nbgrader(cell)
        if meta.get("grade"):
            continue                              # test cells: never run
        grade_id = meta.get("grade_id", "?")
        try:
            tree = ast.parse(_python(cell.source))
        except SyntaxError as e:
            if meta.get("solution"):
                raise AnswerError(f"lesson {lesson}: exercise `{grade_id}` has a syntax error "
                                  f"(line {e.lineno}): {e.msg}") from None
            continue
        if meta.get("solution"):
            body = [n for n in tree.body if not _is_ipython_call(n)]
            for node in body:
                for name in _defined_names(ast.Module(body=[node], type_ignores=[])):
                    owner[name] = (grade_id, node)
            code = compile(ast.Module(body=body, type_ignores=[]), f"<{lesson}: {grade_id}>", "exec")
            try:
                exec(code, env)
            except NotImplementedError as e:
                if type(e) is not NotImplementedError or e.args:
                    raise AnswerError(f"lesson {lesson}: running exercise `{grade_id}` raised "
                                      f"NotImplementedError: {e}") from None
                # An exercise answered at the top level of its cell and not answered yet: its
                # names do not count, which matters only when one of them is asked for.
                stubbed.add(grade_id)
            except Exception as e:
                raise AnswerError(f"lesson {lesson}: running exercise `{grade_id}` raised "
                                  f"{type(e).__name__}: {e}") from None
            continue
        # Given cells: each definition on its own; one that needs a computation we did not run
        # (``c2 = cfg.MODEL...`` after a skipped ``cfg = default_cfg()``) is left out.
        for node in _definitions(tree):
            code = compile(ast.Module(body=[node], type_ignores=[]), f"<{lesson}: {grade_id}>", "exec")
            try:
                exec(code, env)
            except Exception:
                continue

    wanted = list(names) if names is not None else [
        n for n, (_, node) in owner.items()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                             ast.AnnAssign))]
    exercises = ", ".join(f"`{g}`" for g, _ in answer_cells(nb)) or "none"
    result: Dict[str, object] = {}
    for name in wanted:
        if name not in env:
            where = owner.get(name)
            hint = (f"finish exercise `{where[0]}` first" if where else
                    f"no exercise of this lesson defines it (its exercises: {exercises})")
            raise AnswerError(f"lesson {lesson}: `{name}` is not defined: {hint}")
        if name in owner and (owner[name][0] in stubbed or _raises_not_implemented(owner[name][1])):
            raise AnswerError(f"lesson {lesson}: `{name}` still raises NotImplementedError: "
                              f"finish exercise `{owner[name][0]}` first")
        result[name] = env[name]
    return result


def _fresh_namespace() -> dict:
    """What every lesson's setup cell provides, without its side effects (no print, no reseed)."""
    env: dict = {"__name__": "__fpnlab_answers__", "__builtins__": __builtins__}
    import torch
    from torch import nn
    import torch.nn.functional as F

    import fpnlab
    from .device import device

    env.update(torch=torch, nn=nn, F=F, fpnlab=fpnlab, DEVICE=device())
    return env


#: The learner's parts stages 6 and 9 assemble: (lesson, names) read with fpnlab.answers.load_answers.
LEARNER_PARTS = (("03-body", ("ResNet",)), ("04-fpn", ("FPN", "conv_with_kaiming_uniform")),
                 ("05-p6p7", ("LastLevelP6P7",)),
                 ("06-backbone", ("build_resnet_fpn_p3p7_backbone",)))


def learner_backbone(cfg, folder=".."):
    """The learner's own ``build_resnet_fpn_p3p7_backbone(cfg, parts)`` (stage 6) assembling their
    ``ResNet`` (3), ``FPN`` and ``conv_with_kaiming_uniform`` (4) and ``LastLevelP6P7`` (5), read
    from ``folder/NN-name/NN-name.ipynb``. Raises :class:`fpnlab.answers.AnswerError` naming the
    first part that is missing or unfinished."""
    import inspect
    from types import SimpleNamespace
    from pathlib import Path

    own = {}
    for lesson, names in LEARNER_PARTS:
        own.update(load_answers(Path(folder) / lesson / f"{lesson}.ipynb", names))
    resnet = own["ResNet"]

    def make_resnet(c):
        params = inspect.signature(resnet).parameters
        if "cfg" in params:
            return resnet(c)
        options = {"stride_in_1x1": c.MODEL.RESNETS.STRIDE_IN_1X1,
                   "freeze_at": c.MODEL.BACKBONE.FREEZE_CONV_BODY_AT}
        return resnet(**{k: v for k, v in options.items() if k in params})

    parts = SimpleNamespace(ResNet=make_resnet, FPN=own["FPN"], LastLevelP6P7=own["LastLevelP6P7"],
                            conv_with_kaiming_uniform=own["conv_with_kaiming_uniform"])
    return own["build_resnet_fpn_p3p7_backbone"](cfg, parts).eval()
