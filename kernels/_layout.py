"""Output buffers laid out like the inputs they come from.

Attention inputs are usually head-split views of one projection, e.g. ``qkv(x).view(B, N, 3, H, d)`` seen as
(B, H, N, d) with the token axis outermost in memory. A kernel output or gradient allocated contiguous in the logical
(B, H, N, d) order then has to be copied back to token-major order by the caller (``out.transpose(1, 2).reshape(B, N,
C)`` in the forward, the view's backward for each gradient): a full extra read and write of the tensor, per call.
Allocating the buffer densely in the *memory order* of its source tensor makes those reshapes free views; the kernels
take any strides, so nothing else changes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["empty_in_layout_of"]


def empty_in_layout_of(like: torch.Tensor, shape: Optional[Sequence[int]] = None,
                       dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An uninitialized dense tensor of ``shape`` (default ``like.shape``) whose dims are ordered in memory as
    ``like``'s are (by decreasing stride; ties keep the logical order, so a contiguous ``like`` gives a contiguous
    result). ``shape`` must have ``like``'s number of dims; sizes may differ (e.g. another head dim)."""
    shape = tuple(like.shape) if shape is None else tuple(int(s) for s in shape)
    if len(shape) != like.dim():
        raise ValueError(f"empty_in_layout_of: shape {shape} must have {like.dim()} dims like the reference tensor")
    if like.is_contiguous():  # the common case, without the host work below
        return torch.empty(shape, device=like.device, dtype=dtype or like.dtype)
    strides = like.stride()
    order = sorted(range(like.dim()), key=lambda i: -strides[i])  # stable: ties keep the logical order
    buffer = torch.empty([shape[i] for i in order], device=like.device, dtype=dtype or like.dtype)
    inverse = [0] * len(order)
    for position, dim in enumerate(order):
        inverse[dim] = position
    return buffer.permute(inverse)
