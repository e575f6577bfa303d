"""Depthwise KxK convolution of an NHWC map with zero padding given per side, a per-channel bias and an optional
tanh-approximated GELU, in one pass (inference: no backward).

Why: MaxViT's MBConv runs ``dwconv -> BatchNorm -> GELU`` and, in its stride-2 blocks, pads the 4x-expanded map
with TensorFlow's asymmetric "same" padding first. torch runs that as four full passes over the largest tensors of
the network (``F.pad`` alone wrote 1.6 GB per stage-1 call at batch 256 through the non-vectorized copy kernel).
With the BatchNorm folded into ``weight`` and ``bias`` this kernel reads the unpadded map once (taps outside it
read as zero) and writes the activated output once.

Tiling: one program computes ``BLOCK_W`` output columns x ``BLOCK_C`` channels of one output row of one image; each
of the ``K * K`` taps is a [BLOCK_W, BLOCK_C] load of channel-contiguous rows (neighbouring taps hit L1/L2). The
sum, bias and GELU are fp32; the output is written in ``out``'s dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._activation import apply_act
from ._intmath import cdiv
from ._launch import launch
from ._tuning import mode_pruner

__all__ = ["depthwise_conv_fwd", "ACTIVATIONS"]

ACTIVATIONS = ("none", "gelu_tanh")
INTERPRET_BLOCKS = (4, 16)  # (BLOCK_W, BLOCK_C) under the CPU interpreter: several programs on tiny test maps
# (BLOCK_W output columns, BLOCK_C channels, warps)
_TILES = ((16, 128, 4), (8, 128, 4), (16, 64, 4), (32, 64, 4), (8, 64, 4), (4, 128, 4), (16, 256, 8), (32, 128, 8),
          (64, 32, 4))
# Untuned tile (autotuning off): the H100 winners at MaxViT-T's eight MBConv shapes (batch 256, bf16; kernels/README.md,
# "Fifteenth run"): (16, 128) on maps wider than 8 columns, within 4 % of the best everywhere; (8, 128) on 7x7 maps,
# where 16 columns would idle half the tile (107 against 155 us).
UNTUNED_BLOCK_C = 128
UNTUNED_BLOCK_W = 16
NARROW_BLOCK_W = 8


def _configs():
    return [triton.Config({"BLOCK_W": w, "BLOCK_C": c}, num_warps=warps, num_stages=2) for w, c, warps in _TILES]


def _untuned_config(configs, args):
    """The untuned tile for this map width (comment above), else the first config."""
    block_w = NARROW_BLOCK_W if int(args["W_OUT"]) <= NARROW_BLOCK_W else UNTUNED_BLOCK_W
    chosen = [c for c in configs if c.kwargs["BLOCK_W"] == block_w and c.kwargs["BLOCK_C"] == UNTUNED_BLOCK_C]
    return chosen[0] if chosen else configs[0]


_prune = mode_pruner(triton.Config({"BLOCK_W": INTERPRET_BLOCKS[0], "BLOCK_C": INTERPRET_BLOCKS[1]}, num_warps=4,
                                   num_stages=1), untuned=_untuned_config)


@triton.jit
def pixel_row_tile(width, C, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of a (row x column-block, image, channel-block) grid over a map ``width`` pixels wide:
    (image b as int64, row, the BLOCK_W columns and their in-bounds mask, the BLOCK_C channels and theirs). Shared by
    the depthwise kernels that own one row of the map they write."""
    col_blocks = (width + BLOCK_W - 1) // BLOCK_W
    pid_row = tl.program_id(0)
    row = pid_row // col_blocks
    cols = (pid_row % col_blocks) * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    return tl.program_id(1).to(tl.int64), row, cols, cols < width, cs, cs < C


@triton.autotune(configs=_configs(), key=["C", "W_OUT", "STRIDE", "K"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _depthwise_conv_fwd_kernel(
    X, WEIGHT, BIAS, OUT,
    stride_xb, stride_xh, stride_xw,  # channel stride 1
    stride_ob, stride_oh, stride_ow,  # channel stride 1
    H, W, C, H_OUT, W_OUT, PAD_TOP, PAD_LEFT,
    K: tl.constexpr, STRIDE: tl.constexpr, ACT: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b, oh, ow, ow_ok, cs, c_ok = pixel_row_tile(W_OUT, C, BLOCK_W, BLOCK_C)

    acc = tl.zeros([BLOCK_W, BLOCK_C], tl.float32)
    x_img = X + b * stride_xb
    for kh in tl.static_range(K):
        ih = oh * STRIDE - PAD_TOP + kh
        row_ok = (ih >= 0) & (ih < H)
        for kw in tl.static_range(K):
            iw = ow * STRIDE - PAD_LEFT + kw
            ok = (row_ok & (iw >= 0) & (iw < W) & ow_ok)[:, None] & c_ok[None, :]
            x = tl.load(x_img + ih * stride_xh + iw[:, None] * stride_xw + cs[None, :], mask=ok, other=0.0)
            w = tl.load(WEIGHT + (kh * K + kw) * C + cs, mask=c_ok, other=0.0)
            acc += x.to(tl.float32) * w[None, :]
    acc += tl.load(BIAS + cs, mask=c_ok, other=0.0)[None, :]
    acc = apply_act(acc, ACT)
    out_ptrs = OUT + b * stride_ob + oh * stride_oh + ow[:, None] * stride_ow + cs[None, :]
    tl.store(out_ptrs, acc.to(OUT.dtype.element_ty), mask=ow_ok[:, None] & c_ok[None, :])


def depthwise_conv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, pad_top: int,
                       pad_left: int, out_hw: tuple, act: str, out_dtype: torch.dtype) -> torch.Tensor:
    """x: (B, H, W, C) with channel stride 1 (any other strides); weight: (K*K, C) fp32 contiguous, tap-major
    (``kh * K + kw``); bias: (C,) fp32. Output (B, H_out, W_out, C) contiguous in ``out_dtype``: output pixel (oh, ow)
    sums input pixels (oh * stride - pad_top + kh, ow * stride - pad_left + kw), zero outside the map."""
    batch, height, width, channels = x.shape
    taps = weight.shape[0]
    k = int(round(taps ** 0.5))
    if k * k != taps or weight.shape != (taps, channels) or bias.shape != (channels,):
        raise ValueError(f"depthwise_conv_fwd: weight must be (K*K, C) and bias (C,) for C = {channels}, got "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    if channels > 1 and x.stride(3) != 1:
        raise ValueError(f"depthwise_conv_fwd: x needs channel stride 1 (an NHWC view), got strides {x.stride()}")
    if act not in ACTIVATIONS:
        raise ValueError(f"depthwise_conv_fwd: act must be one of {ACTIVATIONS}, got {act!r}")
    h_out, w_out = out_hw
    out = torch.empty((batch, h_out, w_out, channels), device=x.device, dtype=out_dtype)
    if out.numel() == 0:
        return out

    def grid(meta):
        return (h_out * cdiv(w_out, meta["BLOCK_W"]), batch, cdiv(channels, meta["BLOCK_C"]))

    launch(_depthwise_conv_fwd_kernel, grid, x, weight, bias, out, x.stride(0), x.stride(1), x.stride(2),
           out.stride(0), out.stride(1), out.stride(2), height, width, channels, h_out, w_out, pad_top, pad_left,
           K=k, STRIDE=stride, ACT=act)
    return out
