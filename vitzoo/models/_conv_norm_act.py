"""timm's ``ConvNormAct`` (conv -> BatchNorm -> ReLU) and ByobNet's bottleneck / self-attention blocks with an
inference forward that folds each BatchNorm into its conv and runs conv + bias (+ residual) + ReLU as one cuDNN call
(:func:`vitzoo.ops.conv2d_bias_relu`). Same parameters and state dict.

Why: in a ResNet-style backbone torch runs every BatchNorm and ReLU, and every block's residual add, as a full pass
over the map; a folded conv adds its bias through a non-vectorized broadcast kernel, which is why folding alone made
HaloNet slower (kernels/README.md, "Tenth run"). cuDNN's fused epilogue does bias, add and ReLU inside the conv:
on the H100 a bottleneck's 1x1 conv 64 -> 256 at 56x56 went from 1246 us (conv, BN, add, ReLU) to 362 us.

Fused: ``ConvNormAct`` with a ReLU (stem, 1x1 reductions, 3x3 convs), and the block tail ``relu(conv3_1x1(x) +
shortcut)``. Not fused: BN-only convs outside a tail (the downsampling shortcut) and the BN + ReLU after halo
attention (no conv to fold into). Training, anything recording autograd, ``torch.compile`` tracing and CPU tensors run
timm's forward, so CPU outputs equal timm's exactly; ``fused=True`` forces the folded path anywhere (tests).

In graphed training (the BatchNorm op, ``_batch_norm_act.py``): a block tail is one op, with a downsampling
shortcut's conv -> BN normalized inside its add, and a max-pooling stem ends in one BN + activation + pool op
(:class:`FusedPoolStem`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.layers import ConvNormAct
from timm.models.byobnet import BottleneckBlock, SelfAttnBlock, Stem

from vitzoo.ops import conv2d_bias_relu

from ._batch_norm_act import FusedBatchNormAct2d, fused_act_name
from ._conv_bn import autocast_dtype, foldable_bn_act, folded_conv_bn, folding_allowed
from ._swap import swap_classes

__all__ = ["FusedConvNormAct", "FusedBottleneckBlock", "FusedSelfAttnBlock", "FusedPoolStem", "fuse_conv_norm_acts"]


def _foldable(m: nn.Module, act: type) -> bool:
    """A ``ConvNormAct`` whose conv is a plain zero-padded ``nn.Conv2d`` followed by BN + ``act``, no anti-aliasing."""
    conv = getattr(m, "conv", None)
    return (type(m) is ConvNormAct and type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and foldable_bn_act(m.bn, act)
            and isinstance(getattr(m, "aa", None), (type(None), nn.Identity)))


def _fused_active(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether a forward takes the folded path: eval, no autograd, not traced, on CUDA (or ``fused=True``)."""
    if not folding_allowed(module):
        return False
    return x.is_cuda if module.fused is None else module.fused


def _conv_norm_relu(m: ConvNormAct, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``relu(bn(conv(x)) [+ residual])`` with the BN folded into the conv."""
    conv = m.conv
    weight, bias = folded_conv_bn(conv, m.bn, autocast_dtype(x.device.type) or conv.weight.dtype)
    return conv2d_bias_relu(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, residual)


def _tail_trains_fused(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether a training forward runs the tail ``relu(bn3(conv3(x)) + shortcut)`` as one BatchNorm op: conv3's norm
    is a fused-training BatchNorm and no drop path sits between it and the add."""
    bn = block.conv3_1x1.bn
    return (type(bn) is FusedBatchNormAct2d and isinstance(block.drop_path, nn.Identity)
            and bn.fused_training(x))


def _conv_bn_add_relu_train(m: ConvNormAct, x: torch.Tensor, shortcut: Optional[torch.Tensor],
                            shortcut_bn: Optional[FusedBatchNormAct2d] = None) -> torch.Tensor:
    return m.bn.forward_fused(m.conv(x), shortcut, "relu", shortcut_bn)


def _normed_shortcut(block: nn.Module) -> Optional[FusedBatchNormAct2d]:
    """The BatchNorm of a downsampling shortcut ``conv -> BN`` (no activation, no anti-aliasing) that the tail op can
    apply inside its add; None for any other shortcut."""
    shortcut = block.shortcut
    if type(shortcut) not in (ConvNormAct, FusedConvNormAct) or type(shortcut.conv) is not nn.Conv2d:
        return None
    bn = shortcut.bn
    if type(bn) is not FusedBatchNormAct2d or fused_act_name(bn.act) != "none" or not isinstance(bn.drop, nn.Identity):
        return None
    return bn if isinstance(getattr(shortcut, "aa", None), (type(None), nn.Identity)) else None


class FusedConvNormAct(ConvNormAct):
    """timm's ``ConvNormAct`` (BN + ReLU); inference runs one fused conv + bias + ReLU (module docstring)."""

    fused: Optional[bool] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fused_active(self, x):
            return super().forward(x)
        return _conv_norm_relu(self, x)


class _FusedTail:
    """The forward of a ByobNet block whose tail is ``relu(conv3_1x1(body(x)) + shortcut)``: inference runs the tail
    as one fused conv, training as conv3 then one BatchNorm op, anything else timm's forward."""

    fused: Optional[bool] = None

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_active(self, x):
            tail = _conv_norm_relu
        elif self.training and _tail_trains_fused(self, x):
            shortcut_bn = _normed_shortcut(self)
            if shortcut_bn is not None:  # relu(bn3(conv3) + bn_s(conv_s(x))) as one op: bn_s's map never written
                return _conv_bn_add_relu_train(self.conv3_1x1, self._body(x), self.shortcut.conv(x), shortcut_bn)
            tail = _conv_bn_add_relu_train
        else:
            return super().forward(x)
        shortcut = None if self.shortcut is None else self.shortcut(x)  # None: a block without shortcut
        return tail(self.conv3_1x1, self._body(x), shortcut)


class FusedBottleneckBlock(_FusedTail, BottleneckBlock):
    """timm's ByobNet ``BottleneckBlock`` with the fused tail."""

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.conv2b_kxk(self.conv2_kxk(self.conv1_1x1(x))))


