"""Which kernels a training step uses: those with the least host time (eager steps), or those with the least GPU time
(steps whose host time does not count, such as a CUDA graph's warm-up and capture, whose replays cost only GPU time).

The zoo's modules with such a choice ask :func:`host_cost_free` (:mod:`vitzoo.models._norm`'s LayerNorms, DaViT's
position convs: also in inference) or :func:`graph_step_kernels_enabled` (:mod:`vitzoo.models._linear`'s Linear:
training only); ``vitzoo.cuda_graph`` enters :func:`graph_step_kernels`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["graph_step_kernels", "graph_step_kernels_enabled", "host_cost_free"]

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


def host_cost_free() -> bool:
    """Whether a forward may take a path whose extra host cost only matters in eager training: without autograd
    (inference: GPU-bound at the zoo's batch sizes) or inside :func:`graph_step_kernels`."""
    return _ENABLED or not torch.is_grad_enabled()
