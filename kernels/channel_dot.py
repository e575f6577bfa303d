"""``out[b, c] = sum_p a[b, p, c] * b[b, p, c]`` over image-major (B, P, C) views: the gradient of a per-(image,
channel) gate (squeeze-and-excitation: ``d gate = sum over pixels of dy * x``), in fp32.

Why: torch computes it as a full-size product map (written and read back) and a reduction over the two spatial dims
of a channels_last map. Here one program owns ``BLOCK_C`` channels of one image, streams ``BLOCK_P``-pixel tiles of
both maps into an fp32 register tile and reduces across pixels once at the end. Deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from ._launch import launch
from ._tuning import mode_pruner

__all__ = ["channel_dot"]

INTERPRET_BLOCKS = (8, 16)  # (BLOCK_P, BLOCK_C) under the CPU interpreter
# (BLOCK_P pixels, BLOCK_C channels, warps); the first is the untuned default
_TILES = ((64, 64, 4), (32, 128, 4), (128, 64, 8), (16, 256, 4), (64, 128, 8), (128, 32, 4))


def _configs():
    return [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=warps, num_stages=2) for p, c, warps in _TILES]


@triton.autotune(configs=_configs(), key=["P", "C"], prune_configs_by={
    "early_config_prune": mode_pruner(triton.Config({"BLOCK_P": INTERPRET_BLOCKS[0], "BLOCK_C": INTERPRET_BLOCKS[1]},
                                                    num_warps=4, num_stages=1))})
@triton.jit
def _channel_dot_kernel(
    A, B, OUT,  # OUT: (B, C) fp32 contiguous
    stride_ab, stride_ap,  # channel stride 1
    stride_bb, stride_bp,  # channel stride 1
    P, C,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    img = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        ps = (p0 + tl.arange(0, BLOCK_P))[:, None].to(tl.int64)
        mask = (ps < P) & c_ok[None, :]
        a = tl.load(A + img * stride_ab + ps * stride_ap + cs[None, :], mask=mask, other=0.0).to(tl.float32)
        b = tl.load(B + img * stride_bb + ps * stride_bp + cs[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += a * b
    tl.store(OUT + img * C + cs, tl.sum(acc, axis=0), mask=c_ok)


def channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a, b: (B, P, C) with channel stride 1, any float dtypes. Returns (B, C) fp32: the sum over P of a * b."""
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"channel_dot: a and b must be (B, P, C) of one shape, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    batch, pixels, channels = a.shape
    if channels > 1 and (a.stride(2) != 1 or b.stride(2) != 1):
        raise ValueError(f"channel_dot: a and b need channel stride 1, got {a.stride()}, {b.stride()}")
    out = torch.empty((batch, channels), device=a.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    if pixels == 0:
        return out.zero_()

    def grid(meta):
        return (batch, cdiv(channels, meta["BLOCK_C"]))

    launch(_channel_dot_kernel, grid, a, b, out, a.stride(0), a.stride(1), b.stride(0), b.stride(1), pixels, channels)
    return out
