"""Forward of dense attention with a broadcastable additive bias (flash-attention style, one pass over the keys):

    out[b, h] = softmax(scale * q[b, h] @ k[b, h]^T + bias[b, h]) @ v[b, h],   lse = logsumexp of the logits (base 2)

q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, DV) in any strides; the bias is read through its broadcast strides
(stride 0 on a broadcast batch/head dim), never expanded in memory. Any Lq, Lk (masked tiles), D, DV in
SUPPORTED_HEAD_DIMS. Online softmax in fp32 (base-2 exponentials with log2(e) folded into the scale).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from ._biased_attention_common import (LOG2E, LOG2E_PY, bias_strides, check_head_dims, forward_default_tiles,
                                       make_configs, make_pruner)
from ._launch import launch
from ._layout import empty_in_layout_of

__all__ = ["biased_attention_fwd"]

# (BLOCK_M, BLOCK_N, warps, stages): BLOCK_M = 16 serves the agent side (Lq = agents), BLOCK_N = 16 the query side.
# (64, 16) with 3 stages comes before its 2-stage twin, so the untuned default (the first of equal tiles) pipelines
# its short key loop: H100, bf16, batch 128, us, 3 against 2 stages: Agent-Swin-T stage 3 agents 38.3 / 43.1, queries
# 59.5 / 60.1, stage 4 31.4 / 32.2, stage 2 queries 50.2 / 48.3 (`h100_biased_fwd_stages_2026-11-24o.txt`).
_CONFIGS = ((16, 16, 4, 2), (16, 64, 4, 2), (16, 128, 4, 2), (16, 128, 4, 3), (32, 64, 4, 2), (64, 16, 4, 3),
            (64, 16, 4, 2), (64, 32, 4, 3), (64, 32, 4, 2), (64, 64, 4, 2), (128, 16, 8, 2), (128, 32, 8, 2),
            (128, 64, 8, 3))


@triton.autotune(
    configs=make_configs(_CONFIGS),
    key=["Lq", "Lk", "HEAD_DIM", "V_DIM", "HAS_BIAS"],
    prune_configs_by={"early_config_prune": make_pruner("Lq", "Lk", "BLOCK_M", "BLOCK_N", forward_default_tiles)},
)
@triton.jit
def _biased_attention_fwd_kernel(
    Q, K, V, Bias, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_bb, stride_bh, stride_bm, stride_bn,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh,
    H, Lq, Lk, qk_scale_log2,
    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, V_DIM)
    row_ok = offs_m < Lq

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)
    # pointers of the first key tile, advanced by one tile per iteration (no per-iteration index arithmetic);
    # k is read transposed (D, BLOCK_N) so the product needs no in-register transpose
    kt_ptrs = K + b * stride_kb + h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
    bias_ptrs = Bias + b * stride_bb + h * stride_bh + offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, V_DIM), tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        col_ok = offs_n < Lk - start_n
        kt = tl.load(kt_ptrs, mask=col_ok[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision="ieee") * qk_scale_log2
        if HAS_BIAS:
            bias = tl.load(bias_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
            s += bias.to(tl.float32) * LOG2E
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row whose logits so far are all -inf (a -inf mask in the bias) must not produce exp2(-inf - -inf)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
        kt_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
        bias_ptrs += BLOCK_N * stride_bn

    out = acc / l_i[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lse + b * stride_lb + h * stride_lh + offs_m, m_i + tl.log2(l_i), mask=row_ok)


def biased_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                         scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward. q, k, v share one dtype; ``bias`` is None or 4-D (1|B, 1|H, Lq, Lk) in any float dtype.

    Returns ``out`` (B, H, Lq, DV) in q's dtype and memory order (:func:`~._layout.empty_in_layout_of`) and ``lse``
    (B, H, Lq) fp32 in base-2 units (for the backward).
    """
    batch, heads, lq, head_dim = q.shape
    lk, v_dim = k.shape[2], v.shape[3]
    check_head_dims(head_dim, v_dim)
    out = empty_in_layout_of(q, (batch, heads, lq, v_dim))  # token-major q gives a token-major out: a free reshape
    lse = torch.empty(batch, heads, lq, device=q.device, dtype=torch.float32)
    bias_arg = bias if bias is not None else q  # never read when HAS_BIAS is False

    def grid(meta):
        return cdiv(lq, meta["BLOCK_M"]), batch * heads

    launch(_biased_attention_fwd_kernel, grid,
        q, k, v, bias_arg, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *bias_strides(bias, batch, heads, lq, lk), *out.stride(),
        lse.stride(0), lse.stride(1),
        heads, lq, lk, scale * LOG2E_PY,
        HEAD_DIM=head_dim, V_DIM=v_dim, HAS_BIAS=bias is not None,
    )
    return out, lse
