"""``out = x + y + bias`` over the rows of (M, C) views: a residual add fused with a per-channel bias.

Why: DaViT's position encodings are ``x + conv(x)`` with a biased depthwise 3x3 conv on channels_last maps. cuDNN
leaves the bias to torch, whose broadcast add over a channels_last bf16 output runs the non-vectorized
``elementwise_kernel<128, 4>`` (several times the bandwidth cost), and the residual add is another full pass. Here
the conv runs without its bias and one pass reads x and y and writes the sum, in fp32 registers, in the output
dtype. One program covers ``BLOCK_M = TILE // BLOCK_C`` rows of ``BLOCK_C = next_pow2(C)`` masked channels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._intmath import cdiv, next_pow2
from ._launch import launch
from ._tuning import mode_pruner
from .layer_norm_fwd import block_rows, tile_configs

__all__ = ["bias_residual_add"]

INTERPRET_TILE = 256  # elements per program under the CPU interpreter: several programs on tiny test tensors
_TILES = ((4096, 4), (8192, 8), (2048, 4))  # (elements per program, warps); the first is the untuned default


@triton.autotune(configs=tile_configs(_TILES), key=["M", "C"], prune_configs_by={
    "early_config_prune": mode_pruner(triton.Config({"TILE": INTERPRET_TILE}, num_warps=4, num_stages=1))})
@triton.heuristics({"BLOCK_M": block_rows})
@triton.jit
def _bias_residual_add_kernel(
    X, Y, BIAS, OUT,
    stride_xm, stride_ym, stride_om,
    M, C,
    BLOCK_C: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    rows64 = rows.to(tl.int64)  # M * stride can pass 2^31 on large maps
    mask = (rows < M)[:, None] & (cols < C)[None, :]
    x = tl.load(X + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + rows64[:, None] * stride_ym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(BIAS + cols, mask=cols < C, other=0.0).to(tl.float32)
    tl.store(OUT + rows64[:, None] * stride_om + cols[None, :], (x + y + b[None, :]).to(OUT.dtype.element_ty),
             mask=mask)


def bias_residual_add(x2d: torch.Tensor, y2d: torch.Tensor, bias: torch.Tensor,
                      out_dtype: torch.dtype) -> torch.Tensor:
    """x2d, y2d: (M, C) with channel stride 1 (any row strides, any float dtypes); bias: (C,). Returns ``x2d + y2d +
    bias`` (M, C) contiguous in ``out_dtype``, summed in fp32."""
    rows, channels = x2d.shape
    if y2d.shape != x2d.shape or bias.shape != (channels,):
        raise ValueError(f"bias_residual_add: x2d and y2d must be (M, C) and bias (C,), got {tuple(x2d.shape)}, "
                         f"{tuple(y2d.shape)}, {tuple(bias.shape)}")
    if channels > 1 and (x2d.stride(1) != 1 or y2d.stride(1) != 1):
        raise ValueError(f"bias_residual_add: x2d and y2d need channel stride 1, got {x2d.stride()}, {y2d.stride()}")
    out = torch.empty((rows, channels), device=x2d.device, dtype=out_dtype)
    if out.numel() == 0:
        return out

    def grid(meta):
        return (cdiv(rows, meta["BLOCK_M"]),)

    launch(_bias_residual_add_kernel, grid, x2d, y2d, bias.contiguous(), out, x2d.stride(0), y2d.stride(0),
           out.stride(0), rows, channels, BLOCK_C=next_pow2(channels))
    return out
