"""q, k, v that are the three slices of one projection output ("packed"), e.g. ``qkv(x).view(B, N, 3, heads, d)
.unbind(2)``.

Autograd's backward of ``unbind`` stacks the three gradients into one tensor: a full extra read and write of the
projection's gradient per attention call (2.7 ms of a MaxViT-T training step on the H100, 1.9 ms of DaViT-S's). An
op that finds its q, k, v packed takes the projection output itself as its autograd input instead and writes dq, dk,
dv straight into the three slices of one gradient buffer. Using a view of the projection output in place of the
three views changes nothing else: where q, k or v also feed other ops, their gradients still reach the projection
through ``unbind``'s backward, and autograd sums the two.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["packed_source"]


def _same_layout(a: Tuple[int, ...], b: Tuple[int, ...], shape: Tuple[int, ...]) -> bool:
    return all(x == y for x, y, n in zip(a, b, shape) if n > 1)  # size-1 dims' strides carry no meaning


def _derives_from(view: torch.Tensor, base: torch.Tensor, max_depth: int = 8) -> bool:
    """Whether ``view``'s autograd history reaches ``base`` through single-input (view) nodes only: a ``_base`` can be
    a tensor outside the graph (a custom autograd Function's internal result that its output is a view of), and a
    view of that would silently cut the gradient off."""
    node = view.grad_fn
    for _ in range(max_depth):
        if node is None:
            return False
        if node is base.grad_fn or getattr(node, "variable", None) is base:  # an AccumulateGrad node holds its leaf
            return True
        inputs = [n for n, _ in node.next_functions if n is not None]
        if len(inputs) != 1:
            return False
        node = inputs[0]
    return False


def packed_source(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[Tuple[torch.Tensor, int]]:
    """``(qkv, dim)`` such that ``qkv.unbind(dim)`` are exactly q, k, v, with ``qkv`` a view of the one contiguous
    tensor q, k and v are views of (their dims in memory order, as the projections' token-major slices are); None
    otherwise, and under ``torch.compile``, which traces the unpacked op."""
    if torch.compiler.is_compiling():
        return None
    base = q._base
    if base is None or k._base is not base or v._base is not base or not base.is_contiguous():
        return None
    if q.requires_grad and not all(_derives_from(t, base) for t in (q, k, v)):
        return None
    shape, strides = tuple(q.shape), q.stride()
    if not (shape == tuple(k.shape) == tuple(v.shape) and base.numel() == 3 * q.numel() and q.numel() > 0
            and q.storage_offset() == base.storage_offset()
            and _same_layout(strides, k.stride(), shape) and _same_layout(strides, v.stride(), shape)):
        return None
    step = k.storage_offset() - q.storage_offset()
    if step <= 0 or v.storage_offset() - k.storage_offset() != step:
        return None
    # the packing dim goes in front of the first (non-trivial) dim with a smaller stride than the step between slices
    dim = next((i for i, (s, n) in enumerate(zip(strides, shape)) if n > 1 and s < step), len(shape))
    qkv = base.view(shape[:dim] + (3,) + shape[dim:])
    if qkv.stride(dim) != step or not _same_layout(qkv.select(dim, 0).stride(), strides, shape):
        return None
    return qkv, dim
