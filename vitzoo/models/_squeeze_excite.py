"""timm's ``SEModule`` with a training forward on :func:`vitzoo.ops.squeeze_excite` (the gate multiply, its
gradients and the pooling's gradient in two Triton passes; the gate MLP stays torch). Same parameters and state dict.

Taken on CUDA channels_last maps while autograd records, inside CUDA-graphed training steps
(:func:`~vitzoo.models._step_kernels.fused_training_enabled`; ``fused_backend="triton"`` forces it). Inference
keeps its own paths (MaxViT's fused MBConv gates in place); eager training, an SE with ``add_maxpool`` or a norm
layer, and CPU tensors run timm's forward.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import SEModule

from vitzoo.ops import squeeze_excite

from ._step_kernels import fused_training_enabled
from ._swap import swap_classes

__all__ = ["FusedSEModule", "fuse_se_modules"]


class FusedSEModule(SEModule):
    """timm's ``SEModule``; training on CUDA through the fused op. ``fused_backend``: ``"auto" | "torch" |
    "triton"``."""

    fused_backend: str = "auto"

    def _gate(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc2(self.act(self.bn(self.fc1(pooled)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not torch.is_grad_enabled() or self.add_maxpool or not isinstance(self.bn, nn.Identity)
                or not fused_training_enabled(self.fused_backend)):
            return super().forward(x)
        params = [p for p in self.parameters() if p.requires_grad]
        return squeeze_excite(x, self._gate, params, backend=self.fused_backend)


def fuse_se_modules(module: nn.Module, backend: str = "auto") -> nn.Module:
    """Make every timm ``SEModule`` inside ``module`` a :class:`FusedSEModule` (a subclass that only overrides
    ``forward``: parameters and state dict unchanged) running the fused op on ``backend``."""
    return swap_classes(module, lambda m: FusedSEModule if type(m) is SEModule else None, fused_backend=backend)
