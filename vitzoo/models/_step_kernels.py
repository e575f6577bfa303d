"""Which kernels a training step uses: those with the least host time (eager steps), or those with the least GPU time
(steps whose host time does not count, such as a CUDA graph's warm-up and capture, whose replays cost only GPU time).

The zoo's modules with such a choice ask :func:`host_cost_free` (:mod:`vitzoo.models._norm`'s LayerNorms, DaViT's
position convs: also in inference) or :func:`graph_step_kernels_enabled` (:mod:`vitzoo.models._linear`'s Linear:
training only); ``vitzoo.cuda_graph`` enters :func:`graph_step_kernels`.
"""
from __future__ import annotations

from typing import ContextManager

import torch

from vitzoo.ops._switch import Switch

__all__ = ["graph_step_kernels", "graph_step_kernels_enabled", "host_cost_free"]

_SWITCH = Switch(False)


def graph_step_kernels(enabled: bool = True) -> ContextManager[None]:
    """Inside the block, forwards that record autograd take the GPU-time-saving paths (Python ``autograd.Function``s
    with Triton or cuBLAS backwards), for steps whose host time does not count."""
    return _SWITCH.set(enabled)


def graph_step_kernels_enabled() -> bool:
    return _SWITCH.enabled


def host_cost_free() -> bool:
    """Whether a forward may take a path whose extra host cost only matters in eager training: without autograd
    (inference: GPU-bound at the zoo's batch sizes) or inside :func:`graph_step_kernels`."""
    return _SWITCH.enabled or not torch.is_grad_enabled()
