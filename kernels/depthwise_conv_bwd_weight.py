"""Weight (and bias) gradient of a depthwise KxK convolution of an NHWC map with per-side zero padding (forward:
``depthwise_conv_fwd.py``): ``dw[kh, kw, c] = sum over (b, oh, ow) of dy[b, oh, ow, c] * x[b, oh * STRIDE - PAD_TOP +
kh, ow * STRIDE - PAD_LEFT + kw, c]`` (zero outside the map), ``dbias[c] = sum of dy``.

Tiling: each program owns a contiguous chunk of output rows (image-major (b, oh) pairs, a few programs per SM) and
``BLOCK_C`` channels. It walks its rows in [BLOCK_W, BLOCK_C] tiles of dy and, for all taps at once, the matching
[TAPS, BLOCK_W, BLOCK_C] gather of x (taps padded to a power of two and masked; neighbouring taps hit L1), adding
``x * dy`` into one fp32 register tile per tap; the cross-column reduction runs once at the end. Each program writes
its (TAPS + 1, C) partial row (the last one is the bias); the launcher sums the rows (deterministic, no atomics).
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._intmath import cdiv, next_pow2
from ._launch import launch
from ._row_chunks import row_programs
from ._tuning import interpreting, mode_pruner

__all__ = ["depthwise_conv_bwd_weight"]

INTERPRET_BLOCKS = (4, 16)  # (BLOCK_W, BLOCK_C) under the CPU interpreter
# (BLOCK_W output columns, BLOCK_C channels, warps); the first is the untuned default. The per-tap accumulators
# take TAPS_PAD x BLOCK_W x BLOCK_C fp32 values: 16 x 8 x 64 = 64 registers per thread at 4 warps for K = 3.
_TILES = ((8, 64, 4), (8, 128, 8), (16, 64, 8), (4, 128, 4), (16, 32, 4))
WIDEST_BLOCK_C = max(c for _, c, _ in _TILES)


def _configs():
    return [triton.Config({"BLOCK_W": w, "BLOCK_C": c}, num_warps=warps, num_stages=2) for w, c, warps in _TILES]


@triton.autotune(configs=_configs(), key=["C", "W_OUT", "ROWS_PER_PROGRAM", "STRIDE", "K"], prune_configs_by={
    "early_config_prune": mode_pruner(triton.Config({"BLOCK_W": INTERPRET_BLOCKS[0], "BLOCK_C": INTERPRET_BLOCKS[1]},
                                                    num_warps=4, num_stages=1))})
@triton.jit
def _depthwise_conv_bwd_weight_kernel(
    X, DY, PARTS,  # PARTS: (programs, TAPS_PAD + 1, C) fp32; row TAPS_PAD is the bias gradient
    stride_xb, stride_xh, stride_xw,  # channel stride 1
    stride_yb, stride_yh, stride_yw,  # channel stride 1
    H, W, C, H_OUT, W_OUT, PAD_TOP, PAD_LEFT,
    ROWS, ROWS_PER_PROGRAM,  # output rows = B * H_OUT
    K: tl.constexpr, STRIDE: tl.constexpr, TAPS_PAD: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    taps = tl.arange(0, TAPS_PAD)
    kh = taps // K
    kw = taps - kh * K
    tap_ok = taps < K * K
    acc = tl.zeros([TAPS_PAD, BLOCK_W, BLOCK_C], tl.float32)
    bias_acc = tl.zeros([BLOCK_W, BLOCK_C], tl.float32)
    row_start = pid * ROWS_PER_PROGRAM
    row_end = tl.minimum(row_start + ROWS_PER_PROGRAM, ROWS)
    for row in range(row_start, row_end):
        b = (row // H_OUT).to(tl.int64)
        oh = row % H_OUT
        ih = oh * STRIDE - PAD_TOP + kh  # [TAPS_PAD]
        for w0 in range(0, W_OUT, BLOCK_W):
            ow = w0 + tl.arange(0, BLOCK_W)
            ow_ok = ow < W_OUT
            dy_mask = ow_ok[:, None] & c_ok[None, :]
            dy = tl.load(DY + b * stride_yb + oh * stride_yh + ow[:, None] * stride_yw + cs[None, :], mask=dy_mask,
                         other=0.0).to(tl.float32)
            iw = ow[None, :] * STRIDE - PAD_LEFT + kw[:, None]  # [TAPS_PAD, BLOCK_W]
            ok = tap_ok[:, None] & (ih >= 0)[:, None] & (ih < H)[:, None] & (iw >= 0) & (iw < W) & ow_ok[None, :]
            x_ptrs = X + b * stride_xb + (ih[:, None] * stride_xh + iw * stride_xw)[:, :, None] + cs[None, None, :]
            x = tl.load(x_ptrs, mask=ok[:, :, None] & c_ok[None, None, :], other=0.0).to(tl.float32)
            acc += x * dy[None, :, :]
            bias_acc += dy
    part = PARTS + pid * (TAPS_PAD + 1) * C
    tl.store(part + taps[:, None] * C + cs[None, :], tl.sum(acc, axis=1), mask=tap_ok[:, None] & c_ok[None, :])
    tl.store(part + TAPS_PAD * C + cs, tl.sum(bias_acc, axis=0), mask=c_ok)


def depthwise_conv_bwd_weight(x: torch.Tensor, dy: torch.Tensor, k: int, stride: int, pad_top: int,
                              pad_left: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """x: (B, H, W, C) and dy: (B, H_out, W_out, C), channel stride 1. Returns (dweight (K*K, C) tap-major, dbias
    (C,)), both fp32."""
    batch, height, width, channels = x.shape
    _, h_out, w_out, _ = dy.shape
    if dy.shape[0] != batch or dy.shape[3] != channels:
        raise ValueError(f"depthwise_conv_bwd_weight: dy must be (B, H_out, W_out, C) for x {tuple(x.shape)}, got "
                         f"{tuple(dy.shape)}")
    if channels > 1 and (x.stride(3) != 1 or dy.stride(3) != 1):
        raise ValueError(f"depthwise_conv_bwd_weight: x and dy need channel stride 1, got {x.stride()}, "
                         f"{dy.stride()}")
    taps_pad = next_pow2(k * k)
    rows = batch * h_out
    if rows == 0 or w_out == 0:
        zeros = torch.zeros((k * k + 1, channels), device=x.device, dtype=torch.float32)
        return zeros[:-1], zeros[-1]
    interpret = interpreting() or x.device.type != "cuda"
    channel_blocks = cdiv(channels, INTERPRET_BLOCKS[1] if interpret else WIDEST_BLOCK_C)
    programs, per_program = row_programs(rows, channel_blocks, x.device, interpret)
    parts = torch.empty((programs, taps_pad + 1, channels), device=x.device, dtype=torch.float32)

    def grid(meta):
        return (programs, cdiv(channels, meta["BLOCK_C"]))

    launch(_depthwise_conv_bwd_weight_kernel, grid, x, dy, parts, x.stride(0), x.stride(1), x.stride(2),
           dy.stride(0), dy.stride(1), dy.stride(2), height, width, channels, h_out, w_out, pad_top, pad_left,
           rows, per_program, K=k, STRIDE=stride, TAPS_PAD=taps_pad)
    summed = parts.sum(0)
    return summed[:k * k], summed[taps_pad]
