"""``out[b, p, c] = x[b, p, c] * gate[b, c] (+ shift[b, c])`` over image-major (B, P, C) views: squeeze-and-excitation's
gating of a channels_last map (P = H * W pixels), in place (inference) or into a new map (training), and its input
gradient ``dy * gate + dmean / P`` (the SE pooling's gradient folded in as ``shift``).

Why: torch multiplies a channels_last map by a (B, C, 1, 1) gate with its broadcasting, non-vectorized
``elementwise_kernel<128, 4>``: 2.6 ms of MaxViT-T's 46 ms inference batch for 11 calls, several times the
bandwidth cost; in training its backward adds two more such passes and a mixed-layout gradient sum. Here one program
scales ``BLOCK_P`` pixels x ``BLOCK_C`` channels of one image with the gate row loaded once, in fp32 registers, written
in out's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._intmath import cdiv
from ._launch import launch
from ._tuning import mode_pruner

__all__ = ["channel_scale_", "channel_scale"]

INTERPRET_BLOCKS = (8, 16)  # (BLOCK_P, BLOCK_C) under the CPU interpreter: several programs on tiny test maps
# (BLOCK_P pixels, BLOCK_C channels, warps); the first is the untuned default
_TILES = ((32, 128, 4), (64, 64, 4), (16, 256, 4), (64, 128, 8), (128, 64, 8), (32, 256, 8))


def _configs():
    return [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=warps, num_stages=1) for p, c, warps in _TILES]


# restore_value: the autotuner runs the kernel once per config; an in-place x must be scaled exactly once
@triton.autotune(configs=_configs(), key=["P", "C", "HAS_SHIFT"], restore_value=["X"], prune_configs_by={
    "early_config_prune": mode_pruner(triton.Config({"BLOCK_P": INTERPRET_BLOCKS[0], "BLOCK_C": INTERPRET_BLOCKS[1]},
                                                    num_warps=4, num_stages=1))})
@triton.jit
def _channel_scale_kernel(
    X, GATE, SHIFT, OUT,  # OUT may be X (in place); SHIFT is read only when HAS_SHIFT
    stride_xb, stride_xp,  # channel stride 1
    stride_gb, stride_sb,  # channel stride 1
    stride_ob, stride_op,  # channel stride 1
    P, C,
    HAS_SHIFT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    ps = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    mask = (ps < P)[:, None] & c_ok[None, :]
    g = tl.load(GATE + b * stride_gb + cs, mask=c_ok, other=0.0).to(tl.float32)
    ps64 = ps[:, None].to(tl.int64)
    x = tl.load(X + b * stride_xb + ps64 * stride_xp + cs[None, :], mask=mask, other=0.0).to(tl.float32)
    out = x * g[None, :]
    if HAS_SHIFT:
        out += tl.load(SHIFT + b * stride_sb + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + b * stride_ob + ps64 * stride_op + cs[None, :], out.to(OUT.dtype.element_ty), mask=mask)


def channel_scale(x: torch.Tensor, gate: torch.Tensor, shift: Optional[torch.Tensor] = None,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x: (B, P, C) with channel stride 1; gate, shift: (B, C) (channel stride 1, any float dtype); out: None (a new
    contiguous (B, P, C) tensor in x's dtype) or a (B, P, C) tensor with channel stride 1 (x itself: in place).
    Returns out = x * gate (+ shift)."""
    batch, pixels, channels = x.shape
    for name, t in (("gate", gate), ("shift", shift)):
        if t is not None and t.shape != (batch, channels):
            raise ValueError(f"channel_scale: {name} must be (B, C) = ({batch}, {channels}), got {tuple(t.shape)}")
    out = torch.empty((batch, pixels, channels), device=x.device, dtype=x.dtype) if out is None else out
    if out.shape != x.shape:
        raise ValueError(f"channel_scale: out must be x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
    if channels > 1 and any(t.stride(-1) != 1 for t in (x, gate, out, shift) if t is not None):
        raise ValueError(f"channel_scale: x, gate, shift and out need channel stride 1, got {x.stride()}, "
                         f"{gate.stride()}, {None if shift is None else shift.stride()}, {out.stride()}")
    if x.numel() == 0:
        return out

    def grid(meta):
        return (cdiv(pixels, meta["BLOCK_P"]), batch, cdiv(channels, meta["BLOCK_C"]))

    launch(_channel_scale_kernel, grid, x, gate, shift if shift is not None else gate, out, x.stride(0), x.stride(1),
           gate.stride(0), shift.stride(0) if shift is not None else 0, out.stride(0), out.stride(1), pixels, channels,
           HAS_SHIFT=shift is not None)
    return out


def channel_scale_(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x: (B, P, C) with channel stride 1, scaled in place by gate (B, C) (channel stride 1, any float dtype).
    Returns x."""
    if gate.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"channel_scale_: gate must be (B, C) = ({x.shape[0]}, {x.shape[2]}), got "
                         f"{tuple(gate.shape)}")
    if x.shape[2] > 1 and (x.stride(2) != 1 or gate.stride(1) != 1):
        raise ValueError(f"channel_scale_: x and gate need channel stride 1, got {x.stride()}, {gate.stride()}")
    return channel_scale(x, gate, out=x)
