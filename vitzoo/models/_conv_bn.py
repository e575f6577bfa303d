"""Convolution + BatchNorm as one convolution in inference, on the same parameters (state dicts unchanged).

In eval mode a BatchNorm after a convolution is an affine map per output channel, so ``bn(conv(x))`` equals one
convolution with weight ``w * s`` and bias ``beta + (b - mean) * s``, ``s = gamma / sqrt(var + eps)``. Folding saves a
full pass over the activation and, on a host-bound GPU, the BatchNorm call's host time (EfficientViT-M5 runs 135 of
them per forward). The folded weights are built once and cached (``vitzoo.ops._weight_cache``: rebuilt when any
parameter or running statistic changes), in the autocast dtype under autocast, which also saves the weight cast of
every convolution call. Training, and anything recording autograd through the parameters, runs the two modules.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.models.efficientvit_msra import ConvNorm

from vitzoo.ops._weight_cache import cached_or_built

from ._batch_norm_act import FusedBatchNormAct2d
from ._swap import swap_classes

__all__ = ["conv_bn", "folded_conv_bn", "bn_affine", "autocast_dtype", "foldable_bn_act", "folding_allowed",
           "FoldingConvNorm", "fold_conv_norms"]


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def foldable_bn_act(bn: nn.Module, act: type) -> bool:
    """A timm ``BatchNormAct2d`` an inference forward can fold: running statistics, no dropout, activation exactly
    ``act`` (``nn.Identity`` for a plain BN)."""
    return (type(bn) in (BatchNormAct2d, FusedBatchNormAct2d) and bn.running_var is not None
            and isinstance(bn.drop, nn.Identity)
            and type(bn.act) is act)


def folding_allowed(module: nn.Module) -> bool:
    """Whether a forward may fold BatchNorms: eval mode, no autograd recording, not traced by ``torch.compile``
    (Inductor fuses BN and activations itself)."""
    return not (module.training or torch.is_grad_enabled() or torch.compiler.is_compiling())


def bn_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) fp32 of an eval-mode BatchNorm: ``bn(x) == x * scale + shift`` per channel."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.float() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.float()
        shift = -bn.running_mean.float() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.float()
        return scale, shift


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        scale, shift = bn_affine(bn)
        if conv.bias is not None:
            shift = shift + conv.bias.float() * scale
        weight = conv.weight.float() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        return weight.to(dtype), shift.to(dtype)


def folded_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(.))`` as one convolution in ``dtype``, cached while no parameter or running
    statistic changes (folded afresh where nothing may be cached, e.g. during CUDA graph capture)."""
    # num_batches_tracked: a training forward updates the running statistics without bumping their versions, but
    # it bumps this counter's (an in-place add in BatchNorm's Python forward)
    return cached_or_built(
        (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked),
        ("conv_bn", bn.eps, dtype), lambda: _folded(conv, bn, dtype))


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; one convolution with cached folded weights when ``bn`` uses running statistics (eval) and no
    autograd records through the parameters."""
    if bn.training or bn.running_var is None or conv.padding_mode != "zeros":
        return bn(conv(x))
    if torch.is_grad_enabled() and any(p.requires_grad for p in (conv.weight, bn.weight, bn.bias) if p is not None):
        return bn(conv(x))  # e.g. fine-tuning with frozen statistics: gradients flow through both modules
    weight, bias = folded_conv_bn(conv, bn, autocast_dtype(x.device.type) or conv.weight.dtype)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class FoldingConvNorm(ConvNorm):
    """timm's ``ConvNorm`` (conv, bn) whose inference forward is one convolution (:func:`conv_bn`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn(self.conv, self.bn, x)


def fold_conv_norms(module: nn.Module) -> nn.Module:
    """Make every timm ``ConvNorm`` inside ``module`` (built by timm's own blocks, e.g. PatchEmbedding) a
    :class:`FoldingConvNorm`: a subclass that only overrides ``forward``, so parameters and state dict stay as
    they are."""
    return swap_classes(module, lambda m: FoldingConvNorm if type(m) is ConvNorm else None)
