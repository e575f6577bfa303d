"""Index arithmetic of generalized neighborhood attention along one axis (shared by the torch reference, the Triton
launchers and the tests' brute-force masks).

Semantics follow NATTEN (neighborhood, dilated and strided neighborhood attention), for one axis of length ``L``,
kernel ``k``, dilation ``d`` and stride ``s``:

* a position ``i`` belongs to dilation group ``g = i % d``; the group is the sub-lattice ``g, g + d, g + 2d, ...`` of
  length ``L_g = ceil((L - g) / d)`` in which ``i`` sits at index ``ii = i // d``;
* queries are grouped in runs of ``s`` along the sub-lattice; every query of a run uses the window of the run's
  *leader*, ``min((ii // s) * s + s // 2, L_g - 1)``;
* the window is ``k`` consecutive sub-lattice positions starting at ``clamp(leader - k // 2, 0, L_g - k)``: windows
  at the borders are shifted inward, never padded.

With ``s == k`` and ``L`` a multiple of ``k * d`` this is non-overlapping window attention (``d == 1``: Swin/MaxViT
block windows; ``d == L // k``: MaxViT grid attention).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AxisWindows:
    """Per-query window description along one axis.

    ``start[i]``: absolute position of the first key of query ``i``'s window (keys are ``start[i] + d * a`` for
    ``a in range(k)``); ``local[i]``: the query's own index inside that window (``0 <= local < k``), used for the
    relative-position index ``a - local + k - 1`` and the dense-bias row.
    """

    start: torch.Tensor
    local: torch.Tensor


def check_axis(length: int, kernel: int, dilation: int, stride: int, axis: str) -> None:
    if kernel < 1:
        raise ValueError(f"kernel_size must be >= 1 along {axis}, got {kernel}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1 along {axis}, got {dilation}")
    if not 1 <= stride <= kernel:
        raise ValueError(f"stride must satisfy 1 <= stride <= kernel_size ({kernel}) along {axis}, got {stride}")
    if kernel * dilation > length:
        raise ValueError(
            f"kernel_size * dilation must be <= the feature size along {axis}: "
            f"{kernel} * {dilation} = {kernel * dilation} > {length}"
        )


def axis_windows(length: int, kernel: int, dilation: int, stride: int, device=None) -> AxisWindows:
    i = torch.arange(length, device=device)
    group = i % dilation
    ii = i // dilation
    group_len = (length - group + dilation - 1) // dilation
    leader = torch.minimum((ii // stride) * stride + stride // 2, group_len - 1)
    start_sub = torch.minimum(torch.clamp(leader - kernel // 2, min=0), group_len - kernel)
    return AxisWindows(start=group + dilation * start_sub, local=ii - start_sub)
