"""Backward of DaViT's channel attention (``channel_attention_fwd.py``), per (batch, head), from the saved fp32
softmax ``attn`` (d x d):

    out = q @ attn^T,  attn = softmax(scale * S),  S = k^T @ v          (q, k, v, out: (N, d) per head)
    dq  = dout @ attn                        dA = dout^T @ q
    dS  = scale * attn * (dA - rowsum(dA * attn))
    dk  = v @ dS^T                           dv = k @ dS

One program per (batch, head), two passes over tiles of ``BLOCK_N`` tokens: the first reads dout and q, writes dq
and accumulates dA (fp32); the (d x d) softmax backward runs in registers; the second reads k and v and writes dk
and dv. Every tensor is read or written once, in place, through its strides (dq, dk, dv in the memory order of q, k,
v: token-major for views of a qkv projection). As in torch's autocast backward, attn and dS are cast to the input
dtype for the products.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._layout import empty_in_layout_of
from .channel_attention_fwd import check_inputs, make_configs, prune_configs

__all__ = ["channel_attention_bwd"]


@triton.autotune(configs=make_configs(), key=["N", "HEAD_DIM"], prune_configs_by={"early_config_prune": prune_configs})
@triton.jit
def _channel_attention_bwd_kernel(
    Q, K, V, Attn, DOut, DQ, DK, DV,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_gb, stride_gn, stride_gh, stride_gd,
    stride_dqb, stride_dqn, stride_dqh, stride_dqd,
    stride_dkb, stride_dkn, stride_dkh, stride_dkd,
    stride_dvb, stride_dvn, stride_dvh, stride_dvd,
    H, N, scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    attn = tl.load(Attn + pid * HEAD_DIM * HEAD_DIM + offs_d[:, None] * HEAD_DIM + offs_d[None, :])  # fp32 (i, j)
    attn_in = attn.to(Q.dtype.element_ty)

    # pass 1: dq = dout @ attn per tile; dA = dout^T @ q over all tiles
    g_base = DOut + b * stride_gb + h * stride_gh + offs_d[None, :] * stride_gd
    q_base = Q + b * stride_qb + h * stride_qh + offs_d[None, :] * stride_qd
    dq_base = DQ + b * stride_dqb + h * stride_dqh + offs_d[None, :] * stride_dqd
    d_attn = tl.zeros((HEAD_DIM, HEAD_DIM), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        rows = start + offs_n
        row_ok = rows[:, None] < N
        g = tl.load(g_base + rows[:, None] * stride_gn, mask=row_ok, other=0.0).to(Q.dtype.element_ty)
        q = tl.load(q_base + rows[:, None] * stride_qn, mask=row_ok, other=0.0)
        d_attn += tl.dot(tl.trans(g), q, input_precision="ieee")
        dq = tl.dot(g, attn_in, input_precision="ieee")
        tl.store(dq_base + rows[:, None] * stride_dqn, dq.to(DQ.dtype.element_ty), mask=row_ok)

    # softmax backward in registers: dS = scale * attn * (dA - rowsum(dA * attn))
    d_s = (scale * attn * (d_attn - tl.sum(d_attn * attn, 1)[:, None])).to(Q.dtype.element_ty)

    # pass 2: dk = v @ dS^T, dv = k @ dS per tile
    k_base = K + b * stride_kb + h * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + b * stride_vb + h * stride_vh + offs_d[None, :] * stride_vd
    dk_base = DK + b * stride_dkb + h * stride_dkh + offs_d[None, :] * stride_dkd
    dv_base = DV + b * stride_dvb + h * stride_dvh + offs_d[None, :] * stride_dvd
    for start in range(0, N, BLOCK_N):
        rows = start + offs_n
        row_ok = rows[:, None] < N
        k = tl.load(k_base + rows[:, None] * stride_kn, mask=row_ok, other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vn, mask=row_ok, other=0.0)
        dk = tl.dot(v, tl.trans(d_s), input_precision="ieee")
        dv = tl.dot(k, d_s, input_precision="ieee")
        tl.store(dk_base + rows[:, None] * stride_dkn, dk.to(DK.dtype.element_ty), mask=row_ok)
        tl.store(dv_base + rows[:, None] * stride_dvn, dv.to(DV.dtype.element_ty), mask=row_ok)


def channel_attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          attn: torch.Tensor, scale: float, grads: Optional[Tuple[torch.Tensor, ...]] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of :func:`~.channel_attention_fwd.channel_attention_fwd` from its saved fp32 ``attn``
    (B, heads, d, d); grad_out (B, N, heads, d) in any float dtype and strides. dq, dk, dv have q's dtype and the
    memory order of q, k, v, or are written into ``grads`` (any strides) when given."""
    batch, tokens, heads, head_dim = q.shape
    check_inputs(q, k, v)
    if grad_out.shape != q.shape or attn.shape != (batch, heads, head_dim, head_dim) or attn.dtype != torch.float32:
        raise ValueError(f"channel attention backward: grad_out must be {tuple(q.shape)} and attn fp32 "
                         f"{(batch, heads, head_dim, head_dim)}, got {tuple(grad_out.shape)}, {tuple(attn.shape)} "
                         f"{attn.dtype}")
    attn = attn.contiguous()
    dq, dk, dv = grads if grads is not None else (empty_in_layout_of(q), empty_in_layout_of(k), empty_in_layout_of(v))
    if dq.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    launch(_channel_attention_bwd_kernel, (batch * heads,),
           q, k, v, attn, grad_out, dq, dk, dv,
           *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride(), *dk.stride(), *dv.stride(),
           heads, tokens, float(scale), HEAD_DIM=head_dim)
    return dq, dk, dv
