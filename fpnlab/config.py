"""A small yacs-like configuration with the maskrcnn-benchmark defaults this course uses.

maskrcnn-benchmark builds its models from a ``yacs`` ``CfgNode`` (``cfg.MODEL.RESNETS...``). The
course needs a handful of its keys, with the values behind the reference trace::

    >>> cfg = default_cfg()
    >>> cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS, cfg.MODEL.RETINANET.USE_C5
    (1024, True)
    >>> small = cfg.clone().merge_from_list(["MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 256])
    >>> small.MODEL.RESNETS.BACKBONE_OUT_CHANNELS, cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS
    (256, 1024)

Two values differ from maskrcnn-benchmark's ``defaults.py`` because the trace ran with them:
``INPUT.MIN_SIZE_TEST`` 480 (defaults.py: 800) and ``DATALOADER.SIZE_DIVISIBILITY`` 32
(defaults.py: 0; every FPN yaml file sets 32). ``BACKBONE_OUT_CHANNELS`` keeps the default
256 * 4 = 1024 (the shipped RetinaNet yaml files set 256).
"""
from __future__ import annotations

import ast
import copy
import difflib
from typing import Any, Iterable, List

from .shapes import Config

__all__ = ["CfgNode", "ConfigError", "default_cfg", "to_shapes_config"]


class ConfigError(KeyError):
    """An unknown key or a value of the wrong type; the message names the full key."""

    def __str__(self) -> str:          # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CfgNode(dict):
    """A dict whose keys read as attributes (``cfg.MODEL.FPN.USE_GN``), like yacs' ``CfgNode``.

    Only the keys that exist can be changed (``merge_from_list``, or assigning an attribute that
    exists); a typo raises :class:`ConfigError` naming the closest known key.
    """

    def __init__(self, init: dict | None = None, _path: str = ""):
        super().__init__()
        object.__setattr__(self, "_path", _path)
        object.__setattr__(self, "_frozen", False)
        for key, value in (init or {}).items():
            if isinstance(value, dict):
                value = CfgNode(value, _path=f"{_path}{key}.")
            dict.__setitem__(self, key, value)

    # -- attribute access -------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(self._unknown(name)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise AttributeError(f"config is frozen: cannot set {self._path}{name} "
                                 "(use clone() for a copy you can change)")
        if name not in self:
            raise ConfigError(self._unknown(name))
        if isinstance(self[name], CfgNode):
            raise ConfigError(f"{self._path}{name} is a group of keys, not a value")
        dict.__setitem__(self, name, _coerce(f"{self._path}{name}", self[name], value))

    def __setitem__(self, name, value) -> None:
        self.__setattr__(name, value)

    def __deepcopy__(self, memo):
        return CfgNode({k: copy.deepcopy(v, memo) for k, v in self.items()}, _path=self._path)

    def _unknown(self, name: str) -> str:
        full = f"{self._path}{name}"
        known = [f"{self._path}{k}" for k in self]
        close = difflib.get_close_matches(full, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (known here: {', '.join(known)})"
        return f"unknown config key {full}{hint}"

    # -- yacs' API ---------------------------------------------------------------------------
    def clone(self) -> "CfgNode":
        """A deep copy, not frozen."""
        return copy.deepcopy(self)

    def freeze(self) -> "CfgNode":
        for node in self._nodes():
            object.__setattr__(node, "_frozen", True)
        return self

    def defrost(self) -> "CfgNode":
        for node in self._nodes():
            object.__setattr__(node, "_frozen", False)
        return self

    def is_frozen(self) -> bool:
        return self._frozen

    def _nodes(self):
        yield self
        for v in self.values():
            if isinstance(v, CfgNode):
                yield from v._nodes()

    def merge_from_list(self, opts: Iterable[Any]) -> "CfgNode":
        """Set keys from a flat ``[KEY, VALUE, KEY, VALUE, ...]`` list, as yacs does.

        Keys are full dotted names (``MODEL.RESNETS.BACKBONE_OUT_CHANNELS``). A string value is
        read as a Python literal when it is one (``"256"`` -> 256, ``"False"`` -> False). Unknown
        keys and values of the wrong type raise :class:`ConfigError`; nothing changes unless every
        pair is valid.
        """
        opts = list(opts)
        if len(opts) % 2:
            raise ConfigError(f"merge_from_list needs KEY, VALUE pairs: got {len(opts)} items "
                              f"(the last, {opts[-1]!r}, has no value)")
        staged = []
        for key, value in zip(opts[0::2], opts[1::2]):
            if not isinstance(key, str):
                raise ConfigError(f"config keys are dotted strings, got {key!r}")
            node, parts = self, key.split(".")
            for i, part in enumerate(parts):
                if not isinstance(node, CfgNode) or part not in node:
                    where = node if isinstance(node, CfgNode) else None
                    if where is None:
                        raise ConfigError(f"unknown config key {key}: "
                                          f"{'.'.join(parts[:i])} is a value, not a group")
                    raise ConfigError(where._unknown(part).replace(
                        f"unknown config key {where._path}{part}", f"unknown config key {key}", 1))
                if i < len(parts) - 1:
                    node = node[part]
            if isinstance(node[parts[-1]], CfgNode):
                raise ConfigError(f"{key} is a group of keys, not a value")
            staged.append((node, parts[-1], _coerce(key, node[parts[-1]], value)))
        if self._frozen:
            raise AttributeError("config is frozen: use clone() for a copy you can change")
        for node, name, value in staged:
            dict.__setitem__(node, name, value)
        return self

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v)
                for k, v in self.items()}

    def __str__(self) -> str:
        return "\n".join(self._lines(0))

    def __repr__(self) -> str:
        return f"CfgNode({self.to_dict()!r})"

    def _lines(self, indent: int) -> List[str]:
        out = []
        for k, v in self.items():
            if isinstance(v, CfgNode):
                out.append(" " * indent + f"{k}:")
                out.extend(v._lines(indent + 2))
            else:
                out.append(" " * indent + f"{k}: {v!r}")
        return out


