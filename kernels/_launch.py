"""One launch path for every kernel: Triton's per-call argument binding done once per specialization.

``kernel[grid](*args, **meta)`` re-binds and re-specializes every argument on each call (the autotuner's argument
dicts, Triton's binder and its cache-key string). With our 40-60 argument kernels that cost 100-230 us of host time
per launch on the H100 machine (``kernels/measurements/h100_host_overhead_*.txt``), several times the GPU time of a
kernel at small sizes, so small-batch training and every backward were host-bound.

:func:`launch` keeps Triton's path for the first call of a specialization (compilation and autotuning happen there
as usual) and remembers the ``CompiledKernel`` it returns and the constexpr values (the autotuner's choice
included, and what ``@triton.heuristics`` derives from them), under a key at least as fine as Triton's own
specialization: exact values of every scalar argument (which covers the ``== 1`` / divisible-by-16 / 32-vs-64-bit
specializations and the autotuner's shape keys), dtype, device and 16-byte alignment of every tensor, and the
constexpr keyword arguments. Later calls with the same key go straight to the compiled kernel's launcher; the grid
always comes from the current call. Under ``TRITON_INTERPRET=1`` (no compiled kernels) every call takes Triton's
path.

On by default (``VITZOO_FAST_LAUNCH=0`` switches it off): on the H100 it cut the host time of one fwd+bwd by 10-30 %
(NA 1.32 -> 0.98 ms, biased 0.93 -> 0.66 ms, routed 2.1 -> 1.7-1.9 ms). Its GPU record: every gpu_check family
passed with it on (neighborhood 108/108 and routed 72/72 on 2026-11-23's fourth run, biased + halo 183/183 on the
third), and so did 15 vitzoo model benchmarks, EfficientViT-M5 among them. An earlier illegal memory access (a d_v = 96
kernel call, once with the cache on, once with it off) did not reproduce under compute-sanitizer; the kernels now
take d_v <= 64 per call anyway (kernels/README.md).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from triton.runtime.autotuner import Heuristics
from triton.runtime.jit import JITFunction

from ._tuning import interpreting

__all__ = ["launch", "clear_launch_cache", "ENABLED", "ALIGNMENT", "MAX_ENTRIES"]

ENABLED = os.environ.get("VITZOO_FAST_LAUNCH", "1") not in ("", "0", "false", "False")

ALIGNMENT = 16  # bytes; Triton specializes pointer arguments on this alignment
MAX_ENTRIES = 4096  # per kernel; detection with many input sizes must not grow the cache without bound

Grid = Union[Tuple[int, ...], Callable[[Dict[str, Any]], Tuple[int, ...]]]


class _Entry:
    __slots__ = ("compiled", "meta", "tail")

    def __init__(self, compiled, meta: Dict[str, Any], tail: Tuple[Any, ...]):
        self.compiled = compiled
        self.meta = meta  # constexprs + the autotuner's chosen config: what a callable grid reads
        self.tail = tail  # constexpr arguments, in signature order after the positional ones


_CACHES: Dict[int, "OrderedDict[tuple, _Entry]"] = {}


def clear_launch_cache() -> None:
    _CACHES.clear()


def _jit_function(kernel) -> JITFunction:
    """The ``@triton.jit`` function under autotune wrappers (they expose it as ``.fn``)."""
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def _heuristic_values(kernel, named: Dict[str, Any]) -> Dict[str, Any]:
    """Constexprs that ``@triton.heuristics`` wrappers derive from the arguments and the chosen config, as Triton
    computes them on its path (outermost wrapper first, each seeing the values before it)."""
    values: Dict[str, Any] = {}
    while not isinstance(kernel, JITFunction):
        if isinstance(kernel, Heuristics):
            for name, fn in kernel.values.items():
                values[name] = fn({**named, **values})
        kernel = kernel.fn
    return values


def _arg_key(arg: Any) -> Any:
    kind = type(arg)
    if kind is int:  # most arguments: the exact value (plain ints never equal the tuples below)
        return arg
    if isinstance(arg, torch.Tensor):
        return (arg.dtype, arg.get_device(), arg.data_ptr() % ALIGNMENT == 0)
    return (kind, arg)  # float / bool / None: typed, so 1.0 and True do not share int 1's entry


def _grid3(grid: Grid, meta: Dict[str, Any]) -> Tuple[int, int, int]:
    grid = grid(meta) if callable(grid) else grid
    return tuple(grid) + (1,) * (3 - len(grid))  # type: ignore[return-value]


def _make_entry(kernel, compiled, grid: Grid, args: Sequence[Any], meta: Dict[str, Any]) -> Optional[_Entry]:
    """The cache entry of the call just made through Triton, or None when it cannot be replayed safely: the
    signature is not positional-then-keyword, or a callable grid reads more than the constexprs."""
    if compiled is None or not hasattr(compiled, "function"):  # a Triton that does not return its CompiledKernel
        return None
    names = _jit_function(kernel).arg_names
    best = getattr(kernel, "best_config", None)  # set by the autotuner on every run
    full_meta = dict(meta, **(best.kwargs if best is not None else {}))
    full_meta.update(_heuristic_values(kernel, dict(zip(names, args), **full_meta)))
    rest = names[len(args):]
    if any(name not in full_meta for name in rest):
        return None
    if callable(grid):
        try:
            if _grid3(grid, full_meta) != _grid3(grid, dict(zip(names, args), **full_meta)):
                return None
        except KeyError:
            return None
    return _Entry(compiled, full_meta, tuple(full_meta[name] for name in rest))


def launch(kernel, grid: Grid, *args: Any, **meta: Any) -> None:
    """``kernel[grid](*args, **meta)`` with the binding cached; ``args`` are the runtime arguments, positionally,
    ``meta`` the constexprs (and options such as ``num_warps``), by keyword. The grid is taken from this call (a
    callable grid is evaluated on the constexprs and the chosen config), never from the cache."""
    if not ENABLED or interpreting():
        kernel[grid](*args, **meta)
        return
    cache = _CACHES.setdefault(id(kernel), OrderedDict())
    key = (tuple(map(_arg_key, args)), tuple(meta.items()), torch.cuda.current_device())
    entry = cache.get(key)
    if entry is not None:
        entry.compiled[_grid3(grid, entry.meta)](*args, *entry.tail)
        return
    entry = _make_entry(kernel, kernel[grid](*args, **meta), grid, args, meta)
    if entry is not None:
        cache[key] = entry
        if len(cache) > MAX_ENTRIES:
            cache.popitem(last=False)
