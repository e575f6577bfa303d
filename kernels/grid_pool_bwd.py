"""Backward of :mod:`.grid_pool_fwd`, accumulated in place, for up to two gradients of the pooled tokens:

    grad_x[b, h, n, :] += (grad_a[b, h, bin(n), :] + grad_b[b, h, bin(n), :]) / (bh * bw)

grad_x (B, H, N = h * w, D) and grad_a, grad_b (B, H, ph * pw, D) in any strides; (H, D) walked as one channel axis
as in the forward. Bins of 1 x 1 (ph, pw = h, w) make it ``grad_x += grad_a + grad_b``.

Why: the pooled tokens of Agent attention get two gradients (as the agents' queries and as the queries' keys), and
q gets the pooling's backward on top of its own. Composed, that is an add of the two, the expand of ``mean``'s
backward (a 7-d broadcast that ran torch's non-vectorized elementwise kernel: 47 us at Agent-Swin-T stage 3, batch
128, on the H100) and an add into q's gradient. One pass reads grad_x and the two small gradients and writes grad_x,
summing in fp32 with one rounding.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from ._launch import launch
from .grid_pool_fwd import NUM_WARPS, _block_channels, check_equal_bins

__all__ = ["grid_pool_bwd_add"]

BLOCK_TOKENS = 32  # grid tokens per program


@triton.jit
def _grid_pool_bwd_add_kernel(
    GradX, GradA, GradB,
    stride_xb, stride_xh, stride_xn, stride_xd,
    stride_ab, stride_ah, stride_an, stride_ad,
    stride_bb, stride_bh, stride_bn, stride_bd,
    N, W, PW, CHANNELS, area,
    HEAD_DIM: tl.constexpr, BIN_H: tl.constexpr, BIN_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    tokens = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # grid token index y * w + x
    channels = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (tokens < N)[:, None] & (channels < CHANNELS)[None, :]
    head, dim = channels // HEAD_DIM, channels % HEAD_DIM
    pooled = (tokens // W // BIN_H) * PW + (tokens % W) // BIN_W  # the bin each token falls in
    g = tl.load(GradA + b * stride_ab + pooled[:, None] * stride_an + (head * stride_ah + dim * stride_ad)[None, :],
                mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        g += tl.load(GradB + b * stride_bb + pooled[:, None] * stride_bn
                     + (head * stride_bh + dim * stride_bd)[None, :], mask=mask, other=0.0).to(tl.float32)
    x_ptrs = GradX + b * stride_xb + tokens[:, None] * stride_xn + (head * stride_xh + dim * stride_xd)[None, :]
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(x_ptrs, (x + g / area).to(GradX.dtype.element_ty), mask=mask)


def grid_pool_bwd_add(grad_x: torch.Tensor, grad_a: torch.Tensor, grad_b: Optional[torch.Tensor],
                      size: Tuple[int, int], pooled: Tuple[int, int]) -> torch.Tensor:
    """``grad_x += pool_backward(grad_a + grad_b)`` in place (``grad_b`` may be None); returns grad_x."""
    bin_h, bin_w = check_equal_bins(size, pooled, "grid_pool_bwd_add")
    batch, heads, n, head_dim = grad_x.shape
    n_pooled = pooled[0] * pooled[1]
    for name, g in (("grad_a", grad_a), ("grad_b", grad_b)):
        if g is not None and tuple(g.shape) != (batch, heads, n_pooled, head_dim):
            raise ValueError(f"grid_pool_bwd_add: {name} must be {(batch, heads, n_pooled, head_dim)}, got "
                             f"{tuple(g.shape)}")
    if n != size[0] * size[1]:
        raise ValueError(f"grid_pool_bwd_add: grad_x must have h*w = {size[0] * size[1]} tokens, got {n}")
    channels = heads * head_dim
    block_c = _block_channels(channels)
    other = grad_b if grad_b is not None else grad_a  # never read when HAS_B is False
    launch(_grid_pool_bwd_add_kernel, (cdiv(n, BLOCK_TOKENS), cdiv(channels, block_c), batch),
           grad_x, grad_a, other, *grad_x.stride(), *grad_a.stride(), *other.stride(), n, size[1], pooled[1],
           channels, float(bin_h * bin_w),
           HEAD_DIM=head_dim, BIN_H=bin_h, BIN_W=bin_w, HAS_B=grad_b is not None, BLOCK_T=BLOCK_TOKENS,
           BLOCK_C=block_c, num_warps=NUM_WARPS)
    return grad_x