def _coerce(key: str, old: Any, value: Any) -> Any:
    """``value`` converted to the type of ``old`` where yacs would, else a clear ConfigError."""
    if isinstance(value, str) and not isinstance(old, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if isinstance(old, bool):
        ok = isinstance(value, bool)
    elif isinstance(old, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(old, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(old, (list, tuple)):
        ok = isinstance(value, (list, tuple)) and len(value) == len(old)
        value = type(old)(value) if ok else value
    else:
        ok = isinstance(value, type(old))
    if not ok:
        want = type(old).__name__ + (f" of length {len(old)}" if isinstance(old, (list, tuple)) else "")
        raise ConfigError(f"{key} must be a {want} (it is {old!r}), got {value!r}")
    return value


def default_cfg() -> CfgNode:
    """The keys the course uses, with the values the reference trace ran with: maskrcnn-benchmark's
    defaults except ``INPUT.MIN_SIZE_TEST`` 480 (default 800) and ``DATALOADER.SIZE_DIVISIBILITY``
    32 (default 0; the RetinaNet yaml files set 32)."""
    return CfgNode({
        "MODEL": {
            "BACKBONE": {
                "CONV_BODY": "R-50-FPN-RETINANET",
                "FREEZE_CONV_BODY_AT": 2,
            },
            "RESNETS": {
                "NUM_GROUPS": 1,
                "WIDTH_PER_GROUP": 64,
                "STRIDE_IN_1X1": True,
                "STEM_OUT_CHANNELS": 64,
                "RES2_OUT_CHANNELS": 256,
                "BACKBONE_OUT_CHANNELS": 256 * 4,
            },
            "RETINANET": {"USE_C5": True},
            "FPN": {"USE_GN": False, "USE_RELU": False},
        },
        "INPUT": {
            "MIN_SIZE_TEST": 480,
            "MAX_SIZE_TEST": 1333,
            "PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
            "PIXEL_STD": [1.0, 1.0, 1.0],
            "TO_BGR255": True,
        },
        "DATALOADER": {"SIZE_DIVISIBILITY": 32},
    })


def to_shapes_config(cfg: CfgNode, batch: int = 1) -> Config:
    """The shape engine's :class:`fpnlab.shapes.Config` for ``cfg``.

    ``MODEL.RETINANET.USE_C5`` sets what P6's conv is built for: C5's channels
    (``in_channels_p6p7 = RES2_OUT_CHANNELS * 8``) or P5's (``BACKBONE_OUT_CHANNELS``). Which
    tensor it then reads is decided by the channel counts alone (``Config.use_p5``): with
    ``USE_C5`` and ``BACKBONE_OUT_CHANNELS`` 2048 both are 2048 and P6 reads P5 (same shapes).
    """
    return Config(
        min_size=cfg.INPUT.MIN_SIZE_TEST,
        max_size=cfg.INPUT.MAX_SIZE_TEST,
        size_divisible=cfg.DATALOADER.SIZE_DIVISIBILITY,
        out_channels=cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS,
        p6_from="C5" if cfg.MODEL.RETINANET.USE_C5 else "P5",
        batch=batch,
        in_channels_stage2=cfg.MODEL.RESNETS.RES2_OUT_CHANNELS,
    )
