"""Backward pre-pass of biased dense attention: delta[b, h, i] = sum_c dout[b, h, i, c] * out[b, h, i, c] in fp32
(the softmax-backward row term dS = P * (dP - delta)); one read of out and dout, no full-size temporary."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from ._intmath import cdiv
from ._launch import launch

__all__ = ["biased_attention_bwd_delta"]

_ROWS = 64  # rows per program: (64, V_DIM <= 64) fp32 tiles, a few registers per thread


@triton.jit
def _biased_attention_bwd_delta_kernel(
    Out, DOut, Delta,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_db, stride_dh,
    H, Lq,
    V_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, V_DIM)
    row_ok = offs_m < Lq
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DOut + b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gm + offs_dv[None, :] * stride_gd,
                 mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + b * stride_db + h * stride_dh + offs_m, delta, mask=row_ok)


def biased_attention_bwd_delta(out: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """(B, H, Lq) fp32 row dot products of ``out`` and ``grad_out`` (both (B, H, Lq, DV), any strides)."""
    batch, heads, lq, v_dim = out.shape
    delta = torch.empty(batch, heads, lq, device=out.device, dtype=torch.float32)
    grid = (cdiv(lq, _ROWS), batch * heads)
    launch(_biased_attention_bwd_delta_kernel, grid,
        out, grad_out, delta, *out.stride(), *grad_out.stride(), delta.stride(0), delta.stride(1), heads, lq,
        V_DIM=v_dim, BLOCK_M=_ROWS,
    )
    return delta
