"""DaViT's channel attention (Ding et al., "DaViT: Dual Attention Vision Transformers", ECCV 2022; timm's
``ChannelAttention``): per head, a (d x d) softmax over channels, global over the tokens.

``out = q @ softmax(scale * k^T @ v, dim=-1)^T`` on token-major (B, N, heads, d) tensors. The Triton kernels
(``vitzoo.kernels.channel_attention_fwd`` / ``_bwd``) read q, k, v in place, where torch's batched matmuls copy the
head-split views to head-major tensors first and the output back afterwards.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._backend import resolve_backend
from .biased import common_dtype

__all__ = ["channel_attention", "channel_attention_torch"]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"channel_attention: {name} must be a floating-point (B, N, heads, head_dim) tensor, "
                             f"got {got}")
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"channel_attention: q, k, v must have one shape (B, N, heads, head_dim), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def channel_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Pure-torch reference (timm's ``ChannelAttention`` computation, autocast-aware): (B, N, heads, d) in and out."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d)
    attn = (kh.transpose(-1, -2) @ vh).mul_(scale).softmax(dim=-1)  # (B, heads, d, d)
    return (qh @ attn.transpose(-1, -2)).transpose(1, 2)


def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                      backend: str = "auto") -> torch.Tensor:
    """Channel attention of (B, N, heads, head_dim) q, k, v (any strides, e.g. views of one qkv projection).

    Returns (B, N, heads, head_dim) in the inputs' common dtype (autocast's under autocast); the Triton result (and
    the gradients) follow q's (k's, v's) memory order, so for token-major views ``.reshape(B, N, heads * head_dim)``
    is a view. ``scale`` defaults to ``head_dim ** -0.5``. Gradients flow to q, k and v.
    """
    _check(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    dtype = common_dtype(q, k, v)

    def unsupported() -> Optional[str]:
        from vitzoo.kernels.channel_attention_fwd import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS

        if dtype not in SUPPORTED_DTYPES:
            return f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}"
        if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
            return f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}"
        return None

    if resolve_backend(backend, q, k, v, op="channel_attention", unsupported_reason=unsupported) == "triton":
        from ._channel_triton import channel_attention_triton

        return channel_attention_triton(q.to(dtype), k.to(dtype), v.to(dtype), scale)
    return channel_attention_torch(q, k, v, scale)
