"""dq kernel of bi-level routing attention (BiFormer, Zhu et al., CVPR 2023): the query-side half of the backward.

Same program layout as the forward (``routed_fwd.py``): a stationary tile of query regions/tokens streams the tokens
of its routed regions, recomputes the probabilities from the saved base-2 log-sum-exp and accumulates
``dq = scale * sum_j P_ij (dP_ij - delta_i) k_j`` in fp32. It also computes ``delta_i = <dO_i, O_i>`` for its rows and
stores it for the key-side kernel (``routed_bwd.py``), which therefore must run after this one.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from ._routed_common import MIN_DOT, dot_precision, layout_pruner, next_pow2, region_tokens, tile_configs
from ._tuning import interpreting
from .routed_fwd import LOG2E
from ._launch import launch

__all__ = ["routed_bwd_dq"]

# (BLOCK_M query rows, BLOCK_N key columns); smaller than the forward's: dq keeps q, dO and dq tiles live
_BLOCKS = [(16, 16), (16, 32), (16, 64), (32, 32), (32, 64), (64, 32), (64, 64)]


@triton.autotune(
    configs=tile_configs(_BLOCKS, "BLOCK_M", "BLOCK_N"),
    key=["TP", "TOPK", "BLOCK_D", "BLOCK_DV"],
    prune_configs_by={"early_config_prune": layout_pruner("BLOCK_M", "BLOCK_N", "TOPK", interpreting(), "dq")},
)
@triton.jit
def _routed_bwd_dq_kernel(
    Q, K, V, DO, O, LSE, IDX, DQ, DELTA,
    stride_qb, stride_qh, stride_qw, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kw, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vw, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dow, stride_don, stride_dod,
    stride_ob, stride_oh, stride_ow, stride_on, stride_od,
    stride_dqb, stride_dqh, stride_dqw, stride_dqn, stride_dqd,
    stride_lb, stride_lh, stride_lw, stride_ln,  # shared by LSE and DELTA (same shape, both contiguous)
    stride_ib, stride_ir, stride_ik,
    HEADS, H, W, N_WIN, RH, RW, T, R, TOPK, HEAD_DIM, V_DIM,
    sm_scale, qk_scale,  # softmax scale, and scale * log2(e)
    TP: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, SLOTS: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    TOK_M = BLOCK_M // GROUPS
    SHARE = BLOCK_N // GROUPS
    TOK_N = SHARE // SLOTS
    TILES_M = (TP + TOK_M - 1) // TOK_M

    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HEADS).to(tl.int64)
    h = pid_bh % HEADS
    first_region = (pid // TILES_M) * GROUPS
    first_tok = (pid % TILES_M) * TOK_M

    # ---- stationary rows: q, dO, O -> delta, lse
    offs_m = tl.arange(0, BLOCK_M)
    row_grp = offs_m // TOK_M
    q_region = first_region + row_grp
    q_y, q_x, q_valid = region_tokens(q_region, first_tok + offs_m % TOK_M, N_WIN, RH, RW, T, H, W)
    q_valid = q_valid & (q_region < R)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    qd_mask = q_valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    qv_mask = q_valid[:, None] & (offs_dv < V_DIM)[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qn + q_y[:, None] * stride_qh + q_x[:, None] * stride_qw
                + offs_d[None, :] * stride_qd, mask=qd_mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_don + q_y[:, None] * stride_doh + q_x[:, None] * stride_dow
                 + offs_dv[None, :] * stride_dod, mask=qv_mask, other=0.0)
    o = tl.load(O + b * stride_ob + h * stride_on + q_y[:, None] * stride_oh + q_x[:, None] * stride_ow
                + offs_dv[None, :] * stride_od, mask=qv_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    row_off = b * stride_lb + h * stride_ln + q_y * stride_lh + q_x * stride_lw
    tl.store(DELTA + row_off, delta, mask=q_valid)
    lse = tl.load(LSE + row_off, mask=q_valid, other=0.0)

    # ---- streamed key columns (same layout as the forward)
    offs_n = tl.arange(0, BLOCK_N)
    col_grp = offs_n // SHARE
    col_slot = (offs_n % SHARE) // TOK_N
    col_tok = offs_n % TOK_N
    col_qregion = tl.minimum(first_region + col_grp, R - 1)
    idx_row = IDX + b * stride_ib + col_qregion * stride_ir
    if GROUPS > 1:
        pair_ok = (row_grp[:, None] == col_grp[None, :]) & q_valid[:, None]
    else:
        pair_ok = q_valid[:, None]

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, TOPK, SLOTS):
        slot = j0 + col_slot
        slot_ok = slot < TOPK
        k_region = tl.load(idx_row + slot * stride_ik, mask=slot_ok, other=0)
        for n0 in range(0, T, TOK_N):
            k_y, k_x, k_valid = region_tokens(k_region, n0 + col_tok, N_WIN, RH, RW, T, H, W)
            k_valid = k_valid & slot_ok
            k = tl.load(K + b * stride_kb + h * stride_kn + k_y[:, None] * stride_kh + k_x[:, None] * stride_kw
                        + offs_d[None, :] * stride_kd, mask=k_valid[:, None] & (offs_d < HEAD_DIM)[None, :],
                        other=0.0)
            v = tl.load(V + b * stride_vb + h * stride_vn + k_y[:, None] * stride_vh + k_x[:, None] * stride_vw
                        + offs_dv[None, :] * stride_vd, mask=k_valid[:, None] & (offs_dv < V_DIM)[None, :],
                        other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
            p = tl.where(pair_ok & k_valid[None, :], tl.math.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)

    dq_ptrs = DQ + b * stride_dqb + h * stride_dqn + q_y[:, None] * stride_dqh + q_x[:, None] * stride_dqw
    tl.store(dq_ptrs + offs_d[None, :] * stride_dqd, (dq * sm_scale).to(DQ.dtype.element_ty), mask=qd_mask)


def routed_bwd_dq(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    index: torch.Tensor,
    n_win: int,
    scale: float,
    config: Optional[dict] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """dq (q's dtype and shape) and delta = rowsum(dO * O) (B, H, W, heads) float32 of routed attention. ``lse`` is
    the forward's base-2 log-sum-exp; ``index`` (B, n_win**2, topk) int32/int64."""
    batch, height, width, heads, head_dim = q.shape
    v_dim = v.shape[-1]
    rh, rw = -(-height // n_win), -(-width // n_win)
    tokens, regions, topk = rh * rw, n_win * n_win, index.shape[-1]
    lse = lse.contiguous()
    dq = torch.empty_like(q)
    delta = torch.empty_like(lse)
    tp = next_pow2(tokens)

    def grid(meta):
        tok_m = meta["BLOCK_M"] // meta["GROUPS"]
        return (cdiv(regions, meta["GROUPS"]) * cdiv(tp, tok_m), batch * heads)

    args = (
        q, k, v, grad_out, out, lse, index, dq, delta,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *out.stride(), *dq.stride(), *lse.stride(),
        *index.stride(),
        heads, height, width, n_win, rh, rw, tokens, regions, topk, head_dim, v_dim,
        scale, scale * LOG2E,
    )
    consts = dict(TP=tp, BLOCK_D=max(MIN_DOT, next_pow2(head_dim)), BLOCK_DV=max(MIN_DOT, next_pow2(v_dim)),
                  DOT_PREC=dot_precision(q.dtype))
    if config is None:
        launch(_routed_bwd_dq_kernel, grid, *args, **consts)
    else:
        cfg = dict(config)
        warps = cfg.pop("num_warps", 4)
        launch(_routed_bwd_dq_kernel.fn, grid(cfg), *args, **consts, **cfg, num_warps=warps)
    return dq, delta
