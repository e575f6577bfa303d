"""TensorFlow "same" padding without the padded copy: timm's ``Conv2dSame`` and MaxViT's average-pool shortcut
(``Downsample2d`` with ``AvgPool2dSame(2, 2)`` then an optional 1x1 expand) as one convolution each. Same parameters
and state dict.

Why: timm pads the map with ``F.pad`` before every stride-2 convolution and pool, even when the padding is zero, and
torch writes that copy (and its backward) with a non-vectorized kernel: about 4 ms of MaxViT-T's 75 ms train step,
plus 3.5 ms for the channels_last average pool and its backward (kernels/README.md, "Sixteenth run").

- "same" padding is (p, p) or (p, p + 1) per dim. The asymmetric case equals a convolution with symmetric padding
  p + 1 whose kernel has one extra zero tap in front: output i then reads rows ``i * s - (p + 1) + t`` for taps
  t = 1..k, i.e. ``i * s - p + t'`` for the real taps t' = 0..k-1, exactly TF's window (dilation 1). Depthwise
  convolutions instead read the padding implicitly in vitzoo's own kernels (:func:`vitzoo.ops.depthwise_conv2d`).
- A 2x2 stride-2 average pool (count_include_pad) followed by a 1x1 conv ``w`` is the 2x2 stride-2 convolution with
  ``w / 4`` at every tap (without the expand: ``identity / 4``), run by cuDNN's implicit GEMM; its "same" padding
  is handled as above.

The rewrites run on CUDA tensors (``pad_free=None``) and anywhere with ``pad_free=True`` (tests); CPU tensors take
timm's forward, so CPU outputs equal timm's exactly.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.pool2d_same import AvgPool2dSame
from timm.models.maxxvit import Downsample2d

from vitzoo.ops import depthwise_conv2d, same_padding

from ._step_kernels import fused_training_enabled
from ._swap import swap_classes

__all__ = ["PadFreeConv2dSame", "ConvDownsample2d", "same_conv2d", "fuse_tf_same"]


def _active(module: nn.Module, x: torch.Tensor) -> bool:
    return x.is_cuda if module.pad_free is None else module.pad_free


def same_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                stride: Tuple[int, int]) -> torch.Tensor:
    """Dense ``conv2d(pad_same(x), weight, bias, stride)`` (dilation 1) without the padded copy (module docstring)."""
    (_, _, height, width), (kh, kw) = x.shape, weight.shape[-2:]
    top, bottom, _ = same_padding(height, kh, stride[0])
    left, right, _ = same_padding(width, kw, stride[1])
    if bottom != top or right != left:  # one zero tap in front of the asymmetric dims
        weight = F.pad(weight, (right - left, 0, bottom - top, 0))
    return F.conv2d(x, weight, bias, stride, (bottom, right))


class PadFreeConv2dSame(Conv2dSame):
    """timm's ``Conv2dSame``; on CUDA without the padded copy (module docstring): a dense conv through the zero-tap
    kernel, a depthwise conv (channels_last) through :func:`vitzoo.ops.depthwise_conv2d` on ``fused_backend`` in
    CUDA-graphed training steps (:func:`~vitzoo.models._step_kernels.fused_training_enabled`; elsewhere timm's pad
    and cuDNN: cuDNN's grouped kernels for the zero-tap 4x4 kernel are 10x slower than its 3x3 ones)."""

    pad_free: Optional[bool] = None
    fused_backend: str = "auto"

    def _depthwise(self, x: torch.Tensor) -> bool:
        return (self.groups == self.in_channels == self.out_channels and self.stride[0] == self.stride[1]
                and self.kernel_size[0] == self.kernel_size[1] and x.is_contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _active(self, x) or self.dilation != (1, 1):
            return super().forward(x)
        if self.groups == 1:
            return same_conv2d(x, self.weight, self.bias, self.stride)
        if not self._depthwise(x) or not fused_training_enabled(self.fused_backend):
            return super().forward(x)
        (k, _), (s, _) = self.kernel_size, self.stride
        top, bottom, _ = same_padding(x.shape[2], k, s)
        left, right, _ = same_padding(x.shape[3], k, s)
        return depthwise_conv2d(x, self.weight, self.bias, s, (top, bottom, left, right), backend=self.fused_backend)


class ConvDownsample2d(Downsample2d):
    """MaxViT's ``Downsample2d`` with a 2x2 stride-2 "same" average pool; on CUDA one convolution (module
    docstring)."""

    pad_free: Optional[bool] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _active(self, x):
            return super().forward(x)
        channels = x.shape[1]
        if isinstance(self.expand, nn.Conv2d):
            weight, bias = self.expand.weight, self.expand.bias
        else:
            weight, bias = torch.eye(channels, device=x.device, dtype=x.dtype).view(channels, channels, 1, 1), None
        weight = (weight * 0.25).expand(-1, -1, 2, 2).contiguous(memory_format=torch.channels_last)
        return same_conv2d(x, weight, bias, (2, 2))


def _avg2_same(module: nn.Module) -> bool:
    pool = getattr(module, "pool", None)
    return (type(pool) is AvgPool2dSame and pool.kernel_size == (2, 2) and pool.stride == (2, 2)
            and pool.count_include_pad and not pool.ceil_mode
            and (isinstance(module.expand, nn.Identity)
                 or (type(module.expand) is nn.Conv2d and module.expand.kernel_size == (1, 1)
                     and module.expand.stride == (1, 1) and module.expand.groups == 1)))


def fuse_tf_same(module: nn.Module, pad_free: Optional[bool] = None, backend: str = "auto") -> nn.Module:
    """Make every timm ``Conv2dSame`` (dilation 1) and every MaxViT average-pool ``Downsample2d`` inside ``module``
    its pad-free subclass (only ``forward`` differs: parameters and state dict unchanged); ``backend`` runs the
    depthwise op."""
    swap_classes(module, lambda m: PadFreeConv2dSame if type(m) is Conv2dSame and m.dilation == (1, 1) else None,
                 pad_free=pad_free, fused_backend=backend)
    return swap_classes(module, lambda m: ConvDownsample2d if type(m) is Downsample2d and _avg2_same(m) else None,
                        pad_free=pad_free)
