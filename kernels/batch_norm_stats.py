"""Per-channel batch statistics of a training BatchNorm, first stage: each program reduces a contiguous chunk of rows
(``_batch_norm_common.py``: rows are pixels of all images) for a block of channels to its chunk's mean and sum of
squared deviations (M2). ``batch_norm_stats_merge.py`` combines the chunks.

Why not torch's: on the H100, ``batch_norm_collect_statistics_channels_last_kernel`` took 152 us per call on average
in a HaloNet-26t train step (batch 128, bf16), 1.7x the time of the transform kernel that reads the same map *and*
writes one (kernels/README.md, "Sixteenth run"). Here a program streams [BLOCK_M, BLOCK_C] tiles of its chunk and
adds into register tiles (one cross-warp reduction at the end, not per step).

Numerics: the sums are of ``x - shift`` with ``shift`` the chunk's first row (shifted-data variance): deviations stay
near the data's spread whatever its mean, so ``M2 = S2 - S1^2 / n`` keeps fp32 accuracy where plain sums of squares
would cancel. Deterministic (no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._batch_norm_common import (INTERPRET_BLOCKS, REDUCTION_TILES, interpret_config,
                                 map_strides, row_offsets, row_uniform, tile_configs, untuned_tile)
from ._intmath import cdiv
from ._launch import launch
from ._row_chunks import PROGRAMS_PER_SM, row_programs
from ._tuning import interpreting, mode_pruner

__all__ = ["batch_norm_stats"]

# H100 winners at HaloNet-26t's 31 norms (kernels/README.md, "Seventeenth run"; timed in CUDA graphs): narrow maps
# take (64, 32) tiles on 2 warps and 16 programs per SM, the rest (64, 64) on 4 warps and 4 per SM
NARROW_C = 32
NARROW_PROGRAMS_PER_SM = 16


def _rule(channels: int):
    """(BLOCK_M, BLOCK_C, num_warps) untuned (comment above)."""
    return (64, 32, 2) if channels <= NARROW_C else (64, 64, 4)


def _untuned(configs, args):
    return untuned_tile(configs, args["C"], _rule)


@triton.jit
def _load_tile(X, start, row_end, c_off, c_ok, L, stride_xn, stride_xl, ROW_UNIFORM: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """The [BLOCK_M, BLOCK_C] tile of rows from ``start`` (0 past ``row_end``), in x's dtype."""
    rows = start + tl.arange(0, BLOCK_M)
    offs = row_offsets(rows, L, stride_xn, stride_xl, ROW_UNIFORM)
    return tl.load(X + offs[:, None] + c_off[None, :], mask=(rows < row_end)[:, None] & c_ok[None, :], other=0.0)


@triton.autotune(configs=tile_configs(REDUCTION_TILES), key=["C", "ROWS_PER_PROGRAM", "ROW_UNIFORM"],
                 prune_configs_by={"early_config_prune": mode_pruner(interpret_config(), untuned=_untuned)})
@triton.jit
def _batch_norm_stats_kernel(
    X, PARTS,  # PARTS: (2, programs, C) fp32, a program's chunk mean and M2
    stride_xn, stride_xl, stride_xc,
    L, M, C,
    ROWS_PER_PROGRAM, stride_pp,  # stride_pp: elements between the mean and the M2 planes of PARTS
    ROW_UNIFORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    c_off = cs.to(tl.int64) * stride_xc
    row_start = pid * ROWS_PER_PROGRAM
    row_end = tl.minimum(row_start + ROWS_PER_PROGRAM, M)
    first = row_offsets(tl.full([1], 0, tl.int32) + row_start, L, stride_xn, stride_xl, ROW_UNIFORM)
    shift = tl.load(X + first[:, None] + c_off[None, :], mask=c_ok[None, :], other=0.0).to(tl.float32)
    sum1 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    sum2 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    x_next = _load_tile(X, row_start, row_end, c_off, c_ok, L, stride_xn, stride_xl, ROW_UNIFORM, BLOCK_M)
    for start in range(row_start, row_end, BLOCK_M):
        # software prefetch: the next tile's loads are in flight while this one is summed (a streaming reduction is
        # latency-bound with one tile per program in flight)
        x = x_next.to(tl.float32)
        x_next = _load_tile(X, start + BLOCK_M, row_end, c_off, c_ok, L, stride_xn, stride_xl, ROW_UNIFORM, BLOCK_M)
        mask = ((start + tl.arange(0, BLOCK_M)) < row_end)[:, None] & c_ok[None, :]
        d = tl.where(mask, x - shift, 0.0)
        sum1 += d
        sum2 += d * d
    count = (row_end - row_start).to(tl.float32)
    s1 = tl.sum(sum1, axis=0)
    s2 = tl.sum(sum2, axis=0)
    mean = tl.sum(shift, axis=0) + s1 / count
    m2 = tl.maximum(s2 - s1 * (s1 / count), 0.0)
    tl.store(PARTS + pid * C + cs, mean, mask=c_ok)
    tl.store(PARTS + stride_pp + pid * C + cs, m2, mask=c_ok)


def batch_norm_stats(x: torch.Tensor) -> tuple:
    """x: (N, C, H, W), any strides with H and W mergeable. Returns (parts, rows_per_program): parts (2, programs, C)
    fp32 holds each row chunk's mean and M2; chunk p covers rows [p * rows_per_program, (p + 1) * rows_per_program)
    of the N * H * W (the last one may be shorter)."""
    batch, channels, height, width = x.shape
    pixels = height * width
    rows = batch * pixels
    if rows == 0 or channels == 0:
        raise ValueError(f"batch_norm_stats: x must not be empty, got shape {tuple(x.shape)}")
    interpret = interpreting() or x.device.type != "cuda"
    # the row chunking is fixed from the untuned tile (autotuning may then pick another channel block)
    channel_blocks = cdiv(channels, INTERPRET_BLOCKS[1] if interpret else _rule(channels)[1])
    programs, per_program = row_programs(rows, channel_blocks, x.device, interpret,
                                         NARROW_PROGRAMS_PER_SM if channels <= NARROW_C else PROGRAMS_PER_SM)
    parts = torch.empty((2, programs, channels), device=x.device, dtype=torch.float32)
    stride_n, stride_l, stride_c = map_strides(x)

    def grid(meta):
        return (programs, cdiv(channels, meta["BLOCK_C"]))

    launch(_batch_norm_stats_kernel, grid, x, parts, stride_n, stride_l, stride_c, pixels, rows, channels,
           per_program, parts.stride(0), ROW_UNIFORM=row_uniform(x))
    return parts, per_program
