"""``x + y + bias`` (bias over the last dim) in one pass: a residual add fused with a per-channel bias, for
``x + conv(x)`` position encodings whose conv runs without its bias (``vitzoo.kernels.bias_residual_add`` says why).

The output dtype is torch's promotion of x and y (what ``x + conv(x)`` gives); the sum is taken in fp32. Gradients:
``dx = dy = grad`` and the bias gradient as one GEMV (:func:`vitzoo.ops.linear.column_sum`). Registered through
:class:`~vitzoo.ops._triton_op.TritonOp` (custom ops ``vitzoo::bias_residual_add_fwd`` / ``_bwd`` under
``torch.compile``; eager calls launch the kernel directly, without the custom-op dispatch).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._backend import resolve_backend
from ._triton_op import TritonOp
from .linear import column_sum

__all__ = ["bias_residual_add"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _forward(x2d: torch.Tensor, y2d: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    from vitzoo.kernels.bias_residual_add import bias_residual_add as launch_kernel

    return launch_kernel(x2d, y2d, bias, out_dtype)


def _forward_fake(x2d, y2d, bias, out_dtype):
    return x2d.new_empty(x2d.shape, dtype=out_dtype)


def _backward_impl(grad: torch.Tensor, bias_dtype: torch.dtype) -> torch.Tensor:
    """The bias gradient (the other two are ``grad`` itself): one GEMV, in grad's dtype like torch's autocast conv
    bias gradient, then the bias's dtype."""
    return column_sum(grad).to(bias_dtype)


def _backward_fake(grad, bias_dtype):
    return grad.new_empty(grad.shape[1:], dtype=bias_dtype)


def _setup_context(ctx, inputs, output):
    ctx.dtypes = tuple(t.dtype for t in inputs[:3])


def _backward(ctx, backward_fn, grad):
    x_dtype, y_dtype, bias_dtype = ctx.dtypes
    return grad.to(x_dtype), grad.to(y_dtype), backward_fn(grad, bias_dtype), None


_OP = TritonOp("bias_residual_add", _forward, _forward_fake, _backward_impl, _backward_fake, _setup_context,
               _backward)


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
        out = _OP(x.reshape(-1, channels), y.reshape(-1, channels), bias, out_dtype)
        return out.view(x.shape)
    return _torch(x, y, bias).to(out_dtype)
