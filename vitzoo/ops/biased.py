"""Dense attention with a broadcastable additive logit bias (the building block of Agent attention, Han et al.,
"Agent Attention: On the Integration of Softmax and Linear Attention", ECCV 2024, and of any attention whose bias is
too irregular for a relative-position table)."""
from __future__ import annotations

from typing import Optional

import torch

from ._backend import resolve_backend

__all__ = ["biased_attention", "biased_attention_torch", "BiasedArgs"]


class BiasedArgs:
    """Validated arguments of one biased-attention call; ``bias4`` is the bias viewed as (1|B, 1|H, Lq, Lk)."""

    def __init__(self, q, k, v, bias, scale, op: str = "biased_attention"):
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(f"{op}: {name} must be a 4-D tensor (B, heads, L, head_dim), got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if not t.is_floating_point():
                raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
        if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
            raise ValueError(f"{op}: q, k, v must share (B, heads); got {tuple(q.shape)}, {tuple(k.shape)}, "
                             f"{tuple(v.shape)}")
        if k.shape[3] != q.shape[3]:
            raise ValueError(f"{op}: k head_dim must equal q head_dim {q.shape[3]}, got {k.shape[3]}")
        if v.shape[2] != k.shape[2]:
            raise ValueError(f"{op}: v must have as many tokens as k ({k.shape[2]}), got {v.shape[2]}")
        self.batch, self.heads, self.lq, self.head_dim = q.shape
        self.lk, self.v_dim = k.shape[2], v.shape[3]
        self.bias4 = None
        if bias is not None:
            self.bias4 = _bias_as_4d(bias, self.batch, self.heads, self.lq, self.lk, op)
        self.scale = float(scale) if scale is not None else self.head_dim ** -0.5


def _bias_as_4d(bias, batch: int, heads: int, lq: int, lk: int, op: str) -> torch.Tensor:
    accepted = "(Lq, Lk), (heads, Lq, Lk) or (1|B, 1|heads, Lq, Lk)"
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
        raise ValueError(f"{op}: bias must be a floating-point tensor of shape {accepted}")
    shape = tuple(bias.shape)
    if bias.dim() not in (2, 3, 4) or shape[-2:] != (lq, lk):
        raise ValueError(f"{op}: bias must have shape {accepted} with (Lq, Lk) = {(lq, lk)}, got {shape}")
    if bias.dim() == 3 and shape[0] not in (1, heads):
        raise ValueError(f"{op}: a 3-D bias must be (heads={heads} or 1, Lq, Lk), got {shape}")
    if bias.dim() == 4 and (shape[0] not in (1, batch) or shape[1] not in (1, heads)):
        raise ValueError(f"{op}: a 4-D bias must be (1|B={batch}, 1|heads={heads}, Lq, Lk), got {shape}")
    return bias.reshape((1,) * (4 - bias.dim()) + shape)  # a view: leading singleton dims only


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _BiasedAttentionTorch(torch.autograd.Function):
    """Reference with a hand-written backward. The (B, H, Lq, Lk) probabilities are the one saved map (inherent to a
    non-fused dense attention); the backward reuses one more map-sized buffer for dP -> dS in place. Low-precision
    inputs are computed in float32."""

    @staticmethod
    def forward(ctx, q, k, v, bias4, scale: float):
        cdt = _compute_dtype(q.dtype)
        qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
        logits = torch.matmul(qc, kc.transpose(-1, -2)).mul_(scale)
        if bias4 is not None:
            logits.add_(bias4.to(cdt))
        probs = torch.softmax(logits, dim=-1)
        del logits
        out = torch.matmul(probs, vc)
        ctx.save_for_backward(q, k, v, probs, out)
        ctx.scale = scale
        ctx.bias_shape = None if bias4 is None else bias4.shape
        ctx.bias_dtype = None if bias4 is None else bias4.dtype
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs, out = ctx.saved_tensors
        cdt = probs.dtype
        qc, kc, vc, go = q.to(cdt), k.to(cdt), v.to(cdt), grad_out.to(cdt)
        grad_v = torch.matmul(probs.transpose(-1, -2), go)
        delta = (go * out).sum(-1, keepdim=True)  # rowsum(P * dP) == rowsum(dO * O)
        grad_logits = torch.matmul(go, vc.transpose(-1, -2)).sub_(delta).mul_(probs)
        grad_q = torch.matmul(grad_logits, kc).mul_(ctx.scale)
        grad_k = torch.matmul(grad_logits.transpose(-1, -2), qc).mul_(ctx.scale)
        grad_bias = None
        if ctx.bias_shape is not None and ctx.needs_input_grad[3]:
            grad_bias = grad_logits.sum_to_size(ctx.bias_shape).to(ctx.bias_dtype)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_bias, None


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype active for ``device_type``, or None (torch >= 2.4 API with a fallback for CUDA)."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # pragma: no cover - older torch: no device-type argument
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" and torch.is_autocast_enabled() else None


def common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Autocast's dtype when autocast is on for the tensors' device, else the promoted dtype of the tensors."""
    dtype = _autocast_dtype(tensors[0].device.type)
    if dtype is not None:
        return dtype
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def biased_attention_torch(q, k, v, bias=None, scale=None) -> torch.Tensor:
    """Pure-torch reference of :func:`biased_attention` (CPU and fallback path; any float dtype incl. float64)."""
    args = BiasedArgs(q, k, v, bias, scale)
    return _run_torch(q, k, v, args)


def _run_torch(q, k, v, args: BiasedArgs) -> torch.Tensor:
    dtype = common_dtype(q, k, v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    with torch.autocast(q.device.type, enabled=False):
        return _BiasedAttentionTorch.apply(q, k, v, args.bias4, args.scale)


def biased_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Dense attention with an additive logit bias broadcast over batch and/or heads.

    Args:
        q: (B, heads, Lq, d). k: (B, heads, Lk, d). v: (B, heads, Lk, d_v) (the SDPA layout; any strides).
        bias: optional additive logit bias of shape (Lq, Lk), (heads, Lq, Lk), (1, Lq, Lk) or (1|B, 1|heads, Lq, Lk);
            it may require grad (its gradient is summed over the broadcast dims, returned in its own shape) and may
            hold -inf entries (masking; a fully masked row gives NaN, as torch.softmax does).
        scale: logit scale, default ``d ** -0.5``.
        backend: "auto" | "torch" | "triton" (see :mod:`vitzoo.ops._backend`; env ``VITZOO_ATTN_BACKEND`` wins).
            The Triton kernels need d, d_v in (16, 32, 64) and fp16/bf16/fp32.

    Semantics: ``out = softmax(scale * q @ k^T + bias, dim=-1) @ v`` (per batch and head), i.e. SDPA with a float
    ``attn_mask``. q, k, v are cast to a common dtype (autocast's when it is on, else their promoted dtype); the
    bias keeps its own dtype and is added in float32. Low-precision inputs are accumulated in float32.

    Returns (B, heads, Lq, d_v) in the common dtype.
    """
    args = BiasedArgs(q, k, v, bias, scale)

    def unsupported():
        from ._biased_triton import unsupported_reason

        return unsupported_reason(q, k, v, args.bias4, common_dtype(q, k, v))

    if resolve_backend(backend, q, k, v, bias, op="biased_attention", unsupported_reason=unsupported) == "triton":
        from ._biased_triton import biased_attention_triton

        dtype = common_dtype(q, k, v)
        return biased_attention_triton(q.to(dtype), k.to(dtype), v.to(dtype), args.bias4, args.scale)
    return _run_torch(q, k, v, args)
