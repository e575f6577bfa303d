"""Backward of a max pooling (floor mode, dilation 1) from the uint8 window argmax of
``batch_norm_act_max_pool_fwd.py``: the gradient of the pooled map's input (the activated map y, whose gradient is
the ``dy`` that ``batch_norm_act_bwd_reduce.py`` and ``batch_norm_act_bwd.py`` take)

``dy[h, w] = sum of dout[ho, wo] over the windows (ho, wo) that hold (h, w) and whose argmax is its tap
(h - (ho * stride - padding), w - (wo * stride - padding))``

per channel, in gather form: each program owns [BLOCK_M input pixels m = n * H * W + h * W + w, BLOCK_C channels]
and visits the at most ceil(kernel_size / stride) ** 2 windows that can hold a pixel (static loops), so there are no
atomics and the result is deterministic. The sum is fp32 in ascending (ho, wo) order, as torch's CUDA kernel adds,
and is stored once in the dtype of the pooled map's input.

Why: torch's max_pool2d backward needs the int64 indices (8 bytes per pooled element against 1 here) and writes the
gradient that the BatchNorm backward then reads; with the one-byte argmax the stem's pool keeps no y and no index
map. Maps use the row layout of ``_batch_norm_common.py`` (NCHW or channels_last); as in the forward every tile needs
its rows' (n, h, w), so the row-uniform shortcut buys nothing.

Known: on the H100 a 24-channel map took 2.7-60 ms depending on the tile (64 channels: 0.25 ms). No model pools a
24-channel map; kernels/README.md, "Seventeenth run".
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._batch_norm_common import interpret_config, map_strides, tile_configs, untuned_tile
from ._intmath import cdiv
from ._launch import launch
from ._tuning import mode_pruner
from .batch_norm_act_max_pool_fwd import POOL_TILES, pool_geometry

__all__ = ["max_pool_bwd"]


def _untuned(configs, args):
    """(16, 64) on 2 warps: the H100's best at HaloNet-26t's stem end (``batch_norm_act_max_pool_fwd.POOL_TILES``)."""
    return untuned_tile(configs, args["C"], lambda c: (16, 64, 2))


@triton.autotune(configs=tile_configs(POOL_TILES), key=["C", "KERNEL", "STRIDE", "PADDING"],
                 prune_configs_by={"early_config_prune": mode_pruner(interpret_config(), untuned=_untuned)})
@triton.jit
def _max_pool_bwd_kernel(
    DOUT, ARGMAX, DY,  # DOUT, ARGMAX: (N, C, Ho, Wo); DY: (N, C, H, W), the pooling input's gradient
    stride_gn, stride_gl, stride_gc,
    stride_an, stride_al, stride_ac,
    stride_dn, stride_dl, stride_dc,
    W, HO, WO, L, M, C,  # L = H * W input pixels per image, M = N * L input rows
    KERNEL: tl.constexpr, STRIDE: tl.constexpr, PADDING: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    SPAN: tl.constexpr = (KERNEL + STRIDE - 1) // STRIDE  # windows per axis that can hold a pixel
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    c_ok = cs < C
    cs64 = cs.to(tl.int64)
    rows64 = rows.to(tl.int64)
    n = rows64 // L
    pix = rows64 - n * L  # h * W + w
    h = pix // W
    w = pix - h * W
    ho_last = (h + PADDING) // STRIDE  # the last window whose rows reach h (its kh = (h + PADDING) % STRIDE)
    wo_last = (w + PADDING) // STRIDE
    g_image = n * stride_gn
    a_image = n * stride_an
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for i in tl.static_range(SPAN):
        ho = ho_last - (SPAN - 1) + i  # ascending: torch's order of the sum
        kh = h + PADDING - ho * STRIDE  # >= 0 as ho <= ho_last
        h_ok = row_ok & (ho >= 0) & (ho < HO) & (kh < KERNEL)
        for j in tl.static_range(SPAN):
            wo = wo_last - (SPAN - 1) + j
            kw = w + PADDING - wo * STRIDE
            ok = (h_ok & (wo >= 0) & (wo < WO) & (kw < KERNEL))[:, None] & c_ok[None, :]
            lo = ho * WO + wo
            a_offs = (a_image + lo * stride_al)[:, None] + (cs64 * stride_ac)[None, :]
            tap = tl.load(ARGMAX + a_offs, mask=ok, other=0).to(tl.int32)
            hit = ok & (tap == (kh * KERNEL + kw).to(tl.int32)[:, None])
            g_offs = (g_image + lo * stride_gl)[:, None] + (cs64 * stride_gc)[None, :]
            acc += tl.load(DOUT + g_offs, mask=hit, other=0.0).to(tl.float32)
    d_offs = (n * stride_dn + pix * stride_dl)[:, None] + (cs64 * stride_dc)[None, :]
    tl.store(DY + d_offs, acc.to(DY.dtype.element_ty), mask=row_ok[:, None] & c_ok[None, :])


def max_pool_bwd(dout: torch.Tensor, argmax: torch.Tensor, input_shape_hw: Tuple[int, int], kernel_size: int,
                 stride: int, padding: int, like: torch.Tensor) -> torch.Tensor:
    """Gradient of the pooling's (N, C, H, W) input from ``dout`` (N, C, Ho, Wo) and the uint8 ``argmax`` of
    :func:`batch_norm_act_max_pool_fwd` (same pooling parameters), both with Ho, Wo mergeable (NCHW or
    channels_last). ``input_shape_hw`` = (H, W); the result has the shape, dtype and memory format of ``like`` (the
    pooled map's input, or anything laid out as it)."""
    height, width = (int(s) for s in input_shape_hw)
    if like.dim() != 4 or tuple(like.shape[2:]) != (height, width):
        raise ValueError(f"max_pool_bwd: like must be (N, C, {height}, {width}), got shape {tuple(like.shape)}")
    batch, channels = like.shape[:2]
    out_h, out_w = pool_geometry("max_pool_bwd", kernel_size, stride, padding, height, width)
    pooled = (batch, channels, out_h, out_w)
    if tuple(dout.shape) != pooled or tuple(argmax.shape) != pooled:
        raise ValueError(f"max_pool_bwd: dout and argmax must be {pooled}, got {tuple(dout.shape)} and "
                         f"{tuple(argmax.shape)}")
    if argmax.dtype != torch.uint8:
        raise ValueError(f"max_pool_bwd: argmax must be uint8, got {argmax.dtype}")
    dy = torch.empty_like(like)
    rows = batch * height * width

    def grid(meta):
        return (cdiv(rows, meta["BLOCK_M"]), cdiv(channels, meta["BLOCK_C"]))

    launch(_max_pool_bwd_kernel, grid, dout, argmax, dy, *map_strides(dout), *map_strides(argmax), *map_strides(dy),
           width, out_h, out_w, height * width, rows, channels, KERNEL=kernel_size, STRIDE=stride, PADDING=padding)
    return dy
