"""Shared Triton helpers of the generalized neighborhood-attention kernels (no kernel lives here).

The window arithmetic is NATTEN's, identical to ``vitzoo/ops/_geometry.py`` (the torch reference): along one axis a
query at sub-lattice index ``ii`` of a dilation group of length ``glen`` uses the window of its stride run's leader,
shifted inward at the borders. Kernels work in sub-lattice coordinates and map back with ``group + dilation * ii``.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ._intmath import next_pow2  # noqa: F401 - re-exported for the kernels of this family
from ._tuning import autotune_enabled, interpreting

__all__ = ["LOG2E", "INTERPRET", "SUM", "MAX", "MAX_V_DIM", "MIN_DOT", "alloc", "next_pow2", "value_block",
           "bounded_configs", "window_start", "first_query_with_start_ge", "tile_origin", "key_union",
           "key_block_columns", "query_code"]

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


@triton.jit
def tile_origin(pid, H, W, NHEADS, DIL_Y, DIL_X, TILES_Y, TILES_X, TILE_Y: tl.constexpr, TILE_X: tl.constexpr):
    """Decode a 1-D program id (no per-axis grid limit) into (batch, head, dilation group gy / gx, the tile's first
    position ty0 / tx0 in sub-lattice coordinates, and the group's sub-lattice lengths glen_y / glen_x); program ids
    run over (batch, head, group, tile) with the tile fastest."""
    tiles_per_group = TILES_Y * TILES_X
    n_tiles = tiles_per_group * DIL_Y * DIL_X
    tile = pid % n_tiles
    bh = pid // n_tiles
    grp = tile // tiles_per_group
    t = tile % tiles_per_group
    gy = grp // DIL_X
    gx = grp % DIL_X
    glen_y = (H - gy + DIL_Y - 1) // DIL_Y
    glen_x = (W - gx + DIL_X - 1) // DIL_X
    return bh // NHEADS, bh % NHEADS, gy, gx, (t // TILES_X) * TILE_Y, (t % TILES_X) * TILE_X, glen_y, glen_x


@triton.jit
def query_code(qyi, qxi, glen_y, glen_x, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
               SHIFT_Y: tl.constexpr, SHIFT_X: tl.constexpr, TAB_ROWS: tl.constexpr, TAB_COLS: tl.constexpr):
    """Each query's offset into the window-logit table (``_neighborhood_table.py``): its window start and its class
    folded into one integer, so that a key's entry is ``table[key_y * TAB_COLS + key_x - query_code]``."""
    qsy = window_start(qyi, glen_y, KH, SH)
    qsx = window_start(qxi, glen_x, KW, SW)
    cls = (qyi - qsy) * KW + (qxi - qsx)
    return (qsy - SHIFT_Y) * TAB_COLS + (qsx - SHIFT_X) - cls * (TAB_ROWS * TAB_COLS)


@triton.jit
def key_union(ty0, tx0, glen_y, glen_x, TILE_Y: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
              SH: tl.constexpr, SW: tl.constexpr):
    """First row / column of the union of a query tile's windows and its number of rows (0 for a tile past a short
    dilation group's end, which owns no query). Window starts are monotone, so the union spans
    ``[start(first), start(last) + k)``."""
    ty_last = tl.minimum(ty0 + TILE_Y, glen_y) - 1
    key_y0 = window_start(ty0, glen_y, KH, SH)
    span_y = window_start(ty_last, glen_y, KH, SH) + KH - key_y0
    n_rows = tl.where((ty0 < glen_y) & (tx0 < glen_x), span_y, 0)
    return key_y0, window_start(tx0, glen_x, KW, SW), n_rows


@triton.jit
def key_block_columns(key_x0, gx, glen_x, DIL_X, KEY_ROWS: tl.constexpr, KEY_W: tl.constexpr):
    """Lanes of a key block of ``KEY_ROWS`` union rows x ``KEY_W`` columns (columns past the union lie outside every
    window): lane index, sub-lattice column, image column, and whether the column is inside the image."""
    offs_n = tl.arange(0, KEY_ROWS * KEY_W)
    kxi = key_x0 + offs_n % KEY_W
    return offs_n, kxi, gx + DIL_X * kxi, kxi < glen_x
