"""Input gradient of a depthwise KxK convolution of an NHWC map with per-side zero padding (forward:
``depthwise_conv_fwd.py``): ``dx[b, ih, iw, c] = sum over taps (kh, kw) of dy[b, oh, ow, c] * w[kh, kw, c]`` where
``oh * STRIDE - PAD_TOP + kh = ih`` and ``ow * STRIDE - PAD_LEFT + kw = iw``.

Why: cuDNN's depthwise convolutions take symmetric padding only, so timm pads every stride-2 TensorFlow-"same" map
with a copy first (its backward slices the gradient back out, another copy); with the padding read implicitly here
and in the forward, neither copy exists. Tiling: one program computes ``BLOCK_W`` input columns x ``BLOCK_C``
channels of one input row of one image; each tap contributes where its output position is an integer inside the
output map (for stride 2, every other column), read as a [BLOCK_W, BLOCK_C] gather of channel-contiguous rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from ._launch import launch
from ._tuning import mode_pruner
from .depthwise_conv_fwd import pixel_row_tile

__all__ = ["depthwise_conv_bwd_input"]

INTERPRET_BLOCKS = (4, 16)  # (BLOCK_W, BLOCK_C) under the CPU interpreter
# (BLOCK_W input columns, BLOCK_C channels, warps); the first is the untuned default
_TILES = ((16, 128, 4), (32, 64, 4), (8, 128, 4), (16, 64, 4), (32, 128, 8), (16, 256, 8), (64, 32, 4))


def _configs():
    return [triton.Config({"BLOCK_W": w, "BLOCK_C": c}, num_warps=warps, num_stages=2) for w, c, warps in _TILES]


@triton.autotune(configs=_configs(), key=["C", "W", "STRIDE", "K"], prune_configs_by={
    "early_config_prune": mode_pruner(triton.Config({"BLOCK_W": INTERPRET_BLOCKS[0], "BLOCK_C": INTERPRET_BLOCKS[1]},
                                                    num_warps=4, num_stages=1))})
@triton.jit
def _depthwise_conv_bwd_input_kernel(
    DY, WEIGHT, DX,  # WEIGHT: (K*K, C) fp32, tap-major
    stride_yb, stride_yh, stride_yw,  # channel stride 1
    stride_xb, stride_xh, stride_xw,  # channel stride 1
    H, W, C, H_OUT, W_OUT, PAD_TOP, PAD_LEFT,
    K: tl.constexpr, STRIDE: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b, ih, iw, iw_ok, cs, c_ok = pixel_row_tile(W, C, BLOCK_W, BLOCK_C)  # one input row

    acc = tl.zeros([BLOCK_W, BLOCK_C], tl.float32)
    dy_img = DY + b * stride_yb
    for kh in tl.static_range(K):
        oh_num = ih + PAD_TOP - kh  # oh * STRIDE when this tap reaches row ih
        oh = oh_num // STRIDE
        row_ok = (oh_num >= 0) & (oh_num - oh * STRIDE == 0) & (oh < H_OUT)
        for kw in tl.static_range(K):
            ow_num = iw + PAD_LEFT - kw
            ow = ow_num // STRIDE
            col_ok = (ow_num >= 0) & (ow_num - ow * STRIDE == 0) & (ow < W_OUT) & iw_ok
            ok = (row_ok & col_ok)[:, None] & c_ok[None, :]
            dy = tl.load(dy_img + oh * stride_yh + ow[:, None] * stride_yw + cs[None, :], mask=ok, other=0.0)
            w = tl.load(WEIGHT + (kh * K + kw) * C + cs, mask=c_ok, other=0.0)
            acc += dy.to(tl.float32) * w[None, :]
    dx_ptrs = DX + b * stride_xb + ih * stride_xh + iw[:, None] * stride_xw + cs[None, :]
    tl.store(dx_ptrs, acc.to(DX.dtype.element_ty), mask=iw_ok[:, None] & c_ok[None, :])


def depthwise_conv_bwd_input(dy: torch.Tensor, weight: torch.Tensor, stride: int, pad_top: int, pad_left: int,
                             in_hw: tuple, out_dtype: torch.dtype) -> torch.Tensor:
    """dy: (B, H_out, W_out, C) with channel stride 1; weight: (K*K, C) fp32 contiguous, tap-major. Returns dx
    (B, H, W, C) contiguous in ``out_dtype`` for the forward's stride and top / left padding on an (H, W) map."""
    batch, h_out, w_out, channels = dy.shape
    taps = weight.shape[0]
    k = int(round(taps ** 0.5))
    if k * k != taps or weight.shape != (taps, channels):
        raise ValueError(f"depthwise_conv_bwd_input: weight must be (K*K, C) for C = {channels}, got "
                         f"{tuple(weight.shape)}")
    if channels > 1 and dy.stride(3) != 1:
        raise ValueError(f"depthwise_conv_bwd_input: dy needs channel stride 1 (an NHWC view), got {dy.stride()}")
    height, width = in_hw
    dx = torch.empty((batch, height, width, channels), device=dy.device, dtype=out_dtype)
    if dx.numel() == 0:
        return dx

    def grid(meta):
        return (height * cdiv(width, meta["BLOCK_W"]), batch, cdiv(channels, meta["BLOCK_C"]))

    launch(_depthwise_conv_bwd_input_kernel, grid, dy, weight, dx, dy.stride(0), dy.stride(1), dy.stride(2),
           dx.stride(0), dx.stride(1), dx.stride(2), height, width, channels, h_out, w_out, pad_top, pad_left,
           K=k, STRIDE=stride)
    return dx
