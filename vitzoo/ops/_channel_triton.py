"""Triton path of :func:`vitzoo.ops.channel.channel_attention`: ``vitzoo.kernels.channel_attention_fwd`` / ``_bwd``
registered through :class:`vitzoo.ops._triton_op.TritonOp` (custom ops ``vitzoo::channel_attention_fwd`` / ``_bwd``
with fake impls and autograd, traced by ``torch.compile``). Calls without autograd launch the forward alone, without
saving the softmax. q, k, v that are the slices of one projection output go through the packed twin
``vitzoo::channel_attention_packed_*`` (``vitzoo.ops._packed``)."""
from __future__ import annotations

from typing import Tuple

import torch

from ._packed import packed_source
from ._triton_op import TritonOp

__all__ = ["channel_attention_triton"]


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from vitzoo.kernels.channel_attention_fwd import channel_attention_fwd

    return channel_attention_fwd(q, k, v, scale, save_attn=True)


def _forward_fake(q, k, v, scale):
    from vitzoo.kernels._layout import empty_in_layout_of

    batch, _, heads, head_dim = q.shape
    return empty_in_layout_of(q), q.new_empty((batch, heads, head_dim, head_dim), dtype=torch.float32)


def _backward_impl(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: torch.Tensor,
                   scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from vitzoo.kernels.channel_attention_bwd import channel_attention_bwd

    return channel_attention_bwd(grad_out, q, k, v, attn, scale)


def _backward_fake(grad_out, q, k, v, attn, scale):
    from vitzoo.kernels._layout import empty_in_layout_of

    return empty_in_layout_of(q), empty_in_layout_of(k), empty_in_layout_of(v)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    _, attn = output
    ctx.save_for_backward(q, k, v, attn)
    ctx.scale = scale
    ctx.mark_non_differentiable(attn)


def _backward(ctx, backward_fn, grad_out, grad_attn):
    q, k, v, attn = ctx.saved_tensors
    dq, dk, dv = backward_fn(grad_out, q, k, v, attn, ctx.scale)
    return dq, dk, dv, None


_OP = TritonOp("channel_attention", _forward, _forward_fake, _backward_impl, _backward_fake, _setup_context,
               _backward)


# The same op on packed q, k, v (``vitzoo.ops._packed``): its autograd input is the projection output ``qkv``, whose
# gradient the backward writes in one buffer.
def _forward_packed(qkv: torch.Tensor, pack_dim: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return _forward(*qkv.unbind(pack_dim), scale)


def _forward_packed_fake(qkv, pack_dim, scale):
    return _forward_fake(*qkv.unbind(pack_dim), scale)


def _backward_packed_impl(grad_out: torch.Tensor, qkv: torch.Tensor, pack_dim: int, attn: torch.Tensor,
                          scale: float) -> torch.Tensor:
    from vitzoo.kernels.channel_attention_bwd import channel_attention_bwd

    d_qkv = torch.empty_like(qkv)
    channel_attention_bwd(grad_out, *qkv.unbind(pack_dim), attn, scale, grads=d_qkv.unbind(pack_dim))
    return d_qkv


def _backward_packed_fake(grad_out, qkv, pack_dim, attn, scale):
    return torch.empty_like(qkv)


def _setup_packed_context(ctx, inputs, output):
    qkv, pack_dim, scale = inputs
    ctx.save_for_backward(qkv, output[1])
    ctx.pack_dim, ctx.scale = pack_dim, scale
    ctx.mark_non_differentiable(output[1])


def _backward_packed(ctx, backward_fn, grad_out, grad_attn):
    qkv, attn = ctx.saved_tensors
    return backward_fn(grad_out, qkv, ctx.pack_dim, attn, ctx.scale), None, None


_PACKED_OP = TritonOp("channel_attention_packed", _forward_packed, _forward_packed_fake, _backward_packed_impl,
                      _backward_packed_fake, _setup_packed_context, _backward_packed)


def channel_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Run the kernels on (B, N, heads, d) q, k, v of one dtype; returns out in q's memory order."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        packed = packed_source(q, k, v) if q.requires_grad else None
        out, _ = _PACKED_OP(*packed, float(scale)) if packed is not None else _OP(q, k, v, float(scale))
        return out
    from vitzoo.kernels.channel_attention_fwd import channel_attention_fwd

    return channel_attention_fwd(q, k, v, scale)[0]
