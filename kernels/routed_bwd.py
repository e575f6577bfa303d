"""Backward of bi-level routing attention (BiFormer, Zhu et al., CVPR 2023): the key-side dk/dv kernel and the launcher
of the whole backward (dq kernel from ``routed_bwd_dq.py`` first, it also produces delta = rowsum(dO * O)).

Several query regions route to the same key region, so dk/dv are sums over a variable set of query regions. Instead
of atomics or a gathered (regions, topk * tokens, d) intermediate, the launcher inverts the routing into a CSR list
(for each key region, the query regions that routed to it, in increasing order: ``routed_inverse_index.py``, so the
summation order and the result are deterministic) and one program per key region tile walks its list, recomputing the
probabilities from the forward's log-sum-exp (flash-attention style):
``dv = sum P^T dO``, ``dk = scale * sum dS^T q``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from ._launch import launch
from ._routed_common import MIN_DOT, dot_precision, layout_pruner, next_pow2, region_tokens, tile_configs
from ._tuning import interpreting
from .routed_bwd_dq import routed_bwd_dq
from .routed_fwd import LOG2E
from .routed_inverse_index import inverse_routing

__all__ = ["routed_bwd", "routed_bwd_dkdv"]

# (BLOCK_N key rows kept in registers with their dk/dv accumulators, BLOCK_M streamed query columns)
_BLOCKS = [(16, 16), (16, 32), (16, 64), (32, 32), (32, 64), (64, 32), (64, 64)]


@triton.autotune(
    configs=tile_configs(_BLOCKS, "BLOCK_N", "BLOCK_M"),
    key=["TP", "TOPK", "BLOCK_D", "BLOCK_DV"],
    prune_configs_by={"early_config_prune": layout_pruner("BLOCK_N", "BLOCK_M", "TOPK", interpreting(), "dkdv")},
)
@triton.jit
def _routed_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, OFFSETS, QLIST, DK, DV,
    stride_qb, stride_qh, stride_qw, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kw, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vw, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dow, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkw, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvw, stride_dvn, stride_dvd,
    stride_lb, stride_lh, stride_lw, stride_ln,  # shared by LSE and DELTA
    HEADS, H, W, N_WIN, RH, RW, T, R, TOPK, HEAD_DIM, V_DIM,
    sm_scale, qk_scale,
    TP: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, GROUPS: tl.constexpr, SLOTS: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    TOK_N = BLOCK_N // GROUPS  # token slots of one key region in this tile
    SHARE = BLOCK_M // GROUPS  # query columns per key region
    TOK_M = SHARE // SLOTS  # token slots of one listed query region per step
    TILES_N = (TP + TOK_N - 1) // TOK_N

    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HEADS).to(tl.int64)
    h = pid_bh % HEADS
    first_region = (pid // TILES_N) * GROUPS
    first_tok = (pid % TILES_N) * TOK_N

    # ---- stationary key tile: GROUPS key regions x TOK_N tokens, with their dk/dv accumulators
    offs_n = tl.arange(0, BLOCK_N)
    key_grp = offs_n // TOK_N
    k_region = first_region + key_grp
    k_y, k_x, k_valid = region_tokens(k_region, first_tok + offs_n % TOK_N, N_WIN, RH, RW, T, H, W)
    k_valid = k_valid & (k_region < R)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    kd_mask = k_valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    kv_mask = k_valid[:, None] & (offs_dv < V_DIM)[None, :]
    k = tl.load(K + b * stride_kb + h * stride_kn + k_y[:, None] * stride_kh + k_x[:, None] * stride_kw
                + offs_d[None, :] * stride_kd, mask=kd_mask, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vn + k_y[:, None] * stride_vh + k_x[:, None] * stride_vw
                + offs_dv[None, :] * stride_vd, mask=kv_mask, other=0.0)

    # ---- streamed query columns: group (key region) x list entry x token
    offs_m = tl.arange(0, BLOCK_M)
    col_grp = offs_m // SHARE
    col_entry = (offs_m % SHARE) // TOK_M
    col_tok = offs_m % TOK_M
    col_kregion = first_region + col_grp
    list_at = OFFSETS + b * R + tl.minimum(col_kregion, R - 1)
    list_start = tl.load(list_at)
    list_len = tl.where(col_kregion < R, tl.load(list_at + 1) - list_start, 0)
    longest = tl.max(list_len, 0)
    if GROUPS > 1:
        pair_ok = (key_grp[:, None] == col_grp[None, :]) & k_valid[:, None]
    else:
        pair_ok = k_valid[:, None]

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for e0 in range(0, longest, SLOTS):
        entry = e0 + col_entry
        listed = entry < list_len
        q_region = tl.load(QLIST + list_start + entry, mask=listed, other=0)
        for m0 in range(0, T, TOK_M):
            q_y, q_x, q_valid = region_tokens(q_region, m0 + col_tok, N_WIN, RH, RW, T, H, W)
            q_valid = q_valid & listed
            q = tl.load(Q + b * stride_qb + h * stride_qn + q_y[:, None] * stride_qh + q_x[:, None] * stride_qw
                        + offs_d[None, :] * stride_qd, mask=q_valid[:, None] & (offs_d < HEAD_DIM)[None, :],
                        other=0.0)
            do = tl.load(DO + b * stride_dob + h * stride_don + q_y[:, None] * stride_doh
                         + q_x[:, None] * stride_dow + offs_dv[None, :] * stride_dod,
                         mask=q_valid[:, None] & (offs_dv < V_DIM)[None, :], other=0.0)
            row_off = b * stride_lb + h * stride_ln + q_y * stride_lh + q_x * stride_lw
            lse = tl.load(LSE + row_off, mask=q_valid, other=0.0)
            delta = tl.load(DELTA + row_off, mask=q_valid, other=0.0)
            s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # (keys, queries)
            p_t = tl.where(pair_ok & q_valid[None, :], tl.math.exp2(s_t - lse[None, :]), 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)

    dk_ptrs = DK + b * stride_dkb + h * stride_dkn + k_y[:, None] * stride_dkh + k_x[:, None] * stride_dkw
    tl.store(dk_ptrs + offs_d[None, :] * stride_dkd, (dk * sm_scale).to(DK.dtype.element_ty), mask=kd_mask)
    dv_ptrs = DV + b * stride_dvb + h * stride_dvn + k_y[:, None] * stride_dvh + k_x[:, None] * stride_dvw
    tl.store(dv_ptrs + offs_dv[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=kv_mask)


def routed_bwd_dkdv(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    index: torch.Tensor,
    n_win: int,
    scale: float,
    config: Optional[dict] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """dk, dv of routed attention given the forward's base-2 ``lse`` and ``delta`` from :func:`routed_bwd_dq`."""
    batch, height, width, heads, head_dim = q.shape
    v_dim = v.shape[-1]
    rh, rw = -(-height // n_win), -(-width // n_win)
    tokens, regions, topk = rh * rw, n_win * n_win, index.shape[-1]
    offsets, query_regions = inverse_routing(index)
    lse, delta = lse.contiguous(), delta.contiguous()
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    tp = next_pow2(tokens)

    def grid(meta):
        tok_n = meta["BLOCK_N"] // meta["GROUPS"]
        return (cdiv(regions, meta["GROUPS"]) * cdiv(tp, tok_n), batch * heads)

    args = (
        q, k, v, grad_out, lse, delta, offsets, query_regions, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride(), *dv.stride(), *lse.stride(),
        heads, height, width, n_win, rh, rw, tokens, regions, topk, head_dim, v_dim,
        scale, scale * LOG2E,
    )
    consts = dict(TP=tp, BLOCK_D=max(MIN_DOT, next_pow2(head_dim)), BLOCK_DV=max(MIN_DOT, next_pow2(v_dim)),
                  DOT_PREC=dot_precision(q.dtype))
    if config is None:
        launch(_routed_bwd_dkdv_kernel, grid, *args, **consts)
    else:
        cfg = dict(config)
        warps = cfg.pop("num_warps", 4)
        launch(_routed_bwd_dkdv_kernel.fn, grid(cfg), *args, **consts, **cfg, num_warps=warps)
    return dk, dv


def routed_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    index: torch.Tensor,
    n_win: int,
    scale: float,
    dq_config: Optional[dict] = None,
    dkdv_config: Optional[dict] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of routed attention; all tensors in the natural layout, ``lse`` from ``routed_fwd``."""
    dq, delta = routed_bwd_dq(grad_out, q, k, v, out, lse, index, n_win, scale, config=dq_config)
    dk, dv = routed_bwd_dkdv(grad_out, q, k, v, lse, delta, index, n_win, scale, config=dkdv_config)
    return dq, dk, dv
