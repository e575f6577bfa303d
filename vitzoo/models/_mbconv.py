"""timm's ``MbConvBlock`` (MaxViT's MBConv) with an inference forward that folds its three BatchNorms away and runs
the depthwise conv, its norm, GELU and TensorFlow "same" padding as one kernel. Same parameters and state dict.

The block is ``pre_norm (BN) -> 1x1 expand -> BN + GELU -> depthwise 3x3 -> BN + GELU -> SE -> 1x1 project``, and
torch runs every BN, GELU and the stride-2 blocks' ``F.pad`` as a full pass over the 4x-expanded map: on the H100
those passes took about 16 of MaxViT-T's 46 ms per inference batch of 256 (kernels/README.md, "Fifteenth run"). In
eval mode each BN is an affine map per channel, so:

- ``pre_norm`` and ``norm1``'s BN fold into the expand conv (input and output side), which runs as one GEMM with
  its bias in cuBLAS's epilogue, followed by torch's GELU;
- ``norm2``'s BN folds into the depthwise weights; :func:`vitzoo.ops.depthwise_conv2d_act` then adds the bias,
  applies GELU and reads the zero padding implicitly (no padded copy);
- SE's gate multiplies in place (:func:`vitzoo.ops.channel_scale_`) instead of through torch's broadcasting kernel.

The folded weights are cached (``vitzoo.ops._weight_cache``: rebuilt when a parameter or running statistic
changes). Training, anything recording autograd, ``torch.compile`` tracing (Inductor fuses these itself) and the
torch backend run timm's forward unchanged, so CPU outputs equal timm's exactly.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame, GELUTanh, SEModule
from timm.models.maxxvit import MbConvBlock

from vitzoo.ops import channel_scale_, depthwise_conv2d_act, same_padding
from vitzoo.ops._backend import resolve_backend
from vitzoo.ops._weight_cache import cached_or_built

from ._conv_bn import autocast_dtype, bn_affine, foldable_bn_act, folding_allowed
from ._swap import swap_classes

__all__ = ["FusedMbConvBlock", "fuse_mbconv_blocks", "fusable"]


def fusable(block: MbConvBlock) -> bool:
    """Whether a block has the structure the fused inference forward computes (MaxViT's TF-ported MBConv): BN
    pre-norm without activation, BN + tanh-GELU norms, stride in the depthwise conv, SE after norm2."""
    dw = block.conv2_kxk
    return (foldable_bn_act(block.pre_norm, nn.Identity) and foldable_bn_act(block.norm1, GELUTanh)
            and foldable_bn_act(block.norm2, GELUTanh) and isinstance(block.down, nn.Identity)
            and block.se_early is None
            and (block.se is None or (isinstance(block.se, SEModule) and not block.se.add_maxpool))
            and type(block.conv1_1x1) is nn.Conv2d and block.conv1_1x1.kernel_size == (1, 1)
            and block.conv1_1x1.stride == (1, 1) and isinstance(dw, (nn.Conv2d, Conv2dSame))
            and dw.groups == dw.in_channels == dw.out_channels and dw.dilation == (1, 1)
            and dw.kernel_size[0] == dw.kernel_size[1] and dw.stride[0] == dw.stride[1]
            and dw.padding_mode == "zeros" and (isinstance(dw, Conv2dSame) or dw.padding[0] == dw.padding[1]))


class FusedMbConvBlock(MbConvBlock):
    """timm's ``MbConvBlock``; its inference forward folds the BatchNorms (module docstring). ``fused_backend``
    (``"auto" | "torch" | "triton"``, set by :func:`fuse_mbconv_blocks`) picks the fused kernels' backend; ``"auto"``
    fuses on CUDA only."""

    fused_backend: str = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not folding_allowed(self) or resolve_backend(self.fused_backend, x, op="mbconv (fused)") != "triton":
            return super().forward(x)
        dtype = autocast_dtype(x.device.type) or x.dtype
        folded = cached_or_built(self._fold_sources(), ("fused_mbconv", dtype), lambda: self._fold(dtype))
        return self._fused_forward(x, dtype, *folded)

    def _fold_sources(self) -> Tuple[Optional[torch.Tensor], ...]:
        """Every tensor the folded weights come from; num_batches_tracked: a training forward updates the running
        statistics without bumping their versions, but it bumps this counter's."""
        out = [self.conv1_1x1.weight, self.conv1_1x1.bias, self.conv2_kxk.weight, self.conv2_kxk.bias]
        for bn in (self.pre_norm, self.norm1, self.norm2):
            out += [bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked]
        return tuple(out)

    def _fold(self, dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
        """(expand weight (mid, in), expand bias, depthwise weight (mid, 1, K, K) fp32, depthwise bias fp32)."""
        with torch.no_grad():
            pre_scale, pre_shift = bn_affine(self.pre_norm)
            scale1, shift1 = bn_affine(self.norm1)
            scale2, shift2 = bn_affine(self.norm2)
            w1 = self.conv1_1x1.weight.float().flatten(1)  # conv1(pre(x)) = (w1 * pre_scale) x + w1 @ pre_shift
            b1 = w1 @ pre_shift
            if self.conv1_1x1.bias is not None:
                b1 = b1 + self.conv1_1x1.bias.float()
            w1 = w1 * pre_scale[None, :] * scale1[:, None]
            b1 = b1 * scale1 + shift1
            w2 = self.conv2_kxk.weight.float() * scale2.view(-1, 1, 1, 1)
            b2 = shift2 if self.conv2_kxk.bias is None else shift2 + self.conv2_kxk.bias.float() * scale2
            return w1.to(dtype), b1.to(dtype), w2, b2

    def _dw_padding(self, height: int, width: int) -> Tuple[int, int, int, int]:
        dw = self.conv2_kxk
        k, s = dw.kernel_size[0], dw.stride[0]
        if isinstance(dw, Conv2dSame):  # TF "same": the odd pixel of padding goes after the map
            top, bottom, _ = same_padding(height, k, s)
            left, right, _ = same_padding(width, k, s)
            return top, bottom, left, right
        p = dw.padding[0]
        return p, p, p, p

    def _fused_forward(self, x: torch.Tensor, dtype: torch.dtype, w1: torch.Tensor, b1: torch.Tensor,
                       w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        batch, _, height, width = x.shape
        # channels_last maps are dense (B, H, W, C) under this view: the expand conv is one GEMM with a bias epilogue
        y = F.gelu(F.linear(x.permute(0, 2, 3, 1).to(dtype), w1, b1), approximate="tanh")
        z = depthwise_conv2d_act(y, w2, b2, self.conv2_kxk.stride[0], self._dw_padding(height, width), "gelu_tanh",
                                 backend=self.fused_backend)
        z_map = z.permute(0, 3, 1, 2)  # NCHW view of the channels_last result
        if self.se is not None:
            se = self.se
            gate = se.gate(se.fc2(se.act(se.bn(se.fc1(z_map.mean((2, 3), keepdim=True))))))
            channel_scale_(z, gate.flatten(1), backend=self.fused_backend)
        return self.drop_path(self.conv3_1x1(z_map)) + shortcut


def fuse_mbconv_blocks(module: nn.Module, backend: str = "auto") -> nn.Module:
    """Make every fusable timm ``MbConvBlock`` inside ``module`` a :class:`FusedMbConvBlock` (a subclass that only
    overrides ``forward``: parameters and state dict unchanged) running its fused kernels on ``backend``."""
    return swap_classes(module, lambda m: FusedMbConvBlock if type(m) is MbConvBlock and fusable(m) else None,
                        fused_backend=backend)
