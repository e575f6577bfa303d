"""Forward of LayerNorm over the last dim: y = (x - mean) * rstd * weight + bias, per row of an (M, C) view.

Why a kernel: vision transformers normalize B * tokens rows of only C = 64..768 channels, where torch's CUDA
LayerNorm is slow, and under bf16 autocast torch's ``layer_norm`` (an fp32-policy op) reads an fp32 copy of the bf16
input and writes an fp32 output that the next Linear casts back to bf16: about 20 bytes of HBM traffic per element
instead of 4. This kernel reads x in its own dtype, computes in fp32 in registers (two-pass variance, the row is
held whole) and writes y directly in the requested dtype (the autocast dtype under autocast). It saves the fp32 mean
and rstd per row for the backward (``layer_norm_bwd.py``).

One program normalizes ``BLOCK_M`` rows of ``BLOCK_C = next_pow2(C)`` masked channels: ``BLOCK_M = TILE // BLOCK_C``
(at least 1), so a program of a small-C call still moves a few thousand elements. The autotune configs differ in
``TILE`` and warps; a pruner drops those that would hold more than ``MAX_PER_THREAD`` fp32 values per thread.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._intmath import cdiv, next_pow2
from ._launch import launch
from ._tuning import autotune_enabled, interpreting

__all__ = ["layer_norm_fwd", "MAX_CHANNELS", "check_channels", "tile_configs", "tile_pruner", "block_rows"]

MAX_CHANNELS = 16384  # one row is held in registers: 16384 fp32 values = 32 per thread at 16 warps
THREADS_PER_WARP = 32
MAX_PER_THREAD = 64  # fp32 values of the x tile per thread; beyond this the kernel spills registers
INTERPRET_TILE = 256  # elements per program under the CPU interpreter: several programs even on tiny test tensors

# (TILE elements per program, num_warps). First = the default without autotuning, meant for C = 64..1024 on the
# H100: 4096-element tiles (e.g. 32 rows of C = 96..128) on 4 warps, 32 fp32 values per thread.
_TILES = [(4096, 4), (8192, 4), (2048, 4), (8192, 8), (16384, 8), (16384, 16)]


def tile_configs(tiles: List[Tuple[int, int]]) -> List[triton.Config]:
    return [triton.Config({"TILE": tile}, num_warps=warps, num_stages=1) for tile, warps in tiles]


def tile_pruner(max_per_thread: int) -> Callable:
    """``early_config_prune``: the configs whose tile (at least one whole row) fits ``max_per_thread`` fp32 values
    per thread, one per distinct (BLOCK_M, warps) (the most-warps config when none fits); the first of those
    without autotuning; one tiny config under the interpreter."""

    def prune(configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
        if interpreting():
            return [triton.Config({"TILE": INTERPRET_TILE}, num_warps=4, num_stages=1)]
        block_c = kwargs["BLOCK_C"]
        kept, seen = [], set()
        for c in configs:
            shape = (max(1, c.kwargs["TILE"] // block_c), c.num_warps)  # tiles under one row all give BLOCK_M = 1
            if shape not in seen and max(c.kwargs["TILE"], block_c) <= max_per_thread * THREADS_PER_WARP * c.num_warps:
                seen.add(shape)
                kept.append(c)
        kept = kept or [max(configs, key=lambda c: c.num_warps)]
        return kept if autotune_enabled() else kept[:1]

    return prune


def block_rows(nargs: Dict) -> int:
    """BLOCK_M: rows per program (tile), at least one."""
    return max(1, nargs["TILE"] // nargs["BLOCK_C"])


def check_channels(channels: int) -> None:
    """ValueError unless 1 <= C <= MAX_CHANNELS (the row must fit the registers of one program)."""
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"layer_norm: the Triton kernels need 1 <= normalized_shape (the last dim) <= "
                         f"{MAX_CHANNELS}, got {channels}")


@triton.autotune(
    configs=tile_configs(_TILES),
    key=["C"],
    prune_configs_by={"early_config_prune": tile_pruner(MAX_PER_THREAD)},
)
@triton.heuristics({"BLOCK_M": block_rows})
@triton.jit
def _layer_norm_fwd_kernel(
    X, WEIGHT, BIAS, Y, STATS,  # STATS: (2, M) fp32, row 0 the mean, row 1 rstd
    stride_xm, stride_ym,  # row strides; the channel stride is 1
    M, C,
    eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < M
    col_ok = cols < C
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)  # M * row stride may pass 2**31 elements
    x = tl.load(X + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = tl.math.rsqrt(tl.sum(xc * xc, axis=1) / C + eps)
    y = xc * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(WEIGHT + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64[:, None] * stride_ym + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(STATS + rows, mean, mask=row_ok)
    tl.store(STATS + M + rows, rstd, mask=row_ok)


def layer_norm_fwd(
    x2d: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    out_dtype: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm of each row of x2d (M, C) (fp16/bf16/fp32, channel stride 1, any row stride); weight / bias: None
    or (C,) of any float dtype (read as fp32). Returns y (M, C) contiguous in ``out_dtype`` and ``stats`` (2, M)
    fp32: the mean and rstd = 1 / sqrt(var + eps) (biased variance). One stats tensor, not two: every allocation
    and every tensor an autograd node carries costs host time, and these norms run 60+ times per training step."""
    rows, channels = x2d.shape
    check_channels(channels)
    if channels > 1 and x2d.stride(1) != 1:
        raise ValueError(f"layer_norm_fwd: x2d must have channel stride 1, got strides {x2d.stride()}")
    y = torch.empty((rows, channels), device=x2d.device, dtype=out_dtype)
    stats = torch.empty((2, rows), device=x2d.device, dtype=torch.float32)
    if rows == 0:
        return y, stats
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None

    def grid(meta):
        return (cdiv(rows, meta["BLOCK_M"]),)

    # an absent weight / bias is never read: x2d stands in for its pointer
    launch(_layer_norm_fwd_kernel, grid,
           x2d, weight if weight is not None else x2d, bias if bias is not None else x2d, y, stats,
           x2d.stride(0), y.stride(0), rows, channels, float(eps),
           HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK_C=next_pow2(channels))
    return y, stats
