"""Shared Triton helpers of the generalized neighborhood-attention kernels (no kernel lives here).

The window arithmetic is NATTEN's, identical to ``vitzoo/ops/_geometry.py`` (the torch reference): along one axis a
query at sub-lattice index ``ii`` of a dilation group of length ``glen`` uses the window of its stride run's leader,
shifted inward at the borders. Kernels work in sub-lattice coordinates and map back with ``group + dilation * ii``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._tuning import autotune_enabled, interpreting

__all__ = ["LOG2E", "INTERPRET", "SUM", "MAX", "MAX_V_DIM", "MIN_DOT", "alloc", "next_pow2", "value_block",
           "bounded_configs", "window_start", "first_query_with_start_ge"]

# Softmax runs in base 2 (exp2 is the native instruction); logits are scaled by log2(e).
LOG2E = tl.constexpr(1.4426950408889634)

# Combine functions for ``tl.reduce``: the same reductions as tl.sum / tl.max on GPUs, but the interpreter runs
# them as single numpy calls, whereas every call of the jit wrappers tl.sum / tl.max re-patches triton.language
# (milliseconds each), which dominated the CPU test time of the per-slot loops.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


SUM = getattr(tl.standard, "_sum_combine", _add)
MAX = getattr(tl.standard, "_elementwise_max", _maximum)

# Under TRITON_INTERPRET=1 (CPU tests) benchmarking every autotune config only costs time: keep the first one.
INTERPRET = interpreting()


def alloc(shape, device, dtype) -> torch.Tensor:
    """Output allocation of every launcher (uninitialized; tests replace it with a NaN fill to catch unwritten
    elements)."""
    return torch.empty(shape, device=device, dtype=dtype)


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# Value head dims are padded in registers to a power of two (masked loads/stores): EfficientViT's cascaded heads use
# d_v = 48 (M0, M1). Capped at 64: with d_v = 96 padded to 128 (EfficientViT-M5) two H100/H200 runs ended in an
# illegal memory access that CUDA_LAUNCH_BLOCKING=1, compute-sanitizer and the CPU interpreter did not reproduce
# (kernels/README.md); the op layer splits wider values into chunks of at most this many channels.
MAX_V_DIM = 64
MIN_DOT = 16  # tl.dot needs every operand dimension >= 16 on GPUs


def value_block(v_dim: int) -> int:
    """Register width of the value head dim: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, next_pow2(v_dim))


def bounded_configs(configs: list) -> list:
    """The autotune list to use: all configs on a GPU, the first one under the interpreter."""
    return configs if autotune_enabled() else configs[:1]


@triton.jit
def window_start(ii, glen, KERNEL: tl.constexpr, STRIDE: tl.constexpr):
    """Sub-lattice index of the first key of query ``ii``'s window (group length ``glen``), as in _geometry.py."""
    leader = tl.minimum((ii // STRIDE) * STRIDE + STRIDE // 2, glen - 1)
    return tl.minimum(tl.maximum(leader - KERNEL // 2, 0), glen - KERNEL)


@triton.jit
def first_query_with_start_ge(target, glen, KERNEL: tl.constexpr, STRIDE: tl.constexpr):
    """Smallest query ``ii`` in ``[0, glen]`` with ``window_start(ii) >= target`` (``glen`` if none). Window starts
    are non-decreasing in ``ii``; for ``0 < target <= glen - KERNEL`` the condition is ``leader >= target +
    KERNEL // 2``, first met by the run ``ceil((target + KERNEL // 2 - STRIDE // 2) / STRIDE)``."""
    run = (target + KERNEL // 2 - STRIDE // 2 + STRIDE - 1) // STRIDE
    first = tl.minimum(tl.maximum(run, 0) * STRIDE, glen)
    first = tl.where(target > glen - KERNEL, glen, first)
    return tl.where(target <= 0, 0, first)
