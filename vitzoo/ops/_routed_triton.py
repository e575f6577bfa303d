"""Triton backend of :func:`vitzoo.ops.routed_attention` (BiFormer's bi-level routing attention): the kernels in
``vitzoo.kernels.routed_*`` registered through :class:`vitzoo.ops._triton_op.TritonOp` (custom ops with fake
implementations and autograd for ``torch.compile``; a direct eager path otherwise)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..kernels._routed_common import MAX_HEAD_DIM
from ..kernels.routed_bwd import routed_bwd
from ..kernels.routed_fwd import routed_fwd
from ._triton_op import TritonOp
from .routed import RoutedArgs

__all__ = ["routed_attention_triton", "unsupported_reason"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: RoutedArgs) -> Optional[str]:
    """None when the Triton kernels handle this call, else why not."""
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype must be one of float16, bfloat16, float32 (one for q, k, v), got {q.dtype}, {k.dtype}, {v.dtype}"
    if args.head_dim > MAX_HEAD_DIM or args.v_dim > MAX_HEAD_DIM:
        return f"head_dim and v head_dim must be <= {MAX_HEAD_DIM}, got {args.head_dim} and {args.v_dim}"
    return None


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, n_win: int,
             scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return routed_fwd(q, k, v, index, n_win, scale)


def _forward_fake(q, k, v, index, n_win, scale):
    return q.new_empty(q.shape[:4] + v.shape[4:], dtype=q.dtype), q.new_empty(q.shape[:4], dtype=torch.float32)


def _backward_impl(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, index: torch.Tensor, n_win: int,
                   scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return routed_bwd(grad_out, q, k, v, out, lse, index, n_win, scale)


def _backward_fake(grad_out, q, k, v, out, lse, index, n_win, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, index, n_win, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, index)
    ctx.n_win, ctx.scale = n_win, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, backward_fn, grad_out, grad_lse):
    q, k, v, out, lse, index = ctx.saved_tensors
    dq, dk, dv = backward_fn(grad_out, q, k, v, out, lse, index, ctx.n_win, ctx.scale)
    return dq, dk, dv, None, None, None


_OP = TritonOp("routed_attention", _forward, _forward_fake, _backward_impl, _backward_fake, _setup_context, _backward)


def routed_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor,
                            args: RoutedArgs) -> torch.Tensor:
    """Routed attention through the Triton kernels; q, k, v of one supported dtype, natural layout."""
    out, _ = _OP(q, k, v, index, args.n_win, args.scale)
    return out
