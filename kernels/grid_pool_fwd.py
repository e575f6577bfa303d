"""Mean pooling of a token grid over equal, disjoint bins (the agent tokens of Agent attention, pooled from q):

    out[b, h, i * pw + j, :] = mean(x[b, h, (i * bh + r) * w + j * bw + s, :] for r < bh, s < bw)

x (B, H, N = h * w, D) in any strides (tokens row-major on the (h, w) grid), bins (bh, bw) = (h / ph, w / pw). The
(H, D) pair is walked as one channel axis of H * D, so head-split views of a token-major projection ((B, N, H, D) in
memory) are read in contiguous rows. fp32 sums, one division by the bin area (as ``mean``), stored in x's dtype.

Why a kernel: torch's strided ``mean`` over the 7-d view of the head-split q took 26 us at Agent-Swin-T stage 3
(batch 128, 19 MB read) on the H100, about 4x its bandwidth floor.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._intmath import cdiv, next_pow2
from ._launch import launch
from ._layout import empty_in_layout_of
from ._tuning import interpreting

__all__ = ["grid_pool_fwd", "check_equal_bins"]

BLOCK_TOKENS = 16  # pooled tokens per program
MAX_BLOCK_CHANNELS = 128  # channels (of H * D) per program: 16 x 128 fp32 sums in registers
INTERPRET_BLOCK_CHANNELS = 16  # several channel blocks on the interpreter's tiny test tensors
NUM_WARPS = 4


@triton.jit
def _grid_pool_fwd_kernel(
    X, Out,
    stride_xb, stride_xh, stride_xn, stride_xd,
    stride_ob, stride_oh, stride_on, stride_od,
    W, PW, N_POOLED, CHANNELS, area,
    HEAD_DIM: tl.constexpr, BIN_H: tl.constexpr, BIN_W: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    tokens = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # pooled token index i * pw + j
    channels = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # h * D + d
    mask = (tokens < N_POOLED)[:, None] & (channels < CHANNELS)[None, :]
    head, dim = channels // HEAD_DIM, channels % HEAD_DIM
    x_channel = head * stride_xh + dim * stride_xd
    # top-left token of each bin on the (h, w) grid
    corner = (tokens // PW) * BIN_H * W + (tokens % PW) * BIN_W
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for r in tl.static_range(BIN_H):
        for s in tl.static_range(BIN_W):
            rows = corner + r * W + s
            acc += tl.load(X + b * stride_xb + rows[:, None] * stride_xn + x_channel[None, :], mask=mask,
                           other=0.0).to(tl.float32)
    out_ptrs = Out + b * stride_ob + tokens[:, None] * stride_on + (head * stride_oh + dim * stride_od)[None, :]
    tl.store(out_ptrs, (acc / area).to(Out.dtype.element_ty), mask=mask)


def check_equal_bins(size: Tuple[int, int], pooled: Tuple[int, int], op: str) -> Tuple[int, int]:
    """(bh, bw), the bin sizes; raises unless the pooled grid divides the token grid."""
    (h, w), (ph, pw) = size, pooled
    if min(h, w, ph, pw) < 1 or h % ph or w % pw:
        raise ValueError(f"{op}: pooled grid {pooled} must divide the token grid {size} (equal bins)")
    return h // ph, w // pw


def _block_channels(channels: int) -> int:
    return min(next_pow2(channels), INTERPRET_BLOCK_CHANNELS if interpreting() else MAX_BLOCK_CHANNELS)


def grid_pool_fwd(x: torch.Tensor, size: Tuple[int, int], pooled: Tuple[int, int]) -> torch.Tensor:
    """Mean of x (B, H, h * w, D) over equal (h / ph, w / pw) bins -> (B, H, ph * pw, D) in x's dtype and memory
    order (:func:`~._layout.empty_in_layout_of`)."""
    bin_h, bin_w = check_equal_bins(size, pooled, "grid_pool_fwd")
    batch, heads, n, head_dim = x.shape
    if n != size[0] * size[1]:
        raise ValueError(f"grid_pool_fwd: x must have h*w = {size[0] * size[1]} tokens, got {n}")
    n_pooled, channels = pooled[0] * pooled[1], heads * head_dim
    out = empty_in_layout_of(x, (batch, heads, n_pooled, head_dim))
    block_c = _block_channels(channels)
    # bins of 1 x 1 would make the kernel a copy; the callers skip the pooling there
    launch(_grid_pool_fwd_kernel, (cdiv(n_pooled, BLOCK_TOKENS), cdiv(channels, block_c), batch),
           x, out, *x.stride(), *out.stride(), size[1], pooled[1], n_pooled, channels, float(bin_h * bin_w),
           HEAD_DIM=head_dim, BIN_H=bin_h, BIN_W=bin_w, BLOCK_T=BLOCK_TOKENS, BLOCK_C=block_c, num_warps=NUM_WARPS)
    return out
