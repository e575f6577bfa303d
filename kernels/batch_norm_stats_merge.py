"""Per-channel batch statistics of a training BatchNorm, second stage: combines the row chunks of
``batch_norm_stats.py`` into the batch mean and biased variance, and in the same program updates the running
statistics in place and writes the affine map the transform kernel applies.

Combination (Chan et al.): ``mean = sum_p n_p mean_p / M``, ``M2 = sum_p (M2_p + n_p (mean_p - mean)^2)``, in fp32;
the chunk sizes ``n_p`` follow from the chunking (all ``ROWS_PER_PROGRAM`` but the last). Outputs, per channel:
``STATS = (mean, invstd, scale, beta)`` fp32 with ``invstd = 1 / sqrt(M2 / M + eps)``, ``scale = weight * invstd``
and ``beta`` the bias (0 without one): the normalized map is ``(x - mean) * scale + beta``, torch's order of
operations (``x * scale + shift`` loses bits when ``|mean| >> std`` and moves ReLU's kink). The running statistics
move by ``momentum`` toward the mean and the unbiased variance ``M2 / (M - 1)``, as ``torch.nn.functional.batch_norm``
does.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from ._launch import launch

__all__ = ["batch_norm_stats_merge"]

# chunks per step and channels per program: the chunk count is 4-16 per SM, up to a few thousand; on the H100 (128,
# 32) took 138 us over HaloNet-26t's 31 norms against 190 for (32, 64) (kernels/README.md, "Seventeenth run")
BLOCK_P = 128
BLOCK_C = 32
NUM_WARPS = 4


@triton.jit
def _chunk_means(PARTS, p0, P, M, C, ROWS_PER_PROGRAM, cs, c_ok, BLOCK_P: tl.constexpr):
    """Chunks p0 .. p0 + BLOCK_P: (indices, mask, row counts n_p, means) for channels ``cs``."""
    ps = p0 + tl.arange(0, BLOCK_P)
    mask = (ps < P)[:, None] & c_ok[None, :]
    count = tl.minimum(ROWS_PER_PROGRAM, M - ps * ROWS_PER_PROGRAM).to(tl.float32)
    return ps, mask, count, tl.load(PARTS + ps[:, None] * C + cs[None, :], mask=mask, other=0.0)


@triton.jit
def _batch_norm_stats_merge_kernel(
    PARTS, STATS, WEIGHT, BIAS, RUNNING_MEAN, RUNNING_VAR,
    stride_pp, stride_s,  # plane strides of PARTS (2, P, C) and STATS (4, C)
    P, M, C, ROWS_PER_PROGRAM,
    momentum, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, UPDATE_RUNNING: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    total = M.to(tl.float32)
    weighted = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        ps, mask, count, mean_p = _chunk_means(PARTS, p0, P, M, C, ROWS_PER_PROGRAM, cs, c_ok, BLOCK_P)
        weighted += tl.where(mask, mean_p * count[:, None], 0.0)
    mean = tl.sum(weighted, axis=0) / total
    m2_acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):  # second pass: the deviations need the batch mean
        ps, mask, count, mean_p = _chunk_means(PARTS, p0, P, M, C, ROWS_PER_PROGRAM, cs, c_ok, BLOCK_P)
        m2_p = tl.load(PARTS + stride_pp + ps[:, None] * C + cs[None, :], mask=mask, other=0.0)
        delta = mean_p - mean[None, :]
        m2_acc += tl.where(mask, m2_p + delta * delta * count[:, None], 0.0)
    m2 = tl.sum(m2_acc, axis=0)
    invstd = 1.0 / tl.sqrt(m2 / total + eps)
    scale = invstd
    if HAS_WEIGHT:
        scale = invstd * tl.load(WEIGHT + cs, mask=c_ok, other=0.0).to(tl.float32)
    beta = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        beta = tl.load(BIAS + cs, mask=c_ok, other=0.0).to(tl.float32)
    tl.store(STATS + cs, mean, mask=c_ok)
    tl.store(STATS + stride_s + cs, invstd, mask=c_ok)
    tl.store(STATS + 2 * stride_s + cs, scale, mask=c_ok)
    tl.store(STATS + 3 * stride_s + cs, beta, mask=c_ok)
    if UPDATE_RUNNING:
        running_mean = tl.load(RUNNING_MEAN + cs, mask=c_ok, other=0.0).to(tl.float32)
        running_var = tl.load(RUNNING_VAR + cs, mask=c_ok, other=0.0).to(tl.float32)
        running_mean = (1.0 - momentum) * running_mean + momentum * mean
        running_var = (1.0 - momentum) * running_var + momentum * (m2 / (total - 1.0))
        tl.store(RUNNING_MEAN + cs, running_mean.to(RUNNING_MEAN.dtype.element_ty), mask=c_ok)
        tl.store(RUNNING_VAR + cs, running_var.to(RUNNING_VAR.dtype.element_ty), mask=c_ok)


def batch_norm_stats_merge(parts: torch.Tensor, rows: int, rows_per_program: int, weight: Optional[torch.Tensor],
                           bias: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
                           running_var: Optional[torch.Tensor], momentum: float, eps: float) -> torch.Tensor:
    """parts: (2, P, C) fp32 from :func:`batch_norm_stats` over ``rows`` rows (> 1); weight, bias: None or (C,);
    running_mean / running_var: both None or both (C,) contiguous, updated in place. Returns STATS (4, C) fp32:
    mean, invstd, scale, beta (module docstring)."""
    _, programs, channels = parts.shape
    if rows < 2:
        raise ValueError(f"batch_norm_stats_merge: need more than 1 value per channel in training, got {rows}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_stats_merge: running_mean and running_var must both be given or both be None")
    stats = torch.empty((4, channels), device=parts.device, dtype=torch.float32)
    update = running_mean is not None
    # absent tensors are never read: stats stands in for their pointers
    launch(_batch_norm_stats_merge_kernel, (cdiv(channels, BLOCK_C),), parts, stats,
           weight if weight is not None else stats, bias if bias is not None else stats,
           running_mean if update else stats, running_var if update else stats,
           parts.stride(0), stats.stride(0), programs, rows, channels, rows_per_program, float(momentum), float(eps),
           HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, UPDATE_RUNNING=update,
           BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return stats
