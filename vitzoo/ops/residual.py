"""``x + y + bias`` (bias over the last dim) in one pass: a residual add fused with a per-channel bias, for
``x + conv(x)`` position encodings whose conv runs without its bias (``vitzoo.kernels.bias_residual_add`` says why).

The output dtype is torch's promotion of x and y (what ``x + conv(x)`` gives); the sum is taken in fp32. Gradients:
``dx = dy = grad`` and the bias gradient as one GEMV (``grad^T @ ones``, as :func:`vitzoo.ops.linear`).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._backend import resolve_backend

__all__ = ["bias_residual_add"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@torch.library.custom_op("vitzoo::bias_residual_add", mutates_args=())
def _kernel(x2d: torch.Tensor, y2d: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    from vitzoo.kernels.bias_residual_add import bias_residual_add as launch_kernel

    return launch_kernel(x2d, y2d, bias, out_dtype)


@_kernel.register_fake
def _kernel_fake(x2d, y2d, bias, out_dtype):
    return x2d.new_empty(x2d.shape, dtype=out_dtype)


def _setup_context(ctx, inputs, output):
    ctx.dtypes = (inputs[0].dtype, inputs[1].dtype, inputs[2].dtype)


def _grads(ctx, grad):
    """dx = dy = grad; the bias gradient as one GEMV (grad^T @ ones) in grad's dtype, like torch's autocast conv bias
    gradient."""
    grad_bias = torch.mv(grad.t(), grad.new_ones(grad.shape[0])).to(ctx.dtypes[2])
    return grad.to(ctx.dtypes[0]), grad.to(ctx.dtypes[1]), grad_bias, None


_kernel.register_autograd(_grads, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The eager path with autograd: the kernel without the custom-op dispatch (about 0.1 ms of host time per call
    on the lent host), same gradients."""

    @staticmethod
    def forward(ctx, x2d, y2d, bias, out_dtype):
        from vitzoo.kernels.bias_residual_add import bias_residual_add as launch_kernel

        _setup_context(ctx, (x2d, y2d, bias), None)
        return launch_kernel(x2d, y2d, bias, out_dtype)

    @staticmethod
    def backward(ctx, grad):
        return _grads(ctx, grad)


def _run_kernel(x2d: torch.Tensor, y2d: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _kernel(x2d, y2d, bias, out_dtype)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x2d, y2d, bias)):
        return _Eager.apply(x2d, y2d, bias, out_dtype)
    from vitzoo.kernels.bias_residual_add import bias_residual_add as launch_kernel

    return launch_kernel(x2d, y2d, bias, out_dtype)


def _torch(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x + (y + bias)


def bias_residual_add(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``x + y + bias`` for x, y of one shape (..., C) with channel stride 1 and bias (C,); returns a contiguous
    tensor of that shape in ``torch.promote_types(x.dtype, y.dtype)``."""
    if x.shape != y.shape or bias.dim() != 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f"bias_residual_add: x and y must share a shape (..., C) and bias be (C,), got "
                         f"{tuple(x.shape)}, {tuple(y.shape)}, {tuple(bias.shape)}")
    out_dtype = torch.promote_types(x.dtype, y.dtype)

    def unsupported() -> Optional[str]:
        if any(t.dtype not in _DTYPES for t in (x, y, bias)):
            return f"dtypes must be float16, bfloat16 or float32, got {x.dtype}, {y.dtype}, {bias.dtype}"
        if x.shape[-1] > 1 and (x.stride(-1) != 1 or y.stride(-1) != 1):
            return "x and y need channel stride 1 (channels_last maps seen as (B, H, W, C))"
        return None

    if resolve_backend(backend, x, y, bias, op="bias_residual_add", unsupported_reason=unsupported) == "triton":
        channels = x.shape[-1]
        out = _run_kernel(x.reshape(-1, channels), y.reshape(-1, channels), bias, out_dtype)
        return out.view(x.shape)
    return _torch(x, y, bias).to(out_dtype)
