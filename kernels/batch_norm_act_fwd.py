"""Training BatchNorm's transform with its epilogue: ``y = act((x - mean) * scale + beta [+ residual])`` per
channel, one read of x (and the residual) and one write of y.

Why: torch runs BatchNorm's transform, a block's residual add and the activation as separate full passes over the
map (a ResNet bottleneck tail: three reads and three writes of the largest tensors where one read of x and of the
shortcut and one write do). ``mean``, ``scale`` and ``beta`` come from the batch statistics
(``batch_norm_stats_merge.py``). Tiles are [BLOCK_M rows, BLOCK_C channels] of the row layout in
``_batch_norm_common.py``; the math is fp32, y is written in its own dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._activation import ACTIVATIONS, apply_act
from ._batch_norm_common import (ELEMENTWISE_TILES, MASK_BITS, MASK_BITS_C, check_same_rows, elementwise_tile,
                                 interpret_config, load_stats, map_strides, pack_positive_bits, row_offsets,
                                 row_uniform, tile_configs, untuned_tile)
from ._intmath import cdiv
from ._launch import launch
from ._tuning import mode_pruner

__all__ = ["batch_norm_act_fwd"]

def _untuned(configs, args):
    """H100 winners (``_batch_norm_common.py``): (128, 32) up to C = 32, (64, 128) on 8 warps up to 64, else
    (16, 256)."""
    return untuned_tile(configs, args["C"],
                        lambda c: (128, 32, 4) if c <= 32 else ((64, 128, 8) if c <= 64 else (16, 256, 4)))


@triton.autotune(configs=tile_configs(ELEMENTWISE_TILES), key=["C", "ACT", "HAS_RESIDUAL", "RES_NORM", "WRITE_MASK",
                                                                "ROW_UNIFORM"],
                 prune_configs_by={"early_config_prune": mode_pruner(interpret_config(), untuned=_untuned)})
@triton.jit
def _batch_norm_act_fwd_kernel(
    X, RES, Y, STATS, MASK,  # STATS: (4, C) fp32 mean, invstd, scale, beta; MASK: packed z > 0 (WRITE_MASK)
    RES_STATS,  # RES_NORM: the residual's own BatchNorm statistics (4, C)
    stride_xn, stride_xl, stride_xc,
    stride_rn, stride_rl, stride_rc,
    stride_yn, stride_yl, stride_yc,
    stride_s,
    L, M, C,
    ACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RES_NORM: tl.constexpr, WRITE_MASK: tl.constexpr,
    ROW_UNIFORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows, cs, c_ok, mask, cs64 = elementwise_tile(M, C, BLOCK_M, BLOCK_C)
    mean, _, scale, beta = load_stats(STATS, stride_s, cs, c_ok)
    x_offs = row_offsets(rows, L, stride_xn, stride_xl, ROW_UNIFORM)[:, None] + (cs64 * stride_xc)[None, :]
    z = (tl.load(X + x_offs, mask=mask, other=0.0).to(tl.float32) - mean[None, :]) * scale[None, :] + beta[None, :]
    if HAS_RESIDUAL:
        r_offs = row_offsets(rows, L, stride_rn, stride_rl, ROW_UNIFORM)[:, None] + (cs64 * stride_rc)[None, :]
        r = tl.load(RES + r_offs, mask=mask, other=0.0).to(tl.float32)
        if RES_NORM:  # a shortcut's BatchNorm, applied on the fly (its normalized map is never written)
            mean_r, _, scale_r, beta_r = load_stats(RES_STATS, stride_s, cs, c_ok)
            r = (r - mean_r[None, :]) * scale_r[None, :] + beta_r[None, :]
        z += r
    y_offs = row_offsets(rows, L, stride_yn, stride_yl, ROW_UNIFORM)[:, None] + (cs64 * stride_yc)[None, :]
    tl.store(Y + y_offs, apply_act(z, ACT).to(Y.dtype.element_ty), mask=mask)
    if WRITE_MASK:  # bit c % 8 of byte (m, c // 8): z > 0 (C % 8 == 0, checked by the launcher)
        bytes_ = tl.program_id(1) * (BLOCK_C // MASK_BITS_C) + tl.arange(0, BLOCK_C // MASK_BITS_C)
        m_offs = rows.to(tl.int64)[:, None] * (C // MASK_BITS_C) + bytes_[None, :]
        m_ok = (rows < M)[:, None] & (bytes_ < C // MASK_BITS_C)[None, :]
        tl.store(MASK + m_offs, pack_positive_bits(z, BLOCK_M, BLOCK_C), mask=m_ok)


def batch_norm_act_fwd(x: torch.Tensor, stats: torch.Tensor, act: str, residual: Optional[torch.Tensor] = None,
                       relu_mask: bool = False,
                       residual_stats: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(y, mask): y = act((x - stats[0]) * stats[2] + stats[3] [+ residual]) per channel. x, residual: (N, C, H, W)
    with H, W mergeable and the same strides (checked by the op layer); stats: (4, C) fp32
    (``batch_norm_stats_merge``). With ``residual_stats`` (the same for the residual) the residual is normalized by
    them before the add. y: like x (same strides and dtype). mask (``relu_mask=True``, C a multiple of 8): the packed
    bits of ``z > 0``, uint8 (N * H * W, C / 8) (``_batch_norm_common.py``); else None."""
    if act not in ACTIVATIONS:
        raise ValueError(f"batch_norm_act_fwd: act must be one of {ACTIVATIONS}, got {act!r}")
    batch, channels, height, width = x.shape
    y = torch.empty_like(x)
    rows = batch * height * width
    check_same_rows("batch_norm_act_fwd", x, residual, y)
    xs, ys = map_strides(x), map_strides(y)
    rs = map_strides(residual) if residual is not None else xs
    mask = None
    if relu_mask:
        if channels % MASK_BITS:
            raise ValueError(f"batch_norm_act_fwd: relu_mask needs C divisible by {MASK_BITS}, got C = {channels}")
        mask = torch.empty((rows, channels // MASK_BITS), device=x.device, dtype=torch.uint8)

    def grid(meta):
        return (cdiv(rows, meta["BLOCK_M"]), cdiv(channels, meta["BLOCK_C"]))

    if residual_stats is not None and residual is None:
        raise ValueError("batch_norm_act_fwd: residual_stats needs a residual")
    launch(_batch_norm_act_fwd_kernel, grid, x, residual if residual is not None else x, y, stats,
           mask if mask is not None else y, residual_stats if residual_stats is not None else stats, *xs, *rs, *ys,
           stats.stride(0), height * width, rows, channels, ACT=act, HAS_RESIDUAL=residual is not None,
           RES_NORM=residual_stats is not None, WRITE_MASK=relu_mask, ROW_UNIFORM=row_uniform(x))
    return y, mask
