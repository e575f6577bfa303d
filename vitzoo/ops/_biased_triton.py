"""Triton path of :func:`vitzoo.ops.biased.biased_attention`: the kernels of ``vitzoo.kernels.biased_attention_*``
registered through :class:`vitzoo.ops._triton_op.TritonOp` (custom ops ``vitzoo::biased_attention_fwd`` / ``_bwd``
with fake impls and autograd, traced by ``torch.compile``; a direct eager path otherwise)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._triton_op import TritonOp

__all__ = ["biased_attention_triton", "unsupported_reason"]


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                       dtype: torch.dtype) -> Optional[str]:
    """None when the Triton kernels handle this call (q, k, v cast to ``dtype``), else why not (called only after
    argument validation)."""
    from vitzoo.kernels._biased_attention_common import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS

    if dtype not in SUPPORTED_DTYPES:
        return f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}"
    if bias is not None and bias.dtype not in SUPPORTED_DTYPES:
        return f"bias dtype must be one of {SUPPORTED_DTYPES}, got {bias.dtype}"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head_dim (q.shape[-1]) must be one of {SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}"
    if v.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"v head_dim (v.shape[-1]) must be one of {SUPPORTED_HEAD_DIMS}, got {v.shape[-1]}"
    devices = {t.device for t in (q, k, v, bias) if t is not None}
    if len(devices) != 1:
        return f"all tensors must be on one device, got {sorted(str(d) for d in devices)}"
    return None


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
             scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from vitzoo.kernels.biased_attention_fwd import biased_attention_fwd

    return biased_attention_fwd(q, k, v, bias, scale)


def _forward_fake(q, k, v, bias, scale):
    from vitzoo.kernels._layout import empty_in_layout_of

    batch, heads, lq, _ = q.shape  # the real kernels' output layout, so traced graphs see the same strides
    return empty_in_layout_of(q, (batch, heads, lq, v.shape[-1])), q.new_empty(batch, heads, lq, dtype=torch.float32)


def _backward_impl(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   bias: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor, scale: float,
                   bias_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from vitzoo.kernels.biased_attention_bwd import biased_attention_bwd

    dq, dk, dv, dbias = biased_attention_bwd(grad_out, q, k, v, bias, out, lse, scale, bias_grad)
    # custom ops cannot return None: an empty tensor stands for "no bias gradient"
    return dq, dk, dv, dbias if dbias is not None else q.new_empty(0)


def _backward_fake(grad_out, q, k, v, bias, out, lse, scale, bias_grad):
    from vitzoo.kernels._layout import empty_in_layout_of

    dbias = bias.new_empty(bias.shape) if (bias is not None and bias_grad) else q.new_empty(0)
    return empty_in_layout_of(q), empty_in_layout_of(k), empty_in_layout_of(v), dbias


def _setup_context(ctx, inputs, output):
    q, k, v, bias, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, backward_fn, grad_out, grad_lse):
    q, k, v, bias, out, lse = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dbias = backward_fn(grad_out, q, k, v, bias, out, lse, ctx.scale, bias_grad)
    return dq, dk, dv, (dbias if bias_grad else None), None


_OP = TritonOp("biased_attention", _forward, _forward_fake, _backward_impl, _backward_fake, _setup_context, _backward)


def biased_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                            scale: float) -> torch.Tensor:
    """Run the kernels. q, k, v share one dtype; ``bias`` is None or 4-D (1|B, 1|H, Lq, Lk) (a view, never expanded)."""
    out, _ = _OP(q, k, v, bias, float(scale))
    return out
