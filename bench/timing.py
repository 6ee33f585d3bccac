"""Small timing helpers: medians of repeated runs, figures with units, targets."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional


def timed(fn: Callable[[], object], repeat: int = 3, warmup: int = 0) -> List[float]:
    """Wall-clock seconds of ``repeat`` calls of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median(xs: List[float]) -> float:
    return statistics.median(xs)


@dataclass
class Target:
    name: str
    value: float
    target: str
    met: bool

    def as_dict(self):
        return asdict(self)


def at_most(name: str, value: float, limit: float, unit: str = "") -> Target:
    return Target(name, round(value, 4), f"<= {limit}{unit}", bool(value <= limit))


def at_least(name: str, value: float, limit: float, unit: str = "") -> Target:
    return Target(name, round(value, 4), f">= {limit}{unit}", bool(value >= limit))


def fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"
