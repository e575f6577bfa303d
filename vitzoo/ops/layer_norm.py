"""LayerNorm over the last dim, for the norms inside vision-transformer blocks, with a Triton backend that writes its
output directly in the autocast dtype.

Why: under bf16 autocast ``torch.nn.functional.layer_norm`` (an fp32-policy op) casts the bf16 input to fp32 and
writes an fp32 output, which the next autocast Linear casts back to bf16: about 20 bytes of HBM traffic per element
where 4 would do, and torch's CUDA kernel is slow for the small C (64-768) of vision transformers. The kernels
(``vitzoo.kernels.layer_norm_fwd`` / ``_bwd``) read x in its dtype, compute in fp32 and write the output in the
dtype the next autocast op consumes.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ._backend import resolve_backend
from .biased import common_dtype

__all__ = ["layer_norm", "layer_norm_torch", "layer_norm_output_dtype"]

_AUTOCAST_ELIGIBLE = (torch.float16, torch.bfloat16, torch.float32)  # autocast never casts float64 either


def _channels(x: torch.Tensor, normalized_shape: Union[int, Sequence[int]]) -> int:
    """The normalized size C = x.shape[-1]; ValueError for anything but an int or a 1-sequence equal to it."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"layer_norm: x must be a floating-point tensor, got "
                         f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    accepted = "an int or a 1-tuple equal to x.shape[-1] (only the last dim is normalized)"
    size = normalized_shape
    if isinstance(size, (tuple, list, torch.Size)) and len(size) == 1:
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"layer_norm: normalized_shape must be {accepted}, got {normalized_shape!r}")
    if x.dim() == 0 or size != x.shape[-1]:
        raise ValueError(f"layer_norm: normalized_shape must be {accepted}; got {normalized_shape!r} for x of shape "
                         f"{tuple(x.shape)}")
    return size


def _check_param(name: str, t: Optional[torch.Tensor], channels: int) -> None:
    if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (channels,)):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"layer_norm: {name} must be None or a tensor of shape ({channels},), got {shape}")


def layer_norm_output_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for x's device type and x is fp16/bf16/fp32 (what the next autocast
    Linear consumes), else x.dtype."""
    return common_dtype(x) if x.dtype in _AUTOCAST_ELIGIBLE else x.dtype


def layer_norm_torch(x: torch.Tensor, normalized_shape: Union[int, Sequence[int]],
                     weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                     eps: float = 1e-5) -> torch.Tensor:
    """Pure-torch reference of :func:`layer_norm` (CPU and fallback path; float64 is computed in float64)."""
    channels = _channels(x, normalized_shape)
    _check_param("weight", weight, channels)
    _check_param("bias", bias, channels)
    return _run_torch(x, channels, weight, bias, eps, layer_norm_output_dtype(x))


def _run_torch(x, channels: int, weight, bias, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        y = F.layer_norm(x.to(cdt), (channels,), weight.to(cdt) if weight is not None else None,
                         bias.to(cdt) if bias is not None else None, eps)
    return y.to(out_dtype)


def layer_norm(
    x: torch.Tensor,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    backend: str = "auto",
) -> torch.Tensor:
    """``torch.nn.functional.layer_norm`` over the last dim, with an autocast-aware output dtype.

    Args:
        x: (..., C), any leading shape and strides.
        normalized_shape: C, as an int or a 1-tuple (only the last dim can be normalized).
        weight, bias: None or (C,) (either may be absent; any float dtype; gradients in their own dtype).
        eps: added to the biased variance.
        backend: "auto" | "torch" | "triton" (see :mod:`vitzoo.ops._backend`; env ``VITZOO_ATTN_BACKEND`` wins).
            "auto" takes Triton for CUDA fp16/bf16/fp32 inputs with C <= 16384.

    Returns y = (x - mean) / sqrt(var + eps) * weight + bias of x's shape (contiguous), computed in float32 (float64
    for float64 inputs on the torch path), in the autocast dtype when autocast is on for x's device type and x is
    fp16/bf16/fp32 (what the next autocast Linear consumes; torch would return float32), else in x.dtype.
    """
    channels = _channels(x, normalized_shape)
    _check_param("weight", weight, channels)
    _check_param("bias", bias, channels)
    out_dtype = layer_norm_output_dtype(x)

    def unsupported():
        from ._layer_norm_triton import unsupported_reason

        return unsupported_reason(x, weight, bias, out_dtype)

    if resolve_backend(backend, x, weight, bias, op="layer_norm", unsupported_reason=unsupported) == "triton":
        from ._layer_norm_triton import layer_norm_triton

        x2d = (x if x.stride(-1) == 1 else x.contiguous()).reshape(-1, channels)  # a view when rows are strided
        return layer_norm_triton(x2d, weight, bias, eps, out_dtype).view(x.shape)
    return _run_torch(x, channels, weight, bias, eps, out_dtype)
