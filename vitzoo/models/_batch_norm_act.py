"""timm's ``BatchNormAct2d`` with a training forward on :func:`vitzoo.ops.batch_norm_act`: the batch statistics,
the transform and the activation as two Triton passes forward and two backward (torch: five and three, see the op).
Same parameters, buffers and state dict; running statistics and ``num_batches_tracked`` move exactly as in timm.

Training on CUDA takes the fused op inside CUDA-graphed steps (``fused_backend="auto"``, see
:func:`~vitzoo.models._step_kernels.fused_training_enabled`; ``"triton"`` forces it everywhere). Eval mode (where
the inference paths fold the BatchNorms into their convolutions), eager training, CPU tensors, ``torch.compile``
tracing, dropout between norm and activation and activations the op does not have run timm's forward.

``forward_fused`` also serves the fused block tails (residual, and a shortcut's norm as ``residual_bn``) and
``forward_fused_max_pool`` the pooled stem (``vitzoo/models/_conv_norm_act.py``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, GELUTanh
from timm.layers.activations import GELU as TimmGELU

from vitzoo.ops import ResidualNorm, batch_norm_act, batch_norm_act_max_pool
from vitzoo.ops._backend import resolve_backend

from ._step_kernels import fused_training_enabled
from ._swap import swap_classes

__all__ = ["FusedBatchNormAct2d", "fuse_batch_norm_acts", "fused_act_name"]


def fused_act_name(act: nn.Module) -> Optional[str]:
    """The op's name for an activation module (None when the op does not have it)."""
    if type(act) is nn.Identity:
        return "none"
    if type(act) is nn.ReLU:
        return "relu"
    if type(act) is GELUTanh or (type(act) is nn.GELU and act.approximate == "tanh"):
        return "gelu_tanh"
    if type(act) is TimmGELU or (type(act) is nn.GELU and act.approximate == "none"):
        return "gelu"
    if type(act) is nn.SiLU:
        return "silu"
    return None


class FusedBatchNormAct2d(BatchNormAct2d):
    """timm's ``BatchNormAct2d``; in graphed training steps on CUDA, one fused op (module docstring).
    ``fused_backend``: ``"auto" | "torch" | "triton"`` (``"triton"``: always, on CPU under ``TRITON_INTERPRET=1``)."""

    fused_backend: str = "auto"

    def fused_training(self, x: torch.Tensor) -> bool:
        """Whether this forward takes the fused op."""
        # cheapest first: eager steps (the common case on "auto") leave at the first test
        if not (self.training and fused_training_enabled(self.fused_backend)) or torch.compiler.is_compiling():
            return False
        if not isinstance(self.drop, nn.Identity) or fused_act_name(self.act) is None:
            return False
        return resolve_backend(self.fused_backend, x, op="BatchNormAct2d (fused training)") == "triton"

    def _momentum(self) -> float:
        """timm's / torch's update factor, with ``num_batches_tracked`` bumped as their forward does."""
        if not self.track_running_stats:
            return 0.0
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative average (as torch: a host sync)
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def _running(self) -> tuple:
        tracked = self.track_running_stats
        return (self.running_mean if tracked else None), (self.running_var if tracked else None)

    def residual_norm(self) -> ResidualNorm:
        """This norm (training mode) as the residual BatchNorm of another's fused op (its counters bumped)."""
        return ResidualNorm(self.weight, self.bias, *self._running(), self._momentum(), self.eps)

    def forward_fused(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, act: Optional[str] = None,
                      residual_bn: Optional["FusedBatchNormAct2d"] = None) -> torch.Tensor:
        """``act(bn(x) [+ residual])`` in training mode; ``act`` defaults to this module's own activation. With
        ``residual_bn`` (a shortcut's norm, no activation) the residual is its input: ``act(bn(x) +
        residual_bn(residual))`` as one op."""
        momentum = self._momentum()
        return batch_norm_act(x, self.weight, self.bias, *self._running(), momentum, self.eps,
                              act or fused_act_name(self.act), residual, backend=self.fused_backend,
                              residual_norm=None if residual_bn is None else residual_bn.residual_norm())

    def forward_fused_max_pool(self, x: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
        """``max_pool2d(act(bn(x)), kernel_size, stride, padding)`` in training mode as one op (a stem's end)."""
        momentum = self._momentum()
        return batch_norm_act_max_pool(x, self.weight, self.bias, *self._running(), momentum, self.eps,
                                       fused_act_name(self.act), kernel_size, stride, padding,
                                       backend=self.fused_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused_training(x):
            return super().forward(x)
        return self.forward_fused(x)


def fuse_batch_norm_acts(module: nn.Module, backend: str = "auto") -> nn.Module:
    """Make every timm ``BatchNormAct2d`` inside ``module`` a :class:`FusedBatchNormAct2d` (a subclass that only
    overrides ``forward``: parameters, buffers and state dict unchanged) running the fused op on ``backend``."""
    return swap_classes(module, lambda m: FusedBatchNormAct2d if type(m) is BatchNormAct2d else None,
                        fused_backend=backend)
