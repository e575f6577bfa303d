"""Which kernels a training step uses: those with the least host time (eager steps), or those with the least GPU time
(steps whose host time does not count, such as a CUDA graph's warm-up and capture, whose replays cost only GPU time).

The zoo's modules with such a choice (:mod:`vitzoo.models._norm`'s LayerNorms, :mod:`vitzoo.models._linear`'s
Linear) ask :func:`graph_step_kernels_enabled`; ``vitzoo.cuda_graph`` enters :func:`graph_step_kernels`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["graph_step_kernels", "graph_step_kernels_enabled"]

_ENABLED = False


@contextlib.contextmanager
def graph_step_kernels(enabled: bool = True) -> Iterator[None]:
    """Inside the block, forwards that record autograd take the GPU-time-saving paths (Python ``autograd.Function``s
    with Triton or cuBLAS backwards), for steps whose host time does not count."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, enabled
    try:
        yield
    finally:
        _ENABLED = previous


def graph_step_kernels_enabled() -> bool:
    return _ENABLED
