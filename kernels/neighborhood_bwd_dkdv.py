"""Backward Triton kernel for dK and dV of generalized 2-D neighborhood attention (flash-style; Hassani et al.,
"Neighborhood Attention Transformer", CVPR 2023).

One program owns a 2-D tile of keys of one (batch, head) inside one dilation group. The queries that can see any key
of the tile form a bounded rectangle (the inverse neighborhood): window starts are monotone in the query index, so a
binary search per axis finds it. The program walks that rectangle in chunks of ``BLOCK_M`` queries, recomputes the
probabilities from the saved base-2 log-sum-exp (window masks and position biases: one gather per score from the
forward's window-logit table, ``_neighborhood_table.py``), and accumulates ``dV = P^T dO`` and ``dK = dS^T Q *
scale`` with ``dS = P * (dP - delta)``, where ``delta = rowsum(dO * O)`` was written by the dQ kernel. Every output
element is written by exactly one program: deterministic, no atomics.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import _neighborhood_common as common
from ._neighborhood_common import (LOG2E, bounded_configs, first_query_with_start_ge, next_pow2, query_code,
                                   tile_origin)
from .neighborhood_fwd import MIN_DOT, tiled_launch
from ._launch import launch

__all__ = ["neighborhood_bwd_dkdv"]

# First config = the default when autotuning is off. H100 sweeps (bf16, d 32; kernels/measurements/
# h100_na_sweeps_2026-11-23f.json, one BLOCK_M per run): sliding windows were fastest with 32-query chunks (56x56:
# 0.39 ms vs 0.47 with 16 and 0.62 with 64), one-window key tiles with 16 (7x7 windows at 56x56: 0.29 ms vs 0.54
# with 32); 8 warps never won. So each config names a chunk size per tiling and a heuristic picks the one that applies.
_CONFIGS = [
    triton.Config({"BM_SLIDING": 32, "BM_WINDOW": 16}, num_warps=4, num_stages=1),
    triton.Config({"BM_SLIDING": 16, "BM_WINDOW": 64}, num_warps=4, num_stages=1),
    triton.Config({"BM_SLIDING": 16, "BM_WINDOW": 16}, num_warps=4, num_stages=2),
    triton.Config({"BM_SLIDING": 64, "BM_WINDOW": 32}, num_warps=4, num_stages=1),
]


def query_chunk(nargs) -> int:
    """BLOCK_M: the config's chunk for one-window key tiles (stride == kernel == tile) or for sliding tiles."""
    window = (nargs["SH"], nargs["SW"]) == (nargs["KH"], nargs["KW"]) == (nargs["TILE_Y"], nargs["TILE_X"])
    return nargs["BM_WINDOW"] if window else nargs["BM_SLIDING"]


