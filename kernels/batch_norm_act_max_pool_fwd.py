"""Training BatchNorm's transform and activation fused into the max pooling that reads them (a ResNet stem's
``max_pool2d(act(bn(x)))``): per channel and output pixel

``out = max over the in-bounds window taps of y,  y = act((x - mean) * scale + beta)``

and ``argmax``, the winning tap ``kh * kernel_size + kw`` of each window (uint8), which routes the backward
(``max_pool_bwd.py``).

Why: torch writes the activated map y (the stem's largest tensor, stride**2 times the pooled one) and reads it back
for the pooling; here x is read once (the k * k overlapping taps of neighbouring windows mostly from cache) and only
the pooled map and its one-byte argmax are written. ``mean``, ``scale`` and ``beta`` come from the batch statistics
(``batch_norm_stats_merge.py``).

Exactness: y is computed in fp32 with ``batch_norm_act_fwd.py``'s expression and rounded to x's dtype before the
compare, because torch's max_pool2d sees the y that torch materialized in that dtype: the max, the argmax and the
tie rule are then torch's. Taps are visited in row-major window order (kh outer, kw inner) and a tap replaces the
best so far only if it is strictly greater or NaN (torch's ``val > maxval || isnan(val)``); padding taps are skipped,
and a window whose taps are all -inf keeps its first in-bounds tap, as torch's does. Floor mode, dilation 1.

Tiles are [BLOCK_M output pixels m = n * Ho * Wo + ho * Wo + wo, BLOCK_C channels]. Maps are read in the row layout
of ``_batch_norm_common.py`` (NCHW or channels_last, the GPU case: a tap's channels are contiguous); each tile needs
its rows' (n, ho, wo) for the window anyway, so the row-uniform shortcut buys nothing here.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._activation import ACTIVATIONS, apply_act
from ._batch_norm_common import (ELEMENTWISE_TILES, interpret_config, load_stats, map_strides, tile_configs,
                                 untuned_tile)
from ._intmath import cdiv
from ._launch import launch
from ._layout import empty_in_layout_of
from ._tuning import mode_pruner

__all__ = ["batch_norm_act_max_pool_fwd", "pool_geometry", "MAX_TAPS", "POOL_TILES"]

MAX_TAPS = 255  # kernel_size**2 at most: tap indices 0..254 fit the uint8 argmax, 255 is never a tap


def pool_geometry(kernel: str, kernel_size: int, stride: int, padding: int, height: int,
                  width: int) -> Tuple[int, int]:
    """(Ho, Wo) of a floor-mode, dilation-1 max pooling of an (H, W) map; ValueError naming the parameter unless
    kernel_size >= 1 with kernel_size**2 <= MAX_TAPS, stride >= 1, 0 <= padding <= kernel_size // 2 (torch's rule:
    every window then holds an in-bounds tap) and the padded map holds one window."""
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{kernel}: {name} must be an int, got {value!r}")
    if kernel_size < 1 or kernel_size * kernel_size > MAX_TAPS:
        raise ValueError(f"{kernel}: kernel_size must be >= 1 with kernel_size**2 <= {MAX_TAPS} (uint8 argmax), "
                         f"got {kernel_size}")
    if stride < 1:
        raise ValueError(f"{kernel}: stride must be >= 1, got {stride}")
    if padding < 0 or padding > kernel_size // 2:
        raise ValueError(f"{kernel}: padding must be in [0, kernel_size // 2 = {kernel_size // 2}], got {padding}")
    if min(height, width) + 2 * padding < kernel_size:
        raise ValueError(f"{kernel}: input size {(height, width)} padded by {padding} is smaller than kernel_size "
                         f"{kernel_size}")
    return ((height + 2 * padding - kernel_size) // stride + 1, (width + 2 * padding - kernel_size) // stride + 1)


# Tiles of both pooling kernels: the elementwise tiles plus narrow ones. On the H100 at HaloNet-26t's stem end (128 x
# 64 x 128^2 bf16, kernels/README.md, "Seventeenth run") (16, 64) on 2 warps took 223 us forward and 248 backward
# against 671 and 782 for the elementwise kernels' rule; at 24 channels (128, 32) was the best forward
POOL_TILES = ELEMENTWISE_TILES + ((16, 64, 2), (32, 64, 4))


def _untuned(configs, args):
    return untuned_tile(configs, args["C"], lambda c: (128, 32, 4) if c <= 32 else (16, 64, 2))


@triton.autotune(configs=tile_configs(POOL_TILES), key=["C", "ACT", "KERNEL", "STRIDE", "PADDING"],
                 prune_configs_by={"early_config_prune": mode_pruner(interpret_config(), untuned=_untuned)})
@triton.jit
def _batch_norm_act_max_pool_fwd_kernel(
    X, STATS, OUT, ARGMAX,  # STATS: (4, C) fp32 mean, invstd, scale, beta; ARGMAX: uint8 window taps
    stride_xn, stride_xl, stride_xc,
    stride_on, stride_ol, stride_oc,
    stride_an, stride_al, stride_ac,
    stride_s,
    H, W, WO, LO, MO, C,  # LO = Ho * Wo output pixels per image, MO = N * LO output rows
    ACT: tl.constexpr, KERNEL: tl.constexpr, STRIDE: tl.constexpr, PADDING: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < MO
    c_ok = cs < C
    cs64 = cs.to(tl.int64)
    mean, _, scale, beta = load_stats(STATS, stride_s, cs, c_ok)
    rows64 = rows.to(tl.int64)
    n = rows64 // LO
    lo = rows64 - n * LO
    ho = lo // WO
    wo = lo - ho * WO
    h0 = ho * STRIDE - PADDING  # the window's top-left tap, possibly in the padding
    w0 = wo * STRIDE - PADDING
    x_image = n * stride_xn
    best = tl.full((BLOCK_M, BLOCK_C), float("-inf"), tl.float32)
    first_tap = (tl.maximum(h0, 0) - h0) * KERNEL + (tl.maximum(w0, 0) - w0)  # torch's start: first in-bounds tap
    best_tap = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.int32) + first_tap.to(tl.int32)[:, None]
    for kh in tl.static_range(KERNEL):
        hi = h0 + kh
        h_ok = row_ok & (hi >= 0) & (hi < H)
        for kw in tl.static_range(KERNEL):
            wi = w0 + kw
            ok = (h_ok & (wi >= 0) & (wi < W))[:, None] & c_ok[None, :]
            x_offs = (x_image + (hi * W + wi) * stride_xl)[:, None] + (cs64 * stride_xc)[None, :]
            x = tl.load(X + x_offs, mask=ok, other=0.0).to(tl.float32)
            y = apply_act((x - mean[None, :]) * scale[None, :] + beta[None, :], ACT)
            y = y.to(OUT.dtype.element_ty).to(tl.float32)  # the value torch's max_pool2d compares
            take = ok & ((y > best) | (y != y))
            best = tl.where(take, y, best)
            best_tap = tl.where(take, kh * KERNEL + kw, best_tap)
    o_offs = (n * stride_on + lo * stride_ol)[:, None] + (cs64 * stride_oc)[None, :]
    a_offs = (n * stride_an + lo * stride_al)[:, None] + (cs64 * stride_ac)[None, :]
    mask = row_ok[:, None] & c_ok[None, :]
    tl.store(OUT + o_offs, best.to(OUT.dtype.element_ty), mask=mask)
    tl.store(ARGMAX + a_offs, best_tap.to(tl.uint8), mask=mask)


def batch_norm_act_max_pool_fwd(x: torch.Tensor, stats: torch.Tensor, act: str, kernel_size: int, stride: int,
                                padding: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, argmax) of ``max_pool2d(act((x - stats[0]) * stats[2] + stats[3]), kernel_size, stride, padding)``
    per channel. x: (N, C, H, W) with H, W mergeable (NCHW or channels_last); stats: (4, C) fp32
    (``batch_norm_stats_merge``). out: (N, C, Ho, Wo) in x's dtype and memory format; argmax: uint8 of the same
    shape and format, the winning tap ``kh * kernel_size + kw`` of each window."""
    if act not in ACTIVATIONS:
        raise ValueError(f"batch_norm_act_max_pool_fwd: act must be one of {ACTIVATIONS}, got {act!r}")
    if x.dim() != 4:
        raise ValueError(f"batch_norm_act_max_pool_fwd: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    out_h, out_w = pool_geometry("batch_norm_act_max_pool_fwd", kernel_size, stride, padding, height, width)
    xs = map_strides(x)
    out = empty_in_layout_of(x, (batch, channels, out_h, out_w))
    argmax = empty_in_layout_of(x, (batch, channels, out_h, out_w), torch.uint8)
    rows = batch * out_h * out_w

    def grid(meta):
        return (cdiv(rows, meta["BLOCK_M"]), cdiv(channels, meta["BLOCK_C"]))

    launch(_batch_norm_act_max_pool_fwd_kernel, grid, x, stats, out, argmax, *xs, *map_strides(out),
           *map_strides(argmax), stats.stride(0), height, width, out_w, out_h * out_w, rows, channels, ACT=act,
           KERNEL=kernel_size, STRIDE=stride, PADDING=padding)
    return out, argmax
