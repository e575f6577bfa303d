"""Pieces shared by the training BatchNorm kernels (``batch_norm_stats.py``, ``batch_norm_stats_merge.py``,
``batch_norm_act_fwd.py``, ``batch_norm_act_bwd_reduce.py``, ``batch_norm_act_bwd.py``).

Layout: a 4-D map (N, C, H, W) with H and W mergeable is read as rows m = n * L + l (L = H * W) of C channels at
``n * stride_n + l * stride_l + c * stride_c``. channels_last maps (the GPU case) are row-uniform
(``stride_n == L * stride_l``): row m sits at ``m * stride_l`` and no division is needed; NCHW maps take the
``m // L`` path.

Activations: ``kernels/_activation.py``.

Untuned tiles (autotuning off, the model benchmarks' setting): per kernel a rule on C, the H100's winners at
HaloNet-26t's 31 norms (batch 128, bf16, channels_last; kernels/README.md, "Sixteenth run" for the elementwise
kernels, "Seventeenth run" for the reductions, timed in CUDA graphs).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import triton
import triton.language as tl


__all__ = ["map_strides", "row_uniform", "check_same_rows", "row_offsets", "untuned_tile", "tile_configs",
           "interpret_config", "elementwise_tile", "load_stats", "mask_byte", "mask_strides", "pack_positive_bits",
           "positive_bit", "ELEMENTWISE_TILES", "REDUCTION_TILES", "MASK_BITS", "MASK_BITS_C"]

INTERPRET_BLOCKS = (8, 16)  # (BLOCK_M, BLOCK_C) under the CPU interpreter: several tiles per chunk on tiny maps
# (BLOCK_M rows, BLOCK_C channels, warps) autotuned; the untuned pick is each kernel's rule (``untuned_tile``)
ELEMENTWISE_TILES = ((64, 64, 4), (32, 128, 4), (128, 64, 8), (64, 128, 8), (128, 32, 4), (16, 256, 4))
REDUCTION_TILES = ((64, 64, 4), (32, 128, 4), (128, 64, 8), (64, 128, 8), (128, 32, 4), (256, 32, 8), (32, 64, 2),
                   (64, 32, 2), (16, 64, 2))
@triton.jit
def row_offsets(rows, L, stride_n, stride_l, ROW_UNIFORM: tl.constexpr):
    """int64 element offsets of rows m = n * L + l (module docstring)."""
    rows = rows.to(tl.int64)
    if ROW_UNIFORM:
        return rows * stride_l
    n = rows // L
    return n * stride_n + (rows - n * L) * stride_l


def map_strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """(stride_n, stride_l, stride_c) of a 4-D map read as rows m = n * L + l; ValueError when H and W of ``t`` cannot
    be merged into one index."""
    _, _, height, width = t.shape
    if height > 1 and width > 1 and t.stride(2) != width * t.stride(3):
        raise ValueError(f"batch norm kernels: H and W of a map must be mergeable, got strides {t.stride()}")
    stride_l = t.stride(3) if width > 1 else (t.stride(2) if height > 1 else 1)
    return t.stride(0), stride_l, t.stride(1)


def row_uniform(t: torch.Tensor) -> bool:
    """Whether row m of ``t`` sits at ``m * stride_l`` (channels_last and every single-image map)."""
    stride_n, stride_l, _ = map_strides(t)
    return t.shape[0] == 1 or stride_n == t.shape[2] * t.shape[3] * stride_l


def check_same_rows(kernel: str, *maps: Optional[torch.Tensor]) -> None:
    """ValueError unless the given maps (None skipped) have one shape and one row layout (the kernels take one
    ``ROW_UNIFORM`` flag and one row count for all of them)."""
    given = [t for t in maps if t is not None]
    layouts = {(tuple(t.shape), map_strides(t)[:2]) for t in given}
    if len(layouts) > 1:
        raise ValueError(f"{kernel}: the maps must share shape and row layout, got shapes / strides "
                         f"{[(tuple(t.shape), t.stride()) for t in given]}")


def tile_configs(tiles):
    """Autotune configs of (BLOCK_M, BLOCK_C, warps) tiles, 1 stage: the reductions prefetch their next tile by hand
    (Triton's pipeliner left these loops alone: 2 stages timed the same on the H100)."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_C": c}, num_warps=warps, num_stages=1)
            for m, c, warps in tiles]