@triton.autotune(
    configs=bounded_configs(_CONFIGS),
    key=["H", "W", "NHEADS", "DIL_Y", "DIL_X", "KH", "KW", "SH", "SW", "TILE_Y", "TILE_X", "HEAD_DIM", "V_DIM"],
)
@triton.heuristics({"BLOCK_M": query_chunk})
@triton.jit
def _neighborhood_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, TAB, DK, DV,
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_ob, stride_oy, stride_ox, stride_oh, stride_od,  # dO
    stride_dkb, stride_dky, stride_dkx, stride_dkh, stride_dkd,
    stride_dvb, stride_dvy, stride_dvx, stride_dvh, stride_dvd,
    stride_th,  # window-logit table (heads or 1, KH*KW * TAB_ROWS * TAB_COLS), contiguous per head
    H, W, NHEADS, DIL_Y, DIL_X, TILES_Y, TILES_X,
    qk_scale, sm_scale,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    TILE_Y: tl.constexpr, TILE_X: tl.constexpr,  # key tile
    SHIFT_Y: tl.constexpr, SHIFT_X: tl.constexpr, TAB_ROWS: tl.constexpr, TAB_COLS: tl.constexpr,
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, V_BLOCK: tl.constexpr,  # value head dim, padded to a power of 2
    DOT_PREC: tl.constexpr,
    BM_SLIDING: tl.constexpr, BM_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b, h, gy, gx, ty0, tx0, glen_y, glen_x = tile_origin(tl.program_id(0), H, W, NHEADS, DIL_Y, DIL_X, TILES_Y,
                                                         TILES_X, TILE_Y, TILE_X)
    ty_last = tl.minimum(ty0 + TILE_Y, glen_y) - 1
    tx_last = tl.minimum(tx0 + TILE_X, glen_x) - 1

    # ---- inverse neighborhood: queries i with start(i) <= last key and start(i) + k - 1 >= first key
    qy_lo = first_query_with_start_ge(ty0 - KH + 1, glen_y, KH, SH)
    qy_hi = first_query_with_start_ge(ty_last + 1, glen_y, KH, SH)
    qx_lo = first_query_with_start_ge(tx0 - KW + 1, glen_x, KW, SW)
    qx_hi = first_query_with_start_ge(tx_last + 1, glen_x, KW, SW)
    span_qx = qx_hi - qx_lo
    tile_live = (ty0 < glen_y) & (tx0 < glen_x)
    n_queries = tl.where(tile_live, (qy_hi - qy_lo) * span_qx, 0)

    # ---- the key tile
    offs_n = tl.arange(0, BLOCK_N)
    kyi = ty0 + offs_n // TILE_X
    kxi = tx0 + offs_n % TILE_X
    k_valid = (offs_n < TILE_Y * TILE_X) & (kyi < glen_y) & (kxi < glen_x)
    # table code of each key; padding keys take the tile's first key (in range, never stored)
    k_code = tl.where(k_valid, kyi, ty0) * TAB_COLS + tl.where(k_valid, kxi, tx0)
    ky = gy + DIL_Y * kyi
    kx = gx + DIL_X * kxi
    offs_d = tl.arange(0, HEAD_DIM)
    offs_e = tl.arange(0, V_BLOCK)
    e_in = offs_e < V_DIM
    b64 = b.to(tl.int64)
    k = tl.load(K + b64 * stride_kb + h * stride_kh + ky[:, None] * stride_ky + kx[:, None] * stride_kx
                + offs_d[None, :] * stride_kd, mask=k_valid[:, None], other=0.0)
    v = tl.load(V + b64 * stride_vb + h * stride_vh + ky[:, None] * stride_vy + kx[:, None] * stride_vx
                + offs_e[None, :] * stride_vd, mask=k_valid[:, None] & e_in[None, :], other=0.0)
    q_base = Q + b64 * stride_qb + h * stride_qh
    do_base = DO + b64 * stride_ob + h * stride_oh
    row_base = (b64 * NHEADS + h) * H * W  # LSE / DELTA are contiguous (B, heads, H, W)
    tab = TAB + h * stride_th

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, V_BLOCK], dtype=tl.float32)
    for m0 in range(0, n_queries, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q_in = offs_m < n_queries
        qyi = tl.where(q_in, qy_lo + offs_m // span_qx, qy_lo)  # padding queries: the first one (loads masked)
        qxi = tl.where(q_in, qx_lo + offs_m % span_qx, qx_lo)
        q_code = query_code(qyi, qxi, glen_y, glen_x, KH, KW, SH, SW, SHIFT_Y, SHIFT_X, TAB_ROWS, TAB_COLS)
        qy = gy + DIL_Y * qyi
        qx = gx + DIL_X * qxi
        qt = tl.load(q_base + qy[None, :] * stride_qy + qx[None, :] * stride_qx + offs_d[:, None] * stride_qd,
                     mask=q_in[None, :], other=0.0)
        st = tl.dot(k, qt, input_precision=DOT_PREC) * qk_scale  # (keys, queries), base-2 logits
        st += tl.load(tab + (k_code[:, None] - q_code[None, :])) * LOG2E  # -inf outside the window
        lse = tl.load(LSE + row_base + qy * W + qx, mask=q_in, other=0.0)
        # Padding queries read q = dO = 0 and lse = delta = 0: finite P, and no dV / dK contribution.
        pt = tl.math.exp2(st - lse[None, :])
        do = tl.load(do_base + qy[:, None] * stride_oy + qx[:, None] * stride_ox + offs_e[None, :] * stride_od,
                     mask=q_in[:, None] & e_in[None, :], other=0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        delta = tl.load(DELTA + row_base + qy * W + qx, mask=q_in, other=0.0)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=DOT_PREC)

    dk_ptrs = DK + b64 * stride_dkb + h * stride_dkh + ky[:, None] * stride_dky + kx[:, None] * stride_dkx
    tl.store(dk_ptrs + offs_d[None, :] * stride_dkd, (dk * sm_scale).to(DK.dtype.element_ty), mask=k_valid[:, None])
    dv_ptrs = DV + b64 * stride_dvb + h * stride_dvh + ky[:, None] * stride_dvy + kx[:, None] * stride_dvx
    tl.store(dv_ptrs + offs_e[None, :] * stride_dvd, dv.to(DV.dtype.element_ty),
             mask=k_valid[:, None] & e_in[None, :])


def neighborhood_bwd_dkdv(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    rpb: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    kernel: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    scale: float,
    table: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the dK/dV kernel; ``lse`` from the forward and ``delta`` from the dQ kernel, both contiguous
    (B, heads, H, W) float32; ``table`` the forward's window-logit table (rebuilt from rpb / bias when None).
    Returns (dk, dv) in k's and v's dtypes."""
    dk = common.alloc(k.shape, k.device, k.dtype)
    dv = common.alloc(v.shape, device=v.device, dtype=v.dtype)
    t = tiled_launch(q, v, rpb, bias, kernel, dilation, stride, table)  # key tiles = the query tiling
    launch(_neighborhood_bwd_dkdv_kernel, (t.n_programs,),
        q, k, v, grad_out, lse, delta, t.table, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride(), *dv.stride(), *t.grid_args,
        scale * LOG2E, scale,
        **t.constexprs, BLOCK_N=max(MIN_DOT, next_pow2(t.constexprs["TILE_Y"] * t.constexprs["TILE_X"])),
    )
    return dk, dv
