"""The one device helper: CUDA when there is one, else the CPU. Modules follow their input."""
from __future__ import annotations

import os
import random

import torch


def device(prefer: str = "auto") -> torch.device:
    """``torch.device('cuda')`` when available (and not refused), else ``torch.device('cpu')``.

    ``prefer`` is ``auto``, ``cpu`` or ``cuda``; the environment variable ``FPNLAB_DEVICE`` can
    force ``cpu`` for a whole run. Asking for ``cuda`` without a GPU raises a clear error.
    """
    prefer = (prefer or "auto").lower()
    if prefer == "auto":
        prefer = os.environ.get("FPNLAB_DEVICE", "auto").lower()
    if prefer not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {prefer!r}")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA GPU here "
                           "(use --device auto or cpu)")
    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy (when present) and torch on every device."""
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)


def describe(dev: torch.device | None = None) -> str:
    """A one-line description of the device, for notebook banners."""
    dev = dev or device()
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def notebook_setup(seed: int = 0) -> torch.device:
    """Every lesson's first cell: seed everything, print the fpnlab version and the device."""
    from . import __version__

    seed_everything(seed)
    dev = device()
    print(f"fpnlab {__version__} | torch {torch.__version__} | device: {describe(dev)} | seed {seed}")
    return dev
