"""Backward of a training BatchNorm + residual + activation, first stage: per-channel sums over the batch of
``dz = dy * act'(z)`` and ``dz * xhat`` (``xhat = (x - mean) * invstd``). They are the bias and weight gradients, and
the two means the input gradient subtracts (``batch_norm_act_bwd.py``).

``dz`` comes from one of (``Z_FROM``): nothing (``act == "none"``: dz = dy), ``z`` recomputed from x with the
forward's own formula (``"x"``), the same plus the residual (``"x_residual"``), or, for ReLU after a residual add,
the forward's output (``"output"``: y > 0) or the bit mask of ``y > 0`` the forward wrote (``"relu_mask"``, uint8
(M, C / 8), ``_batch_norm_common.py``: 1/16 of the output's bytes, read twice per backward).

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
from ._batch_norm_common import (INTERPRET_BLOCKS, REDUCTION_TILES, check_same_rows, mask_byte, mask_strides,
                                 positive_bit,
                                 interpret_config, load_stats, map_strides, row_offsets, row_uniform,
                                 tile_configs, untuned_tile)
from ._intmath import cdiv
from ._launch import launch
from ._row_chunks import row_programs
from ._tuning import interpreting, mode_pruner

__all__ = ["batch_norm_act_bwd_reduce", "check_res_norm", "src_map_strides", "Z_SOURCES"]

Z_SOURCES = ("none", "x", "x_residual", "output", "relu_mask")
def _rule(channels: int):
    """(BLOCK_M, BLOCK_C, num_warps) untuned: the H100 winners at HaloNet-26t's 31 norms (kernels/README.md,
    "Seventeenth run"; timed in CUDA graphs), 2 warps, (64, 32) tiles up to C = 32, else (32, 64)."""
    return (64, 32, 2) if channels <= 32 else (32, 64, 2)


# with a normalized residual (three maps read, three sums): (16, 64) on 2 warps, 754 us over HaloNet-26t's four
# downsampling tails on the H100; every other tile took over 900 (kernels/README.md, "Seventeenth run")
RES_NORM_TILE = (16, 64, 2)


def _untuned(configs, args):
    return untuned_tile(configs, args["C"], lambda c: RES_NORM_TILE if args.get("RES_NORM") else _rule(c))


@triton.jit
def load_grad_tile(DY, X, SRC, offs_dy, offs_x, offs_src, mask, Z_FROM: tl.constexpr):
    """The maps one tile of dz needs (module docstring): (dy, x, src) in their own dtypes; src is dy when unused."""
    dy = tl.load(DY + offs_dy, mask=mask, other=0.0)
    x = tl.load(X + offs_x, mask=mask, other=0.0)
    src = dy
    if Z_FROM == "output" or Z_FROM == "x_residual" or Z_FROM == "relu_mask":
        src = tl.load(SRC + offs_src, mask=mask, other=0)
    return dy, x, src


@triton.jit
def dz_of_tile(dy, x, src, cs, mean, scale, beta, ACT: tl.constexpr, Z_FROM: tl.constexpr):
    """dz = dy * act'(z) from a loaded tile (``load_grad_tile``); returns (dz, x) in fp32."""
    dy = dy.to(tl.float32)
    x = x.to(tl.float32)
    if Z_FROM == "output":
        dz = tl.where(src.to(tl.float32) > 0.0, dy, 0.0)
    elif Z_FROM == "relu_mask":
        dz = tl.where(positive_bit(src, cs), dy, 0.0)
    elif Z_FROM == "none":
        dz = dy
    else:
        z = (x - mean[None, :]) * scale[None, :] + beta[None, :]  # the forward's formula: the same z, bit for bit
        if Z_FROM == "x_residual":
            z += src.to(tl.float32)
        dz = dy * act_grad(z, ACT)
    return dz, x


@triton.jit
def grad_z(DY, X, SRC, offs_dy, offs_x, offs_src, mask, cs, mean, scale, beta, ACT: tl.constexpr,
           Z_FROM: tl.constexpr):
    """dz = dy * act'(z) on one tile (module docstring); returns (dz, x) in fp32."""
    dy, x, src = load_grad_tile(DY, X, SRC, offs_dy, offs_x, offs_src, mask, Z_FROM)
    return dz_of_tile(dy, x, src, cs, mean, scale, beta, ACT, Z_FROM)


