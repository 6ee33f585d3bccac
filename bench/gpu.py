"""CUDA figures: forward latency of the backbone at the trace's padded size, and peak memory."""
from __future__ import annotations

import torch

from fpnlab import oracle
from fpnlab.reference import reference_shapes


def _latency(model, x, repeat: int, iters: int = 10) -> float:
    """Median over ``repeat`` rounds of the mean of ``iters`` forwards, timed with CUDA events."""
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                model(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / iters / 1000)
    times.sort()
    return times[len(times) // 2]


def measure(repeat: int) -> dict:
    dev = torch.device("cuda")
    _, _, h, w = reference_shapes()["padded"]
    torch.manual_seed(0)
    model = oracle.randomize_frozen_bn(oracle.backbone()).eval().to(dev)
    out = {"device": torch.cuda.get_device_name(dev), "input": [h, w], "latency_s": {}, "peak_mem_mb": {}}
    saved_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for batch in (1, 8):
            x = torch.randn(batch, 3, h, w, device=dev)
            for mode in ("fp32", "tf32", "bf16", "bf16+channels_last"):
                torch.backends.cudnn.allow_tf32 = mode != "fp32"
                torch.backends.cuda.matmul.allow_tf32 = mode != "fp32"
                m, xi = model, x
                if mode.startswith("bf16"):
                    m, xi = model.to(torch.bfloat16), x.to(torch.bfloat16)
                if mode.endswith("channels_last"):
                    m, xi = m.to(memory_format=torch.channels_last), xi.to(memory_format=torch.channels_last)
                torch.cuda.reset_peak_memory_stats(dev)
                key = f"batch{batch}_{mode}"
                out["latency_s"][key] = _latency(m, xi, repeat)
                out["peak_mem_mb"][key] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
                model = model.float().to(memory_format=torch.contiguous_format)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    return out
