"""Depthwise KxK convolution with per-side zero padding and autograd: ``F.conv2d(F.pad(x, padding), weight, bias,
stride, groups=C)`` without the padded copy.

Why: cuDNN's depthwise convolutions take symmetric padding only, so timm's ``Conv2dSame`` pads every stride-2
TensorFlow-"same" map first: a copy of MaxViT's 4x-expanded maps (and a slice of their gradient) through torch's
non-vectorized kernel, about 4 ms of MaxViT-T's train step, next to cuDNN's depthwise kernels themselves
(kernels/README.md, "Sixteenth run"). The Triton path reads the padding implicitly in the forward
(``vitzoo.kernels.depthwise_conv_fwd``), the input gradient (``depthwise_conv_bwd_input``) and the weight / bias
gradient (``depthwise_conv_bwd_weight``).

Numerics follow autocast like ``F.conv2d``: under autocast the weight is rounded to the autocast dtype and the
output is in that dtype; products and sums are fp32.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._backend import resolve_backend
from .biased import common_dtype
from .conv_act import _check_padding

__all__ = ["depthwise_conv2d", "depthwise_conv2d_torch"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check(x, weight, bias, stride, padding) -> Tuple[int, int, int, int]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not isinstance(weight, torch.Tensor) \
            or tuple(weight.shape[:2]) != (x.shape[1], 1) or weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"depthwise_conv2d: x must be (B, C, H, W) and weight (C, 1, K, K), got "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(weight, 'shape', ()))}")
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f"depthwise_conv2d: bias must be None or ({x.shape[1]},), got {tuple(bias.shape)}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"depthwise_conv2d: stride must be a positive int, got {stride!r}")
    top, bottom, left, right = _check_padding(padding)
    k = weight.shape[-1]
    if x.shape[2] + top + bottom < k or x.shape[3] + left + right < k:
        raise ValueError(f"depthwise_conv2d: a {k}x{k} kernel does not fit the padded {tuple(x.shape[2:])} map")
    return top, bottom, left, right


def depthwise_conv2d_torch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
                           padding: Sequence[int]) -> torch.Tensor:
    """Pure-torch reference of :func:`depthwise_conv2d` (timm's ``Conv2dSame`` computation)."""
    top, bottom, left, right = _check(x, weight, bias, stride, padding)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, stride, groups=x.shape[1])


class _DepthwiseConv2d(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, out_dtype):
        from ..kernels.depthwise_conv_fwd import depthwise_conv_fwd

        top, bottom, left, right = padding
        batch, channels, height, width = x.shape
        k = weight.shape[-1]
        h_out, w_out = (height + top + bottom - k) // stride + 1, (width + left + right - k) // stride + 1
        # weights as F.conv2d sees them (rounded to the compute dtype), fp32 tap-major for the kernels
        taps = weight.detach().to(out_dtype).float().reshape(channels, k * k).t().contiguous()
        bias32 = bias.detach().to(out_dtype).float() if bias is not None else taps.new_zeros(channels)
        x_nhwc = x.permute(0, 2, 3, 1)
        y = depthwise_conv_fwd(x_nhwc, taps, bias32, stride, top, left, (h_out, w_out), "none", out_dtype)
        ctx.save_for_backward(x, taps)
        ctx.geometry = (stride, top, left, k)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, dy):
        from ..kernels.depthwise_conv_bwd_input import depthwise_conv_bwd_input
        from ..kernels.depthwise_conv_bwd_weight import depthwise_conv_bwd_weight

        x, taps = ctx.saved_tensors
        stride, top, left, k = ctx.geometry
        batch, channels, height, width = x.shape
        dy_nhwc = dy.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = depthwise_conv_bwd_input(dy_nhwc, taps, stride, top, left, (height, width), x.dtype)
            dx = dx.permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dtaps, dbias32 = depthwise_conv_bwd_weight(x.permute(0, 2, 3, 1), dy_nhwc, k, stride, top, left)
            dweight = dtaps.t().reshape(channels, 1, k, k).to(ctx.dtypes[0]) if ctx.needs_input_grad[1] else None
            dbias = dbias32.to(ctx.dtypes[1]) if ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
                     padding: Sequence[int], backend: str = "auto") -> torch.Tensor:
    """Depthwise convolution with autograd.

    Args:
        x: (B, C, H, W); the Triton path needs channels_last memory (the NHWC view with channel stride 1).
        weight: (C, 1, K, K); bias: (C,) or None.
        stride: one stride for both dims. padding: (top, bottom, left, right) zeros around the map.
        backend: ``"auto" | "torch" | "triton"`` (:mod:`vitzoo.ops._backend`); "auto" takes Triton for CUDA fp16 /
            bf16 / fp32 channels_last maps, except under ``torch.compile`` tracing.

    Returns (B, C, H_out, W_out): channels_last on the Triton path, in the autocast dtype under autocast (else x's).
    """
    padding = _check(x, weight, bias, stride, padding)
    if torch.compiler.is_compiling() and backend == "auto":
        backend = "torch"

    def unsupported() -> Optional[str]:
        if x.dtype not in _DTYPES or weight.dtype not in _DTYPES:
            return f"x and weight must be float16, bfloat16 or float32, got {x.dtype}, {weight.dtype}"
        if x.shape[1] > 1 and x.stride(1) != 1:
            return "x needs channels_last memory (channel stride 1)"
        return None

    if resolve_backend(backend, x, weight, bias, op="depthwise_conv2d", unsupported_reason=unsupported) != "triton":
        top, bottom, left, right = padding
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, stride, groups=x.shape[1])
    # the dtype F.conv2d computes in: autocast's where it applies, else x's (fp16 / bf16 / fp32 here)
    return _DepthwiseConv2d.apply(x, weight, bias, stride, padding, common_dtype(x))
