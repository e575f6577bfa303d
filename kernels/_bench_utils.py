"""Timing and roofline helpers shared by the per-pattern benchmark modules (``kernels/bench_<pattern>.py``) and the
GPU correctness modules (``kernels/gpu_check_<pattern>.py``). GPU-only: nothing here runs in CI."""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional

import torch

__all__ = ["time_ms", "gpu_time_ms", "time_fwd_bwd", "copy_bytes_per_ms", "hbm_floor_ms", "peak_memory_gb", "rel_err",
           "tensor_bytes", "row", "timed_row"]


def time_ms(fn: Callable[[], object], warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median wall time of ``fn`` in ms, measured with CUDA events (triton.testing.do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def gpu_time_ms(fn: Callable[[], object], rep_ms: int = 100) -> float:
    """Median GPU time of ``fn`` in ms with the host taken out: ``fn`` is captured in a CUDA graph and the graph
    replayed (triton.testing.do_bench_cudagraph). Next to :func:`time_ms` it tells how much of a call's wall time
    is host work (Python, dispatch, launches): at these sizes both vitzoo and its competitors can be host-bound, and
    the wall time then measures the host, not the kernels. NaN when ``fn`` cannot be captured (a host sync)."""
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
    except Exception:  # noqa: BLE001 - an uncapturable implementation gets no GPU-time number, not a crash
        torch.cuda.synchronize()
        return float("nan")


def time_fwd_bwd(fwd: Callable[[], torch.Tensor], grad: torch.Tensor, leaves: Iterable[torch.Tensor]) -> dict:
    """Forward (under ``no_grad``) and forward+backward (``fwd().backward(grad)``, leaves' grads cleared first) of
    one implementation: ``fwd_ms`` / ``fwdbwd_ms`` wall time (eager, host included), ``fwd_gpu_ms`` /
    ``fwdbwd_gpu_ms`` (CUDA-graph replay, GPU only) and ``peak_gb`` of one fwd+bwd. A backward that fails leaves the
    forward numbers standing, with the error in ``note``."""
    leaves = list(leaves)

    def fwd_no_grad():
        with torch.no_grad():
            return fwd()

    def fwdbwd():
        for t in leaves:
            t.grad = None
        fwd().backward(grad)

    values = dict(fwd_ms=time_ms(fwd_no_grad), fwd_gpu_ms=gpu_time_ms(fwd_no_grad), note="")
    try:
        values.update(fwdbwd_ms=time_ms(fwdbwd), fwdbwd_gpu_ms=gpu_time_ms(fwdbwd), peak_gb=peak_memory_gb(fwdbwd))
    except Exception as exc:  # noqa: BLE001
        values.update(fwdbwd_ms=float("nan"), fwdbwd_gpu_ms=float("nan"), peak_gb=float("nan"),
                      note=f"backward failed: {type(exc).__name__}: {exc}"[:300])
    return values


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


def timed_row(pattern: str, case: str, impl: str, fwd: Callable[[], torch.Tensor], grad: torch.Tensor,
              leaves: Iterable[torch.Tensor], note: str = "", **values) -> dict:
    """One result row with :func:`time_fwd_bwd`'s timings of ``fwd``; an implementation that fails gives a row that
    says why (a failing implementation is a result, not a crash)."""
    try:
        timed = time_fwd_bwd(fwd, grad, leaves)
        note = f"{note} {timed.pop('note')}".strip()
    except Exception as exc:  # noqa: BLE001
        timed, note = {}, f"failed: {type(exc).__name__}: {exc}"[:200]
    return row(pattern, case, impl, note=note, **values, **timed)


def row(pattern: str, case: str, impl: str, **values) -> dict:
    """One result row; the drivers (bench.py, gpu_check.py) print, CSV and plot lists of these."""
    return dict(pattern=pattern, case=case, impl=impl, **values)
