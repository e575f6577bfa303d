"""Backward of a training BatchNorm + residual + activation, first stage: per-channel sums over the batch of
``dz = dy * act'(z)`` and ``dz * xhat`` (``xhat = (x - mean) * invstd``). They are the bias and weight gradients, and
the two means the input gradient subtracts (``batch_norm_act_bwd.py``).

``dz`` comes from one of (``Z_FROM``): nothing (``act == "none"``: dz = dy), ``z`` recomputed from x with the
forward's own formula (``"x"``), the same plus the residual (``"x_residual"``), or, for ReLU after a residual add,
the forward's output (``"output"``: y > 0, the output is kept for the next layer anyway, the residual need not be).

Like ``batch_norm_stats.py``: each program walks a contiguous chunk of rows for a block of channels, adds into
register tiles and writes its row of an fp32 (2, programs, C) buffer; the launcher sums the rows (deterministic, no
atomics).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._activation import ACTIVATIONS, act_grad
from ._batch_norm_common import (INTERPRET_BLOCKS, REDUCTION_TILES, WIDEST_REDUCTION_BLOCK_C, check_same_rows,
                                 interpret_config, load_stats, map_strides, row_offsets, row_uniform,
                                 tile_configs, untuned_tile)
from ._intmath import cdiv
from ._launch import launch
from ._row_chunks import row_programs
from ._tuning import interpreting, mode_pruner

__all__ = ["batch_norm_act_bwd_reduce", "Z_SOURCES"]

Z_SOURCES = ("none", "x", "x_residual", "output")
def _untuned(configs, args):
    """H100 winners (``_batch_norm_common.py``): (128, 32) up to C = 32, else (32, 128)."""
    return untuned_tile(configs, args["C"], lambda c: (128, 32, 4) if c <= 32 else (32, 128, 4))


@triton.jit
def grad_z(DY, X, SRC, offs_dy, offs_x, offs_src, mask, mean, scale, beta, ACT: tl.constexpr, Z_FROM: tl.constexpr):
    """dz = dy * act'(z) on one tile (module docstring); returns (dz, x) in fp32."""
    dy = tl.load(DY + offs_dy, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + offs_x, mask=mask, other=0.0).to(tl.float32)
    if Z_FROM == "output":
        y = tl.load(SRC + offs_src, mask=mask, other=0.0).to(tl.float32)
        dz = tl.where(y > 0.0, dy, 0.0)
    elif Z_FROM == "none":
        dz = dy
    else:
        z = (x - mean[None, :]) * scale[None, :] + beta[None, :]  # the forward's formula: the same z, bit for bit
        if Z_FROM == "x_residual":
            z += tl.load(SRC + offs_src, mask=mask, other=0.0).to(tl.float32)
        dz = dy * act_grad(z, ACT)
    return dz, x


@triton.autotune(configs=tile_configs(REDUCTION_TILES, 2),
                 key=["C", "ROWS_PER_PROGRAM", "ACT", "Z_FROM", "ROW_UNIFORM"],
                 prune_configs_by={"early_config_prune": mode_pruner(interpret_config(), untuned=_untuned)})
@triton.jit
def _batch_norm_act_bwd_reduce_kernel(
    DY, X, SRC, STATS, PARTS,  # SRC: the residual or the output (Z_FROM); STATS (4, C): mean, invstd, scale, beta
    stride_dyn, stride_dyl, stride_dyc,
    stride_xn, stride_xl, stride_xc,
    stride_sn, stride_sl, stride_sc,
    stride_s, stride_pp,  # plane strides of STATS and PARTS (2, programs, C)
    L, M, C, ROWS_PER_PROGRAM,
    ACT: tl.constexpr, Z_FROM: tl.constexpr, ROW_UNIFORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    cs64 = cs.to(tl.int64)
    mean, invstd, scale, beta = load_stats(STATS, stride_s, cs, c_ok)
    row_start = pid * ROWS_PER_PROGRAM
    row_end = tl.minimum(row_start + ROWS_PER_PROGRAM, M)
    sum_dz = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    sum_dz_xhat = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & c_ok[None, :]
        offs_dy = row_offsets(rows, L, stride_dyn, stride_dyl, ROW_UNIFORM)[:, None] + (cs64 * stride_dyc)[None, :]
        offs_x = row_offsets(rows, L, stride_xn, stride_xl, ROW_UNIFORM)[:, None] + (cs64 * stride_xc)[None, :]
        offs_src = row_offsets(rows, L, stride_sn, stride_sl, ROW_UNIFORM)[:, None] + (cs64 * stride_sc)[None, :]
        dz, x = grad_z(DY, X, SRC, offs_dy, offs_x, offs_src, mask, mean, scale, beta, ACT, Z_FROM)
        dz = tl.where(mask, dz, 0.0)
        sum_dz += dz
        sum_dz_xhat += dz * ((x - mean[None, :]) * invstd[None, :])
    tl.store(PARTS + pid * C + cs, tl.sum(sum_dz, axis=0), mask=c_ok)
    tl.store(PARTS + stride_pp + pid * C + cs, tl.sum(sum_dz_xhat, axis=0), mask=c_ok)


def batch_norm_act_bwd_reduce(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, act: str, z_from: str,
                              src: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dy, x, src (the residual for ``z_from="x_residual"``, the output for ``"output"``, else None): (N, C, H, W)
    maps of one shape and row layout; stats: the forward's (4, C). Returns (2, C) fp32: sum(dz), sum(dz * xhat)."""
    if act not in ACTIVATIONS or z_from not in Z_SOURCES:
        raise ValueError(f"batch_norm_act_bwd_reduce: act must be one of {ACTIVATIONS} and z_from one of "
                         f"{Z_SOURCES}, got {act!r}, {z_from!r}")
    if (src is None) != (z_from in ("none", "x")):
        raise ValueError(f"batch_norm_act_bwd_reduce: z_from={z_from!r} {'takes no' if src is not None else 'needs a'}"
                         f" src map")
    check_same_rows("batch_norm_act_bwd_reduce", dy, x, src)
    batch, channels, height, width = x.shape
    rows = batch * height * width
    interpret = interpreting() or x.device.type != "cuda"
    channel_blocks = cdiv(channels, INTERPRET_BLOCKS[1] if interpret else WIDEST_REDUCTION_BLOCK_C)
    programs, per_program = row_programs(rows, channel_blocks, x.device, interpret)
    parts = torch.empty((2, programs, channels), device=x.device, dtype=torch.float32)
    src = src if src is not None else x  # never read when absent

    def grid(meta):
        return (programs, cdiv(channels, meta["BLOCK_C"]))

    launch(_batch_norm_act_bwd_reduce_kernel, grid, dy, x, src, stats, parts, *map_strides(dy), *map_strides(x),
           *map_strides(src), stats.stride(0), parts.stride(0), height * width, rows, channels, per_program,
           ACT=act, Z_FROM=z_from, ROW_UNIFORM=row_uniform(x))
    return parts.sum(1)
