"""Timing and roofline helpers shared by the per-pattern benchmark modules (``kernels/bench_<pattern>.py``) and the
GPU correctness modules (``kernels/gpu_check_<pattern>.py``). GPU-only: nothing here runs in CI."""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional

import torch

__all__ = ["time_ms", "copy_bytes_per_ms", "hbm_floor_ms", "peak_memory_gb", "rel_err", "tensor_bytes", "row"]


def time_ms(fn: Callable[[], object], warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median wall time of ``fn`` in ms, measured with CUDA events (triton.testing.do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


@functools.lru_cache(maxsize=None)
def copy_bytes_per_ms() -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per ms) on a 1 GiB buffer."""
    n = 1 << 28
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms


def tensor_bytes(tensors: Iterable[Optional[torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def hbm_floor_ms(nbytes: int) -> float:
    """Time to move ``nbytes`` once at the measured copy bandwidth: no implementation can beat it."""
    return nbytes / copy_bytes_per_ms()


def peak_memory_gb(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated while running ``fn`` once, above what was allocated before, in GB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN-propagating: a NaN anywhere gives NaN, which never passes)."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def row(pattern: str, case: str, impl: str, **values) -> dict:
    """One result row; the drivers (bench.py, gpu_check.py) print, CSV and plot lists of these."""
    return dict(pattern=pattern, case=case, impl=impl, **values)
