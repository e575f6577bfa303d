"""Backward of a training BatchNorm + residual + activation, second stage: the input gradient (and the residual's),
elementwise, from the per-channel sums of ``batch_norm_act_bwd_reduce.py``:

``dx = weight * invstd * (dz - sum(dz) / M - xhat * sum(dz * xhat) / M)``, ``dresidual = dz``

or, when the residual had its own BatchNorm (``RES_NORM``), the same formula for it with its statistics, weight and
``sum(dz * rhat)`` (the reduction's third row): the gradient of the residual's input, not of its normalized map.

with ``dz = dy * act'(z)`` recomputed exactly as the reduction did (same tile function). One read of dy and x (and the
output or residual when ``dz`` needs it), one write of dx (and of dresidual); torch's activation backward, BatchNorm
backward reduce and elementwise kernels read the map six times and write it twice.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._activation import ACTIVATIONS
from ._batch_norm_common import (ELEMENTWISE_TILES, check_same_rows, elementwise_tile, interpret_config, load_stats,
                                 map_strides, row_offsets, row_uniform, tile_configs, untuned_tile)
from ._intmath import cdiv
from ._launch import launch
from ._tuning import mode_pruner
from .batch_norm_act_bwd_reduce import Z_SOURCES, check_res_norm, grad_z, src_map_strides, src_offsets

__all__ = ["batch_norm_act_bwd"]

def _untuned(configs, args):
    """H100 winners (``_batch_norm_common.py``): (128, 32) up to C = 32, (32, 128) up to 128, else (16, 256)."""
    return untuned_tile(configs, args["C"],
                        lambda c: (128, 32, 4) if c <= 32 else ((32, 128, 4) if c <= 128 else (16, 256, 4)))


@triton.autotune(configs=tile_configs(ELEMENTWISE_TILES),
                 key=["C", "ACT", "Z_FROM", "HAS_DRES", "RES_NORM", "ROW_UNIFORM"],
                 prune_configs_by={"early_config_prune": mode_pruner(interpret_config(), untuned=_untuned)})
@triton.jit
def _batch_norm_act_bwd_kernel(
    DY, X, SRC, STATS, SUMS, WEIGHT, DX, DRES,  # SUMS ((2 | 3), C) fp32: sum(dz), sum(dz * xhat) (, sum(dz * rhat))
    RES, RES_STATS, RES_WEIGHT,  # RES_NORM: the residual before its own BatchNorm (x's strides), its stats, weight
    stride_dyn, stride_dyl, stride_dyc,
    stride_xn, stride_xl, stride_xc,
    stride_sn, stride_sl, stride_sc,
    stride_dxn, stride_dxl, stride_dxc,
    stride_drn, stride_drl, stride_drc,
    stride_s, stride_sums,
    L, M, C,
    ACT: tl.constexpr, Z_FROM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_DRES: tl.constexpr,
    RES_NORM: tl.constexpr, HAS_RES_WEIGHT: tl.constexpr, ROW_UNIFORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows, cs, c_ok, mask, cs64 = elementwise_tile(M, C, BLOCK_M, BLOCK_C)
    mean, invstd, scale, beta = load_stats(STATS, stride_s, cs, c_ok)
    total = M.to(tl.float32)
    mean_dz = tl.load(SUMS + cs, mask=c_ok, other=0.0) / total
    mean_dz_xhat = tl.load(SUMS + stride_sums + cs, mask=c_ok, other=0.0) / total
    gain = invstd
    if HAS_WEIGHT:
        gain = invstd * tl.load(WEIGHT + cs, mask=c_ok, other=0.0).to(tl.float32)
    offs_dy = row_offsets(rows, L, stride_dyn, stride_dyl, ROW_UNIFORM)[:, None] + (cs64 * stride_dyc)[None, :]
    offs_x = row_offsets(rows, L, stride_xn, stride_xl, ROW_UNIFORM)[:, None] + (cs64 * stride_xc)[None, :]
    offs_src = src_offsets(rows, cs64, L, stride_sn, stride_sl, stride_sc, ROW_UNIFORM, Z_FROM)
    dz, x = grad_z(DY, X, SRC, offs_dy, offs_x, offs_src, mask, cs, mean, scale, beta, ACT, Z_FROM)
    xhat = (x - mean[None, :]) * invstd[None, :]
    dx = (dz - mean_dz[None, :] - xhat * mean_dz_xhat[None, :]) * gain[None, :]
    offs_dx = row_offsets(rows, L, stride_dxn, stride_dxl, ROW_UNIFORM)[:, None] + (cs64 * stride_dxc)[None, :]
    tl.store(DX + offs_dx, dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_DRES:
        dres = dz
        if RES_NORM:  # through the residual's own BatchNorm, with its sums (third row of SUMS)
            mean_r, invstd_r, _, _ = load_stats(RES_STATS, stride_s, cs, c_ok)
            gain_r = invstd_r
            if HAS_RES_WEIGHT:
                gain_r = invstd_r * tl.load(RES_WEIGHT + cs, mask=c_ok, other=0.0).to(tl.float32)
            rhat = (tl.load(RES + offs_x, mask=mask, other=0.0).to(tl.float32) - mean_r[None, :]) * invstd_r[None, :]
            mean_dz_rhat = tl.load(SUMS + 2 * stride_sums + cs, mask=c_ok, other=0.0) / total
            dres = (dz - mean_dz[None, :] - rhat * mean_dz_rhat[None, :]) * gain_r[None, :]
        offs_dr = row_offsets(rows, L, stride_drn, stride_drl, ROW_UNIFORM)[:, None] + (cs64 * stride_drc)[None, :]
        tl.store(DRES + offs_dr, dres.to(DRES.dtype.element_ty), mask=mask)


def batch_norm_act_bwd(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, sums: torch.Tensor,
                       weight: Optional[torch.Tensor], act: str, z_from: str, src: Optional[torch.Tensor] = None,
                       residual_dtype: Optional[torch.dtype] = None, res: Optional[torch.Tensor] = None,
                       res_stats: Optional[torch.Tensor] = None, res_weight: Optional[torch.Tensor] = None) -> tuple:
    """dy, x, src: as for :func:`batch_norm_act_bwd_reduce`, whose ((2 | 3), C) result is ``sums``; weight: None or
    (C,). Returns (dx like x, dresidual like x in ``residual_dtype`` or None when ``residual_dtype`` is None). With
    ``res``, ``res_stats`` (and ``res_weight``, None or (C,)): the residual had its own BatchNorm, and dresidual is
    the gradient of its input."""
    if act not in ACTIVATIONS or z_from not in Z_SOURCES:
        raise ValueError(f"batch_norm_act_bwd: act must be one of {ACTIVATIONS} and z_from one of {Z_SOURCES}, "
                         f"got {act!r}, {z_from!r}")
    check_res_norm("batch_norm_act_bwd", x, z_from, res, res_stats)
    if res is not None and sums.shape[0] != 3:
        raise ValueError(f"batch_norm_act_bwd: a normalized residual needs the reduction's 3 rows, got {sums.shape[0]}")
    check_same_rows("batch_norm_act_bwd", dy, x, None if z_from == "relu_mask" else src)
    src_strides = src_map_strides("batch_norm_act_bwd", src, x, z_from)
    batch, channels, height, width = x.shape
    rows = batch * height * width
    dx = torch.empty_like(x)
    dres = torch.empty_like(x, dtype=residual_dtype) if residual_dtype is not None else None
    check_same_rows("batch_norm_act_bwd", x, dx, dres)
    src = src if src is not None else x  # never read when absent

    def grid(meta):
        return (cdiv(rows, meta["BLOCK_M"]), cdiv(channels, meta["BLOCK_C"]))

    launch(_batch_norm_act_bwd_kernel, grid, dy, x, src, stats, sums, weight if weight is not None else stats, dx,
           dres if dres is not None else dx, res if res is not None else x,
           res_stats if res_stats is not None else stats, res_weight if res_weight is not None else stats,
           *map_strides(dy), *map_strides(x), *src_strides, *map_strides(dx),
           *map_strides(dres if dres is not None else dx), stats.stride(0), sums.stride(0), height * width, rows,
           channels, ACT=act, Z_FROM=z_from, HAS_WEIGHT=weight is not None, HAS_DRES=dres is not None,
           RES_NORM=res is not None, HAS_RES_WEIGHT=res_weight is not None, ROW_UNIFORM=row_uniform(x))
    return dx, dres
