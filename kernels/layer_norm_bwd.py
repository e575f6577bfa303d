"""Backward of LayerNorm over the last dim (forward: ``layer_norm_fwd.py``), from the saved fp32 mean and rstd.

With xhat = (x - mean) * rstd and g = dy * weight (dy without a weight), per row of C channels:
``dx = rstd * (g - xhat * mean_C(g * xhat) - mean_C(g))``, ``dweight = sum_rows(dy * xhat)``,
``dbias = sum_rows(dy)``.

dx is a per-row computation like the forward. The parameter gradients are sums over all M rows: instead of atomics,
each program walks a contiguous chunk of rows (a few programs per SM, ``_row_chunks.py``), adds dy * xhat and dy
into fp32 (BLOCK_M, C) register tiles (no cross-warp reduction per step: on the H100 that halved the kernel's time at
C = 96..384 against a per-step row sum), reduces them once at the end and writes its row of an (n, n_programs, C)
fp32 buffer (n = the wanted gradients); the launcher adds the rows up with one ``.sum(1)``. No atomics, so the
result does not depend on scheduling: deterministic.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._intmath import next_pow2
from ._launch import launch
from ._row_chunks import row_programs
from ._tuning import interpreting
from .layer_norm_fwd import block_rows, check_channels, tile_configs, tile_pruner

__all__ = ["layer_norm_bwd"]
MAX_PER_THREAD = 32  # fp32 values per thread of one tile: x, dy, g and the two sum tiles live together

# (TILE elements per program step, num_warps); first = the default without autotuning: the H100's autotuner chose
# 2048-element tiles on 4 warps for C = 64, 96, 128, 384 and 768 (B=128 ViT stage shapes), 4096 for C = 192
_TILES = [(2048, 4), (4096, 4), (8192, 8), (4096, 8), (16384, 16)]


@triton.autotune(
    configs=tile_configs(_TILES),
    key=["C", "COMPUTE_DWEIGHT", "COMPUTE_DBIAS"],
    prune_configs_by={"early_config_prune": tile_pruner(MAX_PER_THREAD)},
)
@triton.heuristics({"BLOCK_M": block_rows})
@triton.jit
def _layer_norm_bwd_kernel(
    X, DY, WEIGHT, STATS, DX, PARTS,  # STATS: the forward's (2, M) mean / rstd; PARTS: (n, n_programs, C) fp32
    stride_xm, stride_dym, stride_dxm, stride_pm,  # row strides (stride_pm: a program's row in PARTS)
    M, C,
    dbias_offset,  # elements from PARTS to the dbias partials (0 when only dbias is computed)
    ROWS_PER_PROGRAM,
    HAS_WEIGHT: tl.constexpr, COMPUTE_DWEIGHT: tl.constexpr, COMPUTE_DBIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    row_start = pid * ROWS_PER_PROGRAM
    row_end = tl.minimum(row_start + ROWS_PER_PROGRAM, M)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    if HAS_WEIGHT:
        weight = tl.load(WEIGHT + cols, mask=col_ok, other=0.0).to(tl.float32)
    dweight_acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(STATS + rows, mask=row_ok, other=0.0)
        rstd = tl.load(STATS + M + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_WEIGHT:
            g = dy * weight[None, :]
        else:
            g = dy
        mean_gx = tl.sum(g * xhat, axis=1) / C
        mean_g = tl.sum(g, axis=1) / C
        dx = (g - xhat * mean_gx[:, None] - mean_g[:, None]) * rstd[:, None]
        tl.store(DX + rows64[:, None] * stride_dxm + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if COMPUTE_DWEIGHT:
            dweight_acc += dy * xhat
        if COMPUTE_DBIAS:
            dbias_acc += dy
    if COMPUTE_DWEIGHT:
        tl.store(PARTS + pid * stride_pm + cols, tl.sum(dweight_acc, axis=0), mask=col_ok)
    if COMPUTE_DBIAS:
        tl.store(PARTS + dbias_offset + pid * stride_pm + cols, tl.sum(dbias_acc, axis=0), mask=col_ok)


def layer_norm_bwd(
    dy2d: torch.Tensor,
    x2d: torch.Tensor,
    weight: Optional[torch.Tensor],
    stats: torch.Tensor,
    need_dweight: bool,
    need_dbias: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gradients of :func:`layer_norm_fwd`. dy2d, x2d: (M, C), channel stride 1, any row strides and float dtypes
    (dy2d in any, x2d fp16/bf16/fp32); weight: None or (C,); stats: the forward's (2, M) fp32 mean / rstd.

    Returns dx (M, C) contiguous in x's dtype and ``dparams``: None when neither parameter gradient is wanted, else
    one (n, C) fp32 tensor whose rows are dweight (if ``need_dweight``) then dbias (if ``need_dbias``). One tensor and
    one reduction for both (the caller splits and casts): fewer host calls on a path that runs 60+ times per step."""
    rows, channels = x2d.shape
    check_channels(channels)
    for name, t in (("x2d", x2d), ("dy2d", dy2d)):
        if channels > 1 and t.stride(1) != 1:
            raise ValueError(f"layer_norm_bwd: {name} must have channel stride 1, got strides {t.stride()}")
    dx = torch.empty((rows, channels), device=x2d.device, dtype=x2d.dtype)
    n_params = int(need_dweight) + int(need_dbias)
    if rows == 0:
        return dx, torch.zeros((n_params, channels), device=x2d.device) if n_params else None
    programs, per_program = row_programs(rows, 1, x2d.device, interpreting() or x2d.device.type != "cuda")
    parts = torch.empty((max(n_params, 1), programs, channels), device=x2d.device, dtype=torch.float32)
    weight = weight.contiguous() if weight is not None else None
    # an absent weight is never read: dx stands in for its pointer
    launch(_layer_norm_bwd_kernel, (programs,),
           x2d, dy2d, weight if weight is not None else dx, stats, dx, parts,
           x2d.stride(0), dy2d.stride(0), dx.stride(0), parts.stride(1), rows, channels,
           parts.stride(0) if need_dweight else 0, per_program,
           HAS_WEIGHT=weight is not None, COMPUTE_DWEIGHT=need_dweight, COMPUTE_DBIAS=need_dbias,
           BLOCK_C=next_pow2(channels))
    return dx, (parts.sum(1) if n_params else None)
