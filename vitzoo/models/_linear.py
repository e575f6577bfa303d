"""The zoo's ``nn.Linear``: same module, parameters and state_dict; in graphed training steps its bias gradient is
computed by :func:`vitzoo.ops.linear` (one cuBLAS GEMV instead of torch's column reduction).

Only inside :func:`~vitzoo.models._step_kernels.graph_step_kernels` (a CUDA graph's warm-up and capture): the op is a
Python ``autograd.Function``, whose host cost per call would slow the host-bound eager training steps; a replay has
no host cost. Everywhere else (eager training, inference, CPU) the module is exactly ``nn.Linear``.

timm's ``Mlp`` and the families' attention modules create plain ``nn.Linear``s; :func:`convert_linears` swaps them
for this class after a model is built (a converter, like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``), keeping
the same modules and parameter tensors.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from vitzoo.ops import linear

from ._step_kernels import graph_step_kernels_enabled
from ._swap import swap_classes

__all__ = ["Linear", "convert_linears", "FAST_LINEAR"]

FAST_LINEAR = os.environ.get("VITZOO_FAST_LINEAR", "1") not in ("", "0", "false", "False")


class Linear(nn.Linear):
    """``nn.Linear``; inside graphed training steps its bias gradient is a GEMV (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if FAST_LINEAR and self.bias is not None and graph_step_kernels_enabled() and torch.is_grad_enabled():
            return linear(x, self.weight, self.bias)
        return super().forward(x)


def convert_linears(module: nn.Module) -> nn.Module:
    """Make every plain ``nn.Linear`` in ``module`` (``module`` included; subclasses are left alone) a :class:`Linear`,
    in place; returns ``module``. The class adds no state, so each module keeps its parameters, hooks and flags, and
    the state_dict is unchanged."""
    return swap_classes(module, lambda m: Linear if type(m) is nn.Linear else None)