class FusedSelfAttnBlock(_FusedTail, SelfAttnBlock):
    """timm's ByobNet ``SelfAttnBlock`` (HaloNet's halo blocks) with the fused tail."""

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_attn(self.self_attn(self.conv2_kxk(self.conv1_1x1(x))))


def _square(value) -> Optional[int]:
    """An int pooling parameter, or a tuple of equal ints as one; None otherwise."""
    if isinstance(value, (tuple, list)):
        return value[0] if len(set(value)) == 1 and isinstance(value[0], int) else None
    return value if isinstance(value, int) else None


def _pool_args(pool: nn.Module) -> Optional[tuple]:
    """(kernel_size, stride, padding) of a max pooling :func:`vitzoo.ops.batch_norm_act_max_pool` computes (square,
    floor mode, dilation 1, no indices returned); None for any other module."""
    if type(pool) is not nn.MaxPool2d or pool.ceil_mode or pool.return_indices or _square(pool.dilation) != 1:
        return None
    args = (_square(pool.kernel_size), _square(pool.stride), _square(pool.padding))
    return None if None in args or not 0 <= args[2] <= args[0] // 2 else args


class FusedPoolStem(Stem):
    """timm's ByobNet ``Stem`` ending ``conv -> BN + act -> MaxPool2d`` (HaloNet's tiered stem). A training forward
    whose last norm takes the fused op runs that norm, its activation and the pooling as one op
    (:func:`vitzoo.ops.batch_norm_act_max_pool`): the stem's largest map is neither written activated nor kept
    with int64 pooling indices. ``forward_intermediates`` (which returns the pre-pool map) and everything else run
    timm's forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *head, last, pool = self
        bn = last.bn
        if not (self.training and type(bn) is FusedBatchNormAct2d and bn.fused_training(x)):
            return super().forward(x)
        for module in head:
            x = module(x)
        return bn.forward_fused_max_pool(last.conv(x), *_pool_args(pool))


def _stem_pool_fusable(stem: nn.Module) -> bool:
    """A ``Stem`` ending in a plain ``ConvNormAct`` (no anti-aliasing) and a max pooling the op computes."""
    children = list(stem.children())
    return (len(children) >= 2 and type(children[-2]) in (ConvNormAct, FusedConvNormAct)
            and isinstance(getattr(children[-2], "aa", None), (type(None), nn.Identity))
            and _pool_args(children[-1]) is not None)


def _tail_fusable(block: nn.Module) -> bool:
    """The block ends ``act(drop_path(conv3_1x1(x)) + shortcut)`` with a BN-only conv3, ReLU and nothing between."""
    return (_foldable(block.conv3_1x1, nn.Identity) and type(block.act) is nn.ReLU
            and isinstance(getattr(block, "attn_last", nn.Identity()), nn.Identity))


def _fused_class(m: nn.Module) -> Optional[type]:
    if _foldable(m, nn.ReLU):
        return FusedConvNormAct
    if type(m) is Stem and _stem_pool_fusable(m):
        return FusedPoolStem
    if type(m) in (BottleneckBlock, SelfAttnBlock) and _tail_fusable(m):
        return FusedBottleneckBlock if type(m) is BottleneckBlock else FusedSelfAttnBlock
    return None


def fuse_conv_norm_acts(module: nn.Module, fused: Optional[bool] = None) -> nn.Module:
    """Make every foldable ``ConvNormAct`` (BN + ReLU), ``BottleneckBlock``, ``SelfAttnBlock`` and max-pooling
    ``Stem`` inside ``module`` its fused subclass (only ``forward`` differs: parameters and state dict unchanged).
    ``fused``: None = on CUDA only (the inference folding; the stem's training op follows its BatchNorm)."""
    return swap_classes(module, _fused_class, fused=fused)
