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

from ._batch_norm_common import (INTERPRET_BLOCKS, REDUCTION_TILES, WIDEST_REDUCTION_BLOCK_C, interpret_config,
                                 map_strides, row_offsets, row_uniform, tile_configs, untuned_tile)
from ._intmath import cdiv
from ._launch import launch
from ._row_chunks import row_programs
from ._tuning import interpreting, mode_pruner

__all__ = ["batch_norm_stats"]

def _untuned(configs, args):
    """H100 winners (``_batch_norm_common.py``): (128, 32) rows x channels up to C = 32, else (32, 128)."""
    return untuned_tile(configs, args["C"], lambda c: (128, 32, 4) if c <= 32 else (32, 128, 4))


@triton.autotune(configs=tile_configs(REDUCTION_TILES, 2), key=["C", "ROWS_PER_PROGRAM", "ROW_UNIFORM"],
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
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & c_ok[None, :]
        offs = row_offsets(rows, L, stride_xn, stride_xl, ROW_UNIFORM)
        x = tl.load(X + offs[:, None] + c_off[None, :], mask=mask, other=0.0).to(tl.float32)
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
    # the channel grid depends on the tile; the row chunking is fixed first from the widest channel block
    channel_blocks = cdiv(channels, INTERPRET_BLOCKS[1] if interpret else WIDEST_REDUCTION_BLOCK_C)
    programs, per_program = row_programs(rows, channel_blocks, x.device, interpret)
    parts = torch.empty((2, programs, channels), device=x.device, dtype=torch.float32)
    stride_n, stride_l, stride_c = map_strides(x)

    def grid(meta):
        return (programs, cdiv(channels, meta["BLOCK_C"]))

    launch(_batch_norm_stats_kernel, grid, x, parts, stride_n, stride_l, stride_c, pixels, rows, channels,
           per_program, parts.stride(0), ROW_UNIFORM=row_uniform(x))
    return parts, per_program
