"""fpnlab: helpers for a course that builds maskrcnn-benchmark's ResNet-50-FPN P3-P7 backbone.

Importing the package is cheap: modules that need torch (``checks``, ``tracing``, ``oracle``,
``device``, ``widgets``) load on first use, so the shape engine and the command line answer in
milliseconds.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = ("checks", "tracing", "oracle", "device", "widgets", "plots", "cli", "reference", "shapes",
         "images", "config", "answers", "judge", "receptive", "cost", "levels", "detector")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fpnlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