def interpret_config():
    return triton.Config({"BLOCK_M": INTERPRET_BLOCKS[0], "BLOCK_C": INTERPRET_BLOCKS[1]}, num_warps=4, num_stages=1)


@triton.jit
def elementwise_tile(M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """(rows, cs, c_ok, mask, cs64) of this program's [BLOCK_M rows, BLOCK_C channels] tile on an (M, C) grid."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    return rows, cs, c_ok, (rows < M)[:, None] & c_ok[None, :], cs.to(tl.int64)


@triton.jit
def load_stats(STATS, stride_s, cs, c_ok):
    """(mean, invstd, scale, beta) fp32 vectors of channels ``cs`` from the (4, C) statistics."""
    mean = tl.load(STATS + cs, mask=c_ok, other=0.0)
    invstd = tl.load(STATS + stride_s + cs, mask=c_ok, other=0.0)
    scale = tl.load(STATS + 2 * stride_s + cs, mask=c_ok, other=0.0)
    beta = tl.load(STATS + 3 * stride_s + cs, mask=c_ok, other=0.0)
    return mean, invstd, scale, beta


def untuned_tile(configs, channels: int, rule: Callable[[int], Tuple[int, int, int]]):
    """The config ``rule(C) = (BLOCK_M, BLOCK_C, num_warps)`` from a kernel's autotune list (its first config if the
    list lacks it): the untuned default of the BatchNorm kernels, whose rules are the H100's autotune winners."""
    want = rule(int(channels))
    for config in configs:
        if (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_C"], config.num_warps) == want:
            return config
    return configs[0]


# ReLU masks of the block tails (``z_from="relu_mask"``): bit c % 8 of byte (m, c // 8) of a uint8 (M, C / 8) map says
# whether z > 0 at row m, channel c; 1/16 of a bf16 map's bytes, read instead of the output in the backward
MASK_BITS = 8
MASK_BITS_C = tl.constexpr(MASK_BITS)  # the same, for the kernels (a plain global does not compile)


@triton.jit
def pack_positive_bits(z, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """[BLOCK_M, BLOCK_C / 8] uint8: the bits of ``z > 0`` for 8 consecutive channels per byte (BLOCK_C % 8 == 0)."""
    positive = tl.reshape((z > 0.0).to(tl.int32), [BLOCK_M, BLOCK_C // MASK_BITS_C, MASK_BITS_C])
    return tl.sum(positive << tl.arange(0, MASK_BITS_C)[None, None, :], axis=2).to(tl.uint8)


@triton.jit
def mask_byte(cs64):
    """The byte of a packed mask row that holds channel ``cs64``."""
    return cs64 // MASK_BITS_C


def mask_strides(mask: torch.Tensor, x: torch.Tensor, kernel: str) -> Tuple[int, int, int]:
    """(stride_n, stride_l, stride_c) that address a packed ReLU mask of x (uint8 (N * H * W, C / 8), rows in x's row
    order) through ``row_offsets``; ValueError when it is not that."""
    batch, channels, height, width = x.shape
    want = (batch * height * width, channels // MASK_BITS)
    if channels % MASK_BITS or mask.dtype != torch.uint8 or tuple(mask.shape) != want or not mask.is_contiguous():
        raise ValueError(f"{kernel}: a relu_mask must be a contiguous uint8 tensor of shape {want} (C % "
                         f"{MASK_BITS} == 0), got {mask.dtype} {tuple(mask.shape)} for x of shape {tuple(x.shape)}")
    return height * width * want[1], want[1], 0


@triton.jit
def positive_bit(byte, cs):
    """Whether channel ``cs`` was positive, from its byte of a packed mask loaded per element (8 lanes load one byte:
    one memory transaction, no unpacking shuffle)."""
    return ((byte.to(tl.int32) >> (cs % MASK_BITS_C)[None, :]) & 1) != 0
