"""Backward Triton kernel for dK and dV of generalized 2-D neighborhood attention (flash-style; Hassani et al.,
"Neighborhood Attention Transformer", CVPR 2023).

One program owns a 2-D tile of keys of one (batch, head) inside one dilation group. The queries that can see any key
of the tile form a bounded rectangle (the inverse neighborhood): window starts are monotone in the query index, so
a binary search per axis finds it. The program walks that rectangle in chunks of ``BLOCK_M`` queries, recomputes
the probabilities from the saved base-2 log-sum-exp, and accumulates ``dV = P^T dO`` and ``dK = dS^T Q * scale``
with ``dS = P * (dP - delta)``, where ``delta = rowsum(dO * O)`` was written by the dQ kernel. Every output element
is written by exactly one program: deterministic, no atomics.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import _neighborhood_common as common
from ._neighborhood_common import (LOG2E, bounded_configs, first_query_with_start_ge, next_pow2, value_block,
                                   window_start)
from .neighborhood_fwd import MIN_DOT, dot_precision, query_tile, tile_grid
from ._launch import launch

__all__ = ["neighborhood_bwd_dkdv"]

_CONFIGS = [
    triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64}, num_warps=8, num_stages=2),
]


@triton.autotune(
    configs=bounded_configs(_CONFIGS),
    key=["H", "W", "NHEADS", "DIL_Y", "DIL_X", "KH", "KW", "SH", "SW", "TILE_Y", "TILE_X", "HEAD_DIM", "V_DIM"],
)
@triton.jit
def _neighborhood_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, RPB, BIAS, DK, DV,
    stride_qb, stride_qy, stride_qx, stride_qh, stride_qd,
    stride_kb, stride_ky, stride_kx, stride_kh, stride_kd,
    stride_vb, stride_vy, stride_vx, stride_vh, stride_vd,
    stride_ob, stride_oy, stride_ox, stride_oh, stride_od,  # dO
    stride_dkb, stride_dky, stride_dkx, stride_dkh, stride_dkd,
    stride_dvb, stride_dvy, stride_dvx, stride_dvh, stride_dvd,
    stride_rh, stride_ry, stride_rx,
    stride_bh, stride_bq, stride_bk,
    H, W, NHEADS, DIL_Y, DIL_X, TILES_Y, TILES_X,
    qk_scale, sm_scale,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    TILE_Y: tl.constexpr, TILE_X: tl.constexpr,  # key tile
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, V_BLOCK: tl.constexpr,  # value head dim, padded to a power of 2
    HAS_RPB: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles_per_group = TILES_Y * TILES_X
    n_tiles = tiles_per_group * DIL_Y * DIL_X
    tile = pid % n_tiles
    bh = pid // n_tiles
    b = bh // NHEADS
    h = bh % NHEADS
    grp = tile // tiles_per_group
    t = tile % tiles_per_group
    gy = grp // DIL_X
    gx = grp % DIL_X
    ty0 = (t // TILES_X) * TILE_Y  # first key of the tile, sub-lattice coordinates
    tx0 = (t % TILES_X) * TILE_X
    glen_y = (H - gy + DIL_Y - 1) // DIL_Y
    glen_x = (W - gx + DIL_X - 1) // DIL_X
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
    row_base = bh.to(tl.int64) * H * W  # LSE / DELTA are contiguous (B, heads, H, W)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, V_BLOCK], dtype=tl.float32)
    for m0 in range(0, n_queries, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q_in = offs_m < n_queries
        qyi = qy_lo + offs_m // span_qx
        qxi = qx_lo + offs_m % span_qx
        qsy = window_start(qyi, glen_y, KH, SH)
        qsx = window_start(qxi, glen_x, KW, SW)
        qy = gy + DIL_Y * qyi
        qx = gx + DIL_X * qxi
        qt = tl.load(q_base + qy[None, :] * stride_qy + qx[None, :] * stride_qx + offs_d[:, None] * stride_qd,
                     mask=q_in[None, :], other=0.0)
        st = tl.dot(k, qt, input_precision=DOT_PREC) * qk_scale  # (keys, queries), base-2 logits
        ra = kyi[:, None] - qsy[None, :]
        rb = kxi[:, None] - qsx[None, :]
        in_win = (ra >= 0) & (ra < KH) & (rb >= 0) & (rb < KW) & k_valid[:, None] & q_in[None, :]
        if HAS_RPB:
            r_off = (kyi[:, None] - qyi[None, :] + KH - 1) * stride_ry \
                + (kxi[:, None] - qxi[None, :] + KW - 1) * stride_rx
            st += tl.load(RPB + h * stride_rh + r_off, mask=in_win, other=0.0).to(tl.float32) * LOG2E
        if HAS_BIAS:
            b_off = (((qyi - qsy) * KW + (qxi - qsx)) * stride_bq)[None, :] + (ra * KW + rb) * stride_bk
            st += tl.load(BIAS + h * stride_bh + b_off, mask=in_win, other=0.0).to(tl.float32) * LOG2E
        lse = tl.load(LSE + row_base + qy * W + qx, mask=q_in, other=0.0)
        pt = tl.where(in_win, tl.math.exp2(st - lse[None, :]), 0.0)
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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the dK/dV kernel; ``lse`` from the forward and ``delta`` from the dQ kernel, both contiguous
    (B, heads, H, W) float32. Returns (dk, dv) in k's and v's dtypes."""
    batch, height, width, heads, head_dim = q.shape
    v_dim = v.shape[-1]
    dk = common.alloc(k.shape, k.device, k.dtype)
    dv = common.alloc(v.shape, device=v.device, dtype=v.dtype)
    tile = query_tile(kernel, stride)  # key tiles use the query tiling: one window per program for windows
    tiles_y, tiles_x = tile_grid((height, width), dilation, tile)
    n_programs = batch * heads * dilation[0] * dilation[1] * tiles_y * tiles_x
    launch(_neighborhood_bwd_dkdv_kernel, (n_programs,),
        q, k, v, grad_out, lse, delta,
        rpb if rpb is not None else q, bias if bias is not None else q, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride(), *dv.stride(),
        *(rpb.stride() if rpb is not None else (0, 0, 0)), *(bias.stride() if bias is not None else (0, 0, 0)),
        height, width, heads, dilation[0], dilation[1], tiles_y, tiles_x,
        scale * LOG2E, scale,
        KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], TILE_Y=tile[0], TILE_X=tile[1],
        HEAD_DIM=head_dim, V_DIM=v_dim, V_BLOCK=value_block(v_dim),
        HAS_RPB=rpb is not None, HAS_BIAS=bias is not None,
        DOT_PREC=dot_precision(q.dtype), BLOCK_N=max(MIN_DOT, next_pow2(tile[0] * tile[1])),
    )
    return dk, dv