@triton.jit
def src_offsets(rows, cs64, L, stride_sn, stride_sl, stride_sc, ROW_UNIFORM: tl.constexpr, Z_FROM: tl.constexpr):
    """Element offsets of SRC at rows x channels: a map's, or for ``"relu_mask"`` each channel's byte (the launcher
    passes the mask's row strides, C / 8 bytes a row)."""
    rows_at = row_offsets(rows, L, stride_sn, stride_sl, ROW_UNIFORM)[:, None]
    if Z_FROM == "relu_mask":
        return rows_at + mask_byte(cs64)[None, :]
    return rows_at + (cs64 * stride_sc)[None, :]


@triton.jit
def _tile_offsets(start, row_end, cs64, c_ok, L, stride_dyn, stride_dyl, stride_dyc, stride_xn, stride_xl, stride_xc,
                  stride_sn, stride_sl, stride_sc, ROW_UNIFORM: tl.constexpr, Z_FROM: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    """Element offsets of dy, x and src and the mask of the tile of rows from ``start``."""
    rows = start + tl.arange(0, BLOCK_M)
    mask = (rows < row_end)[:, None] & c_ok[None, :]
    offs_dy = row_offsets(rows, L, stride_dyn, stride_dyl, ROW_UNIFORM)[:, None] + (cs64 * stride_dyc)[None, :]
    offs_x = row_offsets(rows, L, stride_xn, stride_xl, ROW_UNIFORM)[:, None] + (cs64 * stride_xc)[None, :]
    offs_src = src_offsets(rows, cs64, L, stride_sn, stride_sl, stride_sc, ROW_UNIFORM, Z_FROM)
    return offs_dy, offs_x, offs_src, mask


@triton.autotune(configs=tile_configs(REDUCTION_TILES),
                 key=["C", "ROWS_PER_PROGRAM", "ACT", "Z_FROM", "RES_NORM", "ROW_UNIFORM"],
                 prune_configs_by={"early_config_prune": mode_pruner(interpret_config(), untuned=_untuned)})
@triton.jit
def _batch_norm_act_bwd_reduce_kernel(
    DY, X, SRC, STATS, PARTS,  # SRC: the residual or the output (Z_FROM); STATS (4, C): mean, invstd, scale, beta
    RES, RES_STATS,  # RES_NORM: the residual before its own BatchNorm (x's strides) and that norm's statistics
    stride_dyn, stride_dyl, stride_dyc,
    stride_xn, stride_xl, stride_xc,
    stride_sn, stride_sl, stride_sc,
    stride_s, stride_pp,  # plane strides of STATS and PARTS ((2 | 3), programs, C)
    L, M, C, ROWS_PER_PROGRAM,
    ACT: tl.constexpr, Z_FROM: tl.constexpr, RES_NORM: tl.constexpr, ROW_UNIFORM: tl.constexpr,
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
    strides = (stride_dyn, stride_dyl, stride_dyc, stride_xn, stride_xl, stride_xc, stride_sn, stride_sl, stride_sc)
    offs_dy, offs_x, offs_src, mask = _tile_offsets(row_start, row_end, cs64, c_ok, L, *strides, ROW_UNIFORM, Z_FROM,
                                                    BLOCK_M)
    tile_next = load_grad_tile(DY, X, SRC, offs_dy, offs_x, offs_src, mask, Z_FROM)
    if RES_NORM:  # the residual's own normalization: its sum(dz * rhat) goes to a third plane
        mean_r, invstd_r, _, _ = load_stats(RES_STATS, stride_s, cs, c_ok)
        sum_dz_rhat = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        res_next = tl.load(RES + offs_x, mask=mask, other=0.0)
    for start in range(row_start, row_end, BLOCK_M):
        # software prefetch (as in batch_norm_stats.py): the next tile's loads fly while this one is summed
        dy, x, src = tile_next
        mask_here = mask
        offs_dy, offs_x, offs_src, mask = _tile_offsets(start + BLOCK_M, row_end, cs64, c_ok, L, *strides,
                                                        ROW_UNIFORM, Z_FROM, BLOCK_M)
        tile_next = load_grad_tile(DY, X, SRC, offs_dy, offs_x, offs_src, mask, Z_FROM)
        dz, x = dz_of_tile(dy, x, src, cs, mean, scale, beta, ACT, Z_FROM)
        dz = tl.where(mask_here, dz, 0.0)
        sum_dz += dz
        sum_dz_xhat += dz * ((x - mean[None, :]) * invstd[None, :])
        if RES_NORM:
            res = res_next.to(tl.float32)
            res_next = tl.load(RES + offs_x, mask=mask, other=0.0)
            sum_dz_rhat += dz * ((res - mean_r[None, :]) * invstd_r[None, :])
    tl.store(PARTS + pid * C + cs, tl.sum(sum_dz, axis=0), mask=c_ok)
    tl.store(PARTS + stride_pp + pid * C + cs, tl.sum(sum_dz_xhat, axis=0), mask=c_ok)
    if RES_NORM:
        tl.store(PARTS + 2 * stride_pp + pid * C + cs, tl.sum(sum_dz_rhat, axis=0), mask=c_ok)


def src_map_strides(kernel: str, src: Optional[torch.Tensor], x: torch.Tensor, z_from: str) -> tuple:
    """The (stride_n, stride_l, stride_c) the kernels address SRC with: a packed mask's (``mask_strides``), a map's,
    or x's when there is no SRC (never read)."""
    if z_from == "relu_mask":
        return mask_strides(src, x, kernel)
    return map_strides(src if src is not None else x)


def batch_norm_act_bwd_reduce(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, act: str, z_from: str,
                              src: Optional[torch.Tensor] = None, res: Optional[torch.Tensor] = None,
                              res_stats: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dy, x, src (the residual for ``z_from="x_residual"``, the output for ``"output"``, the packed mask for
    ``"relu_mask"``, else None): (N, C, H, W) maps of one shape and row layout; stats: the forward's (4, C). Returns
    (2, C) fp32: sum(dz), sum(dz * xhat). With ``res`` (a residual that had its own BatchNorm, x's strides) and its
    ``res_stats``: (3, C), the third row sum(dz * rhat); z must then come from the mask, the output or nothing."""
    if act not in ACTIVATIONS or z_from not in Z_SOURCES:
        raise ValueError(f"batch_norm_act_bwd_reduce: act must be one of {ACTIVATIONS} and z_from one of "
                         f"{Z_SOURCES}, got {act!r}, {z_from!r}")
    if (src is None) != (z_from in ("none", "x")):
        raise ValueError(f"batch_norm_act_bwd_reduce: z_from={z_from!r} {'takes no' if src is not None else 'needs a'}"
                         f" src map")
    check_res_norm("batch_norm_act_bwd_reduce", x, z_from, res, res_stats)
    check_same_rows("batch_norm_act_bwd_reduce", dy, x, None if z_from == "relu_mask" else src)
    src_strides = src_map_strides("batch_norm_act_bwd_reduce", src, x, z_from)
    batch, channels, height, width = x.shape
    rows = batch * height * width
    interpret = interpreting() or x.device.type != "cuda"
    channel_blocks = cdiv(channels, INTERPRET_BLOCKS[1] if interpret else _rule(channels)[1])
    programs, per_program = row_programs(rows, channel_blocks, x.device, interpret)
    parts = torch.empty((2 if res is None else 3, programs, channels), device=x.device, dtype=torch.float32)
    src = src if src is not None else x  # never read when absent

    def grid(meta):
        return (programs, cdiv(channels, meta["BLOCK_C"]))

    launch(_batch_norm_act_bwd_reduce_kernel, grid, dy, x, src, stats, parts, res if res is not None else x,
           res_stats if res_stats is not None else stats, *map_strides(dy), *map_strides(x), *src_strides,
           stats.stride(0), parts.stride(0), height * width, rows, channels, per_program, ACT=act, Z_FROM=z_from,
           RES_NORM=res is not None, ROW_UNIFORM=row_uniform(x))
    return parts.sum(1)


def check_res_norm(kernel: str, x: torch.Tensor, z_from: str, res: Optional[torch.Tensor],
                   res_stats: Optional[torch.Tensor]) -> None:
    """ValueError unless a normalized residual comes with its statistics, with x's shape and strides, and with a
    ``z_from`` that does not recompute z (the kernels do not re-normalize the residual for it)."""
    if res is None and res_stats is None:
        return
    if res is None or res_stats is None:
        raise ValueError(f"{kernel}: res and res_stats must both be given or both be None")
    if res.shape != x.shape or res.stride() != x.stride():
        raise ValueError(f"{kernel}: res must have x's shape and strides, got {tuple(res.shape)} / {res.stride()} "
                         f"for x {tuple(x.shape)} / {x.stride()}")
    if z_from not in ("none", "output", "relu_mask"):
        raise ValueError(f"{kernel}: a normalized residual needs z_from 'none', 'output' or 'relu_mask', got "
                         f"{z_from!r}")
