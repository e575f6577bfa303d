"""Which kernels a training step uses: those with the least host time (eager steps), or those with the least GPU time
(steps whose host time does not count, such as a CUDA graph's warm-up and capture, whose replays cost only GPU time).

The zoo's modules with such a choice ask :func:`host_cost_free` (:mod:`vitzoo.models._norm`'s LayerNorms, DaViT's
position convs: also in inference), :func:`graph_step_kernels_enabled` (:mod:`vitzoo.models._linear`'s Linear:
training only) or :func:`fused_training_enabled` (the conv blocks' BatchNorm, SE and depthwise training ops);
``vitzoo.cuda_graph`` enters :func:`graph_step_kernels`.
"""
from __future__ import annotations

from typing import ContextManager

import torch

from vitzoo.ops._switch import Switch

__all__ = ["graph_step_kernels", "graph_step_kernels_enabled", "host_cost_free", "fused_training_enabled"]

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


def fused_training_enabled(backend: str) -> bool:
    """Whether a module's fused training op may run (:mod:`vitzoo.models._batch_norm_act`, ``_squeeze_excite``,
    ``_tf_same``'s depthwise path): always when forced (``backend="triton"``), never on ``"torch"``, and on ``"auto"``
    only inside :func:`graph_step_kernels`. Their Python autograd Functions cost more host time than torch's few
    native calls, and an eager train step of these models is host-bound: with them, MaxViT-T's eager step fell from
    1185 to 893 img/s while its GPU time fell 82 -> 60 ms (kernels/README.md, "Sixteenth run")."""
    if backend == "triton":
        return True
    return backend == "auto" and _SWITCH.enabled
