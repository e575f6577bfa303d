"""The LayerNorm of the zoo's token-layout (..., C) norms: ``nn.LayerNorm`` (same parameters, state_dict and init)
whose inference forward goes through :func:`vitzoo.ops.layer_norm`; likewise timm's ``LayerNorm2d`` over the channels
of an NCHW map.

Without autograd (``torch.no_grad`` / ``inference_mode``) on CUDA that is one Triton kernel that reads the input in
its dtype, computes in fp32 and, under autocast, writes the autocast dtype directly (torch's autocast LayerNorm
writes fp32 that the next Linear casts back: five times the HBM traffic). On the H100 it took nat_tiny inference
from 6268 to 11148 img/s and agent_swin_t to 11903 (kernels/README.md, "Seventh run").

With autograd the module is plain ``nn.LayerNorm``. The op has a Triton backward too, but through a Python
``autograd.Function`` one norm's fwd+bwd cost about 0.4 ms more host time than torch's native one on the lent
machine, and the zoo's training steps are host-bound: nat_tiny training fell from 1464 to 1108 img/s with it.
Where host time does not count, training uses the kernel too: inside
:func:`~vitzoo.models._step_kernels.graph_step_kernels` (entered by
``vitzoo.cuda_graph`` for its warm-up and capture, so replays run the Triton forward and backward: about 10x less GPU
time per norm, kernels/README.md, "Ninth run").
On CPU the op is ``F.layer_norm`` in fp32, so outputs equal timm's and the official models' exactly.
``VITZOO_FAST_NORM=0`` (read at import) makes the modules plain ``nn.LayerNorm`` everywhere (A/B timing, escape
hatch).
"""
from __future__ import annotations

import os

import timm.layers as timm_layers
import torch
from torch import nn

from vitzoo.ops import layer_norm

from ._step_kernels import host_cost_free

__all__ = ["LayerNorm", "LayerNorm2d", "token_norm_layer", "FAST_NORM"]

FAST_NORM = os.environ.get("VITZOO_FAST_NORM", "1") not in ("", "0", "false", "False")


def _use_kernel() -> bool:
    """Whether a norm forward runs the op: without autograd, or inside
    :func:`~vitzoo.models._step_kernels.graph_step_kernels`."""
    return FAST_NORM and host_cost_free()


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dim; without autograd through :func:`vitzoo.ops.layer_norm` (autocast dtype
    out under autocast). See the module docstring for why training keeps torch's norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_kernel():
            return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return super().forward(x)


class LayerNorm2d(timm_layers.LayerNorm2d):
    """timm's ``LayerNorm2d`` (the channels of an NCHW map); without autograd through :func:`vitzoo.ops.layer_norm` on
    the map's (B, H, W, C) view, which is free for channels_last maps. Under autocast it writes the autocast dtype, so
    the residual adds and convolutions after a stem or downsampling norm stay in bf16 instead of fp32 (DaViT-T: five
    such norms took 3.0 of 28.2 ms per inference batch in fp32, kernels/README.md, "Tenth run")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_kernel():
            out = layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
            return out.permute(0, 3, 1, 2)
        return super().forward(x)


def token_norm_layer(name: str) -> type:
    """timm's ``get_norm_layer(name)``, except that ``"layernorm"`` (last dim) and ``"layernorm2d"`` (channels of an
    NCHW map) are ours."""
    return {"layernorm": LayerNorm, "layernorm2d": LayerNorm2d}.get(name) or timm_layers.get_norm_layer(name)
