"""Triton path of :func:`vitzoo.ops.layer_norm.layer_norm`: the kernels of ``vitzoo.kernels.layer_norm_*``
registered through :class:`vitzoo.ops._triton_op.TritonOp` (custom ops ``vitzoo::layer_norm_fwd`` / ``_bwd`` with
fake impls and autograd, traced by ``torch.compile``; a direct eager path otherwise)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..kernels.layer_norm_bwd import layer_norm_bwd
from ..kernels.layer_norm_fwd import MAX_CHANNELS, layer_norm_fwd
from ._triton_op import TritonOp

__all__ = ["layer_norm_triton", "unsupported_reason"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unsupported_reason(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                       out_dtype: torch.dtype) -> Optional[str]:
    """None when the Triton kernels handle this call (arguments already validated), else why not."""
    if x.dtype not in _DTYPES or out_dtype not in _DTYPES:
        return f"x and output dtypes must be float16, bfloat16 or float32, got {x.dtype} and {out_dtype}"
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in _DTYPES:
            return f"{name} dtype must be float16, bfloat16 or float32, got {t.dtype}"
    if not 1 <= x.shape[-1] <= MAX_CHANNELS:
        return f"normalized_shape (the last dim) must be in 1..{MAX_CHANNELS}, got {x.shape[-1]}"
    devices = {t.device for t in (x, weight, bias) if t is not None}
    if len(devices) != 1:
        return f"all tensors must be on one device, got {sorted(str(d) for d in devices)}"
    return None


def _forward(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
             out_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    return layer_norm_fwd(x, weight, bias, eps, out_dtype)


def _forward_fake(x, weight, bias, eps, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty((2, x.shape[0]), dtype=torch.float32)


def _backward_impl(grad_y: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], stats: torch.Tensor,
                   need_dweight: bool, need_dbias: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    dx, dparams = layer_norm_bwd(grad_y, x, weight, stats, need_dweight, need_dbias)
    # custom ops cannot return None: an empty tensor stands for "no parameter gradient"
    return dx, (dparams if dparams is not None else x.new_empty(0))


def _backward_fake(grad_y, x, weight, stats, need_dweight, need_dbias):
    n_params = int(need_dweight) + int(need_dbias)
    dparams = x.new_empty((n_params, x.shape[1]), dtype=torch.float32) if n_params else x.new_empty(0)
    return x.new_empty(x.shape), dparams


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, out_dtype = inputs
    _, stats = output
    ctx.save_for_backward(x, weight, stats)
    ctx.weight_dtype = weight.dtype if weight is not None else None
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.mark_non_differentiable(stats)


def _backward(ctx, backward_fn, grad_y, grad_stats):
    x, weight, stats = ctx.saved_tensors
    need_dweight = ctx.weight_dtype is not None and ctx.needs_input_grad[1]
    need_dbias = ctx.bias_dtype is not None and ctx.needs_input_grad[2]
    dx, dparams = backward_fn(grad_y, x, weight, stats, need_dweight, need_dbias)
    # rows of dparams: dweight (if wanted), then dbias (if wanted); views, cast only when a parameter is not fp32
    dweight = dparams[0].to(ctx.weight_dtype) if need_dweight else None
    dbias = dparams[-1].to(ctx.bias_dtype) if need_dbias else None
    return dx, dweight, dbias, None, None


_OP = TritonOp("layer_norm", _forward, _forward_fake, _backward_impl, _backward_fake, _setup_context, _backward)


def layer_norm_triton(x2d: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                      out_dtype: torch.dtype) -> torch.Tensor:
    """Run the kernels on an (M, C) view with channel stride 1; returns y (M, C) in ``out_dtype``."""
    y, _ = _OP(x2d, weight, bias, float(eps), out_dtype)
    return y
