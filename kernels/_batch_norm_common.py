"""Pieces shared by the training BatchNorm kernels (``batch_norm_stats.py``, ``batch_norm_stats_merge.py``,
``batch_norm_act_fwd.py``, ``batch_norm_act_bwd_reduce.py``, ``batch_norm_act_bwd.py``).

Layout: a 4-D map (N, C, H, W) with H and W mergeable is read as rows m = n * L + l (L = H * W) of C channels at
``n * stride_n + l * stride_l + c * stride_c``. channels_last maps (the GPU case) are row-uniform
(``stride_n == L * stride_l``): row m sits at ``m * stride_l`` and no division is needed; NCHW maps take the
``m // L`` path.

Activations: ``kernels/_activation.py``.

Untuned tiles (autotuning off, the model benchmarks' setting): per kernel a rule on C, the H100 autotuner's winners
at HaloNet-26t's 31 norms (batch 128, bf16, channels_last; kernels/README.md, "Sixteenth run"): narrow maps
(C <= 32) take 32-channel tiles of 128 rows, wide ones 128 or 256 channels of few rows.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import triton
import triton.language as tl


__all__ = ["map_strides", "row_uniform", "check_same_rows", "row_offsets", "untuned_tile", "tile_configs",
           "interpret_config", "load_stats", "ELEMENTWISE_TILES", "REDUCTION_TILES", "WIDEST_REDUCTION_BLOCK_C"]

INTERPRET_BLOCKS = (8, 16)  # (BLOCK_M, BLOCK_C) under the CPU interpreter: several tiles per chunk on tiny maps
# (BLOCK_M rows, BLOCK_C channels, warps) autotuned; the untuned pick is each kernel's rule (``untuned_tile``)
ELEMENTWISE_TILES = ((64, 64, 4), (32, 128, 4), (128, 64, 8), (64, 128, 8), (128, 32, 4), (16, 256, 4))
REDUCTION_TILES = ((64, 64, 4), (32, 128, 4), (128, 64, 8), (64, 128, 8), (128, 32, 4), (256, 32, 8))
WIDEST_REDUCTION_BLOCK_C = max(c for _, c, _ in REDUCTION_TILES)
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


def tile_configs(tiles, num_stages: int):
    """Autotune configs of (BLOCK_M, BLOCK_C, warps) tiles; 2 stages for the streaming reductions, 1 elementwise."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_C": c}, num_warps=warps, num_stages=num_stages)
            for m, c, warps in tiles]


def interpret_config():
    return triton.Config({"BLOCK_M": INTERPRET_BLOCKS[0], "BLOCK_C": INTERPRET_BLOCKS[1]}, num_warps=4, num_stages=1)


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
