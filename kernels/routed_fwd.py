"""Forward kernel of bi-level routing attention (BiFormer, Zhu et al., CVPR 2023) over the natural
(B, H, W, heads, d) layout: each query region attends to the tokens of its ``topk`` routed regions.

One program = (a tile of query regions/tokens, batch * head). It loops over the routed regions (read from the
(B, regions, topk) index, no gathered K/V copy), loads their tokens by region arithmetic and keeps an fp32 online
softmax (flash-attention style, base-2 exponent). Writes the output and the per-row log-sum-exp (base 2) that the
backward kernels reuse. Tile layout and geometry: see ``_routed_common``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from ._routed_common import MIN_DOT, dot_precision, layout_pruner, next_pow2, region_tokens, tile_configs
from ._tuning import interpreting
from ._launch import launch

__all__ = ["routed_fwd", "LOG2E"]

LOG2E = 1.4426950408889634  # scores are kept in base 2: exp(x) == exp2(x * LOG2E)

# (BLOCK_M query rows, BLOCK_N key columns)
_BLOCKS = [(16, 16), (16, 32), (16, 64), (16, 128), (32, 32), (32, 64), (64, 32), (64, 64), (128, 64)]


@triton.autotune(
    configs=tile_configs(_BLOCKS, "BLOCK_M", "BLOCK_N"),
    key=["TP", "TOPK", "BLOCK_D", "BLOCK_DV"],
    prune_configs_by={"early_config_prune": layout_pruner("BLOCK_M", "BLOCK_N", "TOPK", interpreting(), "fwd")},
)
@triton.jit
def _routed_fwd_kernel(
    Q, K, V, IDX, OUT, LSE,
    stride_qb, stride_qh, stride_qw, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kw, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vw, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_ow, stride_on, stride_od,
    stride_lb, stride_lh, stride_lw, stride_ln,
    stride_ib, stride_ir, stride_ik,
    HEADS, H, W, N_WIN, RH, RW, T, R, TOPK, HEAD_DIM, V_DIM,
    qk_scale,  # softmax scale * log2(e)
    TP: tl.constexpr,  # next_pow2(tokens per region)
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, SLOTS: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    TOK_M = BLOCK_M // GROUPS  # token slots of one query region in this tile
    SHARE = BLOCK_N // GROUPS  # key columns per query region
    TOK_N = SHARE // SLOTS  # token slots of one routed region per step
    TILES_M = (TP + TOK_M - 1) // TOK_M  # tiles covering one region's tokens

    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HEADS).to(tl.int64)
    h = pid_bh % HEADS
    first_region = (pid // TILES_M) * GROUPS
    first_tok = (pid % TILES_M) * TOK_M

    # ---- stationary query tile: GROUPS regions x TOK_M tokens
    offs_m = tl.arange(0, BLOCK_M)
    row_grp = offs_m // TOK_M
    q_region = first_region + row_grp
    q_y, q_x, q_valid = region_tokens(q_region, first_tok + offs_m % TOK_M, N_WIN, RH, RW, T, H, W)
    q_valid = q_valid & (q_region < R)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < HEAD_DIM
    dv_ok = offs_dv < V_DIM
    q_ptrs = Q + b * stride_qb + h * stride_qn + q_y[:, None] * stride_qh + q_x[:, None] * stride_qw
    q = tl.load(q_ptrs + offs_d[None, :] * stride_qd,
                mask=q_valid[:, None] & d_ok[None, :], other=0.0)

    # ---- streamed key columns: group (query region) x routed-region slot x token
    offs_n = tl.arange(0, BLOCK_N)
    col_grp = offs_n // SHARE
    col_slot = (offs_n % SHARE) // TOK_N
    col_tok = offs_n % TOK_N
    col_qregion = tl.minimum(first_region + col_grp, R - 1)  # clamp: padded groups read a real index row
    idx_row = IDX + b * stride_ib + col_qregion * stride_ir
    if GROUPS > 1:
        pair_ok = row_grp[:, None] == col_grp[None, :]
    else:
        pair_ok = offs_m[:, None] >= 0

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for j0 in range(0, TOPK, SLOTS):
        slot = j0 + col_slot
        slot_ok = slot < TOPK
        k_region = tl.load(idx_row + slot * stride_ik, mask=slot_ok, other=0)
        for n0 in range(0, T, TOK_N):
            k_tok = n0 + col_tok
            k_y, k_x, k_valid = region_tokens(k_region, k_tok, N_WIN, RH, RW, T, H, W)
            k_valid = k_valid & slot_ok
            k_ptrs = K + b * stride_kb + h * stride_kn + k_y[:, None] * stride_kh + k_x[:, None] * stride_kw
            k = tl.load(k_ptrs + offs_d[None, :] * stride_kd,
                        mask=k_valid[:, None] & d_ok[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            s = tl.where(pair_ok & k_valid[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing valid yet stay at zero
            alpha = tl.math.exp2(m_i - m_safe)
            p = tl.math.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v_ptrs = V + b * stride_vb + h * stride_vn + k_y[:, None] * stride_vh + k_x[:, None] * stride_vw
            v = tl.load(v_ptrs + offs_dv[None, :] * stride_vd,
                        mask=k_valid[:, None] & dv_ok[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
            m_i = m_new

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    # +inf for a row that saw no key makes the backward's exp2(s - lse) exactly zero there
    lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("inf"))
    o_ptrs = OUT + b * stride_ob + h * stride_on + q_y[:, None] * stride_oh + q_x[:, None] * stride_ow
    tl.store(o_ptrs + offs_dv[None, :] * stride_od, out.to(OUT.dtype.element_ty),
             mask=q_valid[:, None] & dv_ok[None, :])
    tl.store(LSE + b * stride_lb + h * stride_ln + q_y * stride_lh + q_x * stride_lw, lse, mask=q_valid)


def routed_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    n_win: int,
    scale: float,
    config: Optional[dict] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Routed attention forward. q, k: (B, H, W, heads, d); v: (B, H, W, heads, d_v), one dtype; index:
    (B, n_win**2, topk) int32 or int64 routed key regions per query region (any strides). Returns out (q's dtype)
    and the base-2 log-sum-exp (B, H, W, heads) float32. ``config`` (BLOCK_M, BLOCK_N, GROUPS, SLOTS, num_warps)
    bypasses autotuning (tests)."""
    batch, height, width, heads, head_dim = q.shape
    v_dim = v.shape[-1]
    rh, rw = -(-height // n_win), -(-width // n_win)
    tokens, regions, topk = rh * rw, n_win * n_win, index.shape[-1]
    out = torch.empty(q.shape[:4] + (v_dim,), device=q.device, dtype=q.dtype)
    lse = torch.empty(q.shape[:4], device=q.device, dtype=torch.float32)
    tp = next_pow2(tokens)

    def grid(meta):
        tok_m = meta["BLOCK_M"] // meta["GROUPS"]
        return (cdiv(regions, meta["GROUPS"]) * cdiv(tp, tok_m), batch * heads)

    args = (
        q, k, v, index, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(), *index.stride(),
        heads, height, width, n_win, rh, rw, tokens, regions, topk, head_dim, v_dim,
        scale * LOG2E,
    )
    consts = dict(TP=tp, BLOCK_D=max(MIN_DOT, next_pow2(head_dim)), BLOCK_DV=max(MIN_DOT, next_pow2(v_dim)),
                  DOT_PREC=dot_precision(q.dtype))
    if config is None:
        launch(_routed_fwd_kernel, grid, *args, **consts)
    else:
        cfg = dict(config)
        warps = cfg.pop("num_warps", 4)
        launch(_routed_fwd_kernel.fn, grid(cfg), *args, **consts, **cfg, num_warps=warps)
    return out, lse
