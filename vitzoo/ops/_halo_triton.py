"""Triton backend of :func:`vitzoo.ops.halo_attention_2d`: custom ops (forward and backward, with fake
implementations so ``torch.compile`` traces them without graph breaks) and a direct eager path, both through
:class:`vitzoo.ops._triton_op.TritonOp`, and the dtype policy (autocast / common dtype) applied before the kernels
run."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._triton_op import TritonOp
from .halo import HaloArgs

__all__ = ["halo_attention_2d_triton", "unsupported_reason"]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 128  # = vitzoo.kernels._halo_common.MAX_HEAD_DIM (not imported: triton may be absent here)
_INT32_MAX = 2**31 - 1


def _kernel_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """Autocast's dtype when autocast is on for these tensors' device, else the promoted dtype of the inputs."""
    present = [t for t in tensors if t is not None]
    device_type = present[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtype = present[0].dtype
    for t in present[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def unsupported_reason(q, k, v, args: HaloArgs, rel_h=None, rel_w=None) -> Optional[str]:
    dtype = _kernel_dtype(q, k, v, rel_h, rel_w)
    if dtype not in _KERNEL_DTYPES:
        return f"the Triton kernel runs float16, bfloat16 and float32, got {dtype}"
    for name, dim in (("d_qk (q/k head_dim)", args.d_qk), ("d_v (v head_dim)", args.d_v)):
        if dim > _MAX_HEAD_DIM:
            return f"{name} must be <= {_MAX_HEAD_DIM} for the Triton kernel, got {dim}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t[0].numel() > _INT32_MAX:
            return f"{name} has more than 2**31 - 1 elements per batch item (int32 in-image offsets)"
    return None


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    block_size: int,
    halo_size: int,
    scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    from vitzoo.kernels.halo_attention_fwd import halo_attention_fwd

    return halo_attention_fwd(q, k, v, rel_h, rel_w, block_size, halo_size, scale)


def _forward_fake(q, k, v, rel_h, rel_w, block_size, halo_size, scale):
    batch, q_height, q_width, heads, _ = q.shape
    out = q.new_empty((batch, q_height, q_width, heads, v.shape[-1]))
    return out, q.new_empty((batch, heads, q_height, q_width), dtype=torch.float32)


def _backward_impl(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    block_size: int,
    halo_size: int,
    scale: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv, d rel_h, d rel_w); the last two are empty when there are no relative tables."""
    from vitzoo.kernels.halo_attention_bwd import halo_attention_bwd

    dq, dk, dv, drel_h, drel_w = halo_attention_bwd(grad_out, q, k, v, out, lse, rel_h, rel_w, block_size, halo_size,
                                                    scale)
    if rel_h is None:
        return dq, dk, dv, q.new_empty(0), q.new_empty(0)
    return dq, dk, dv, drel_h, drel_w


def _backward_fake(grad_out, q, k, v, out, lse, rel_h, rel_w, block_size, halo_size, scale):
    if rel_h is None:
        drel_h, drel_w = q.new_empty(0), q.new_empty(0)
    else:
        drel_h, drel_w = torch.empty_like(rel_h), torch.empty_like(rel_w)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), drel_h, drel_w


def _setup_context(ctx, inputs, output):
    q, k, v, rel_h, rel_w, block_size, halo_size, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, rel_h, rel_w)
    ctx.geometry = (block_size, halo_size, scale)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, backward_fn, grad_out, _grad_lse):
    q, k, v, out, lse, rel_h, rel_w = ctx.saved_tensors
    dq, dk, dv, drel_h, drel_w = backward_fn(grad_out, q, k, v, out, lse, rel_h, rel_w, *ctx.geometry)
    if rel_h is None:
        drel_h = drel_w = None
    return dq, dk, dv, drel_h, drel_w, None, None, None


_OP = TritonOp("halo_attention", _forward, _forward_fake, _backward_impl, _backward_fake, _setup_context, _backward)


def halo_attention_2d_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    args: HaloArgs,
) -> torch.Tensor:
    """Triton path of :func:`vitzoo.ops.halo_attention_2d` (arguments already validated into ``args``)."""
    dtype = _kernel_dtype(q, k, v, rel_h, rel_w)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if rel_h is not None:
        rel_h, rel_w = rel_h.to(dtype).contiguous(), rel_w.to(dtype).contiguous()
    out, _ = _OP(q, k, v, rel_h, rel_w, args.block, args.halo, args.scale)
    return out
