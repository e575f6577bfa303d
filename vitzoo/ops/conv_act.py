"""Inference ops of convolutional blocks on channels_last (NHWC) maps: a depthwise convolution with per-side zero
padding, bias and activation in one pass, squeeze-and-excitation's gate multiply in place, and a convolution with
bias, optional residual and ReLU in one cuDNN call.

Triton on CUDA (``vitzoo.kernels.depthwise_conv_fwd``, ``vitzoo.kernels.channel_scale`` say why), cuDNN's fused
conv + bias (+ add) + ReLU for :func:`conv2d_bias_relu`, torch elsewhere. There is no backward: callers use them
without autograd (MaxViT's MBConv and HaloNet's conv-BN-ReLU layers in inference, :mod:`vitzoo.models._mbconv`,
:mod:`vitzoo.models._conv_norm_act`), and a call that would need a gradient raises.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._backend import needs_grad, resolve_backend
from ._weight_cache import cached_or_built

__all__ = ["depthwise_conv2d_act", "channel_scale_", "conv2d_bias_relu", "same_padding", "CONV_ACTIVATIONS"]

CONV_ACTIVATIONS = ("none", "gelu_tanh")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> Tuple[int, int, int]:
    """TensorFlow "same" padding of one spatial dim: (pad_before, pad_after, out_size) with out = ceil(size / stride)
    and the extra pad after (timm's ``pad_same``)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2, out


def _check_padding(padding: Sequence[int]) -> Tuple[int, int, int, int]:
    if len(padding) != 4 or any(not isinstance(p, int) or p < 0 for p in padding):
        raise ValueError(f"depthwise_conv2d_act: padding must be 4 non-negative ints (top, bottom, left, right), "
                         f"got {padding!r}")
    return tuple(padding)


def depthwise_conv2d_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
                         padding: Sequence[int], act: str = "none", backend: str = "auto") -> torch.Tensor:
    """Depthwise convolution of an NHWC map, then ``act``.

    Args:
        x: (B, H, W, C), channel stride 1 (the (B, H, W, C) view of a channels_last map).
        weight: (C, 1, K, K) (torch's depthwise layout); bias: (C,) or None.
        stride: one stride for both dims. padding: (top, bottom, left, right) zeros around the map.
        act: ``"none"`` | ``"gelu_tanh"`` (tanh-approximated GELU).
        backend: ``"auto" | "torch" | "triton"`` (:mod:`vitzoo.ops._backend`).

    Returns (B, H_out, W_out, C) contiguous in x's dtype; sums are fp32 on the Triton path. Inference only: raises
    when autograd would record through any input.
    """
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[-1] \
            or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"depthwise_conv2d_act: x must be (B, H, W, C) and weight (C, 1, K, K), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    channels, k = x.shape[-1], weight.shape[-1]
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"depthwise_conv2d_act: bias must be None or ({channels},), got {tuple(bias.shape)}")
    if act not in CONV_ACTIVATIONS:
        raise ValueError(f"depthwise_conv2d_act: act must be one of {CONV_ACTIVATIONS}, got {act!r}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"depthwise_conv2d_act: stride must be a positive int, got {stride!r}")
    top, bottom, left, right = _check_padding(padding)
    if needs_grad(x, weight, bias):
        raise ValueError("depthwise_conv2d_act is inference-only: call it under torch.no_grad() / inference_mode() "
                         "or with inputs that do not require grad")
    h_out = (x.shape[1] + top + bottom - k) // stride + 1
    w_out = (x.shape[2] + left + right - k) // stride + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"depthwise_conv2d_act: a {k}x{k} kernel does not fit the padded {tuple(x.shape[1:3])} map")

    def unsupported() -> Optional[str]:
        if x.dtype not in _DTYPES:
            return f"x must be float16, bfloat16 or float32, got {x.dtype}"
        if channels > 1 and x.stride(-1) != 1:
            return "x needs channel stride 1 (the NHWC view of a channels_last map)"
        return None

    if resolve_backend(backend, x, weight, bias, op="depthwise_conv2d_act", unsupported_reason=unsupported) \
            == "triton":
        from vitzoo.kernels.depthwise_conv_fwd import depthwise_conv_fwd

        def kernel_layout():  # tap-major fp32 taps (K*K, C) and an fp32 bias
            taps = weight.detach().float().reshape(channels, k * k).t().contiguous()
            return taps, (bias.detach().float() if bias is not None else taps.new_zeros(channels))

        # fixed weights (a model's folded BatchNorm) are converted once, not per call
        taps, bias32 = cached_or_built((weight, bias), ("depthwise_taps",), kernel_layout)
        # padding after the map only shapes h_out / w_out: taps past the map read zero
        return depthwise_conv_fwd(x, taps, bias32, stride, top, left, (h_out, w_out), act, x.dtype)
    out = F.conv2d(F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom)), weight.to(x.dtype),
                   None if bias is None else bias.to(x.dtype), stride, groups=channels)
    if act == "gelu_tanh":
        out = F.gelu(out, approximate="tanh")
    return out.permute(0, 2, 3, 1).contiguous()


def channel_scale_(x: torch.Tensor, gate: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``x *= gate`` per (image, channel) in place: x (B, H, W, C) with channel stride 1 and contiguous pixels
    (the NHWC view of a dense channels_last map), gate (B, C). Returns x. Inference only (in place)."""
    if x.dim() != 4 or tuple(gate.shape) != (x.shape[0], x.shape[-1]):
        raise ValueError(f"channel_scale_: x must be (B, H, W, C) and gate (B, C), got {tuple(x.shape)} and "
                         f"{tuple(gate.shape)}")
    if needs_grad(x, gate):
        raise ValueError("channel_scale_ is inference-only (in place): call it without autograd")
    batch, height, width, channels = x.shape

    def unsupported() -> Optional[str]:
        if x.dtype not in _DTYPES or gate.dtype not in _DTYPES:
            return f"x and gate must be float16, bfloat16 or float32, got {x.dtype}, {gate.dtype}"
        if x.stride(-1) != 1 or x.stride(-2) != channels or x.stride(-3) != width * channels:
            return "x needs dense pixels with channel stride 1 (the NHWC view of a dense channels_last map)"
        return None

    if resolve_backend(backend, x, gate, op="channel_scale_", unsupported_reason=unsupported) == "triton":
        from vitzoo.kernels.channel_scale import channel_scale_ as launch_kernel

        launch_kernel(x.view(batch, height * width, channels), gate.contiguous())
        return x
    return x.mul_(gate.to(x.dtype)[:, None, None, :])


def conv2d_bias_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: Tuple[int, int],
                     padding: Tuple[int, int], dilation: Tuple[int, int] = (1, 1), groups: int = 1,
                     residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias) [+ residual])``, NCHW tensors (channels_last memory is the fast case).

    On CUDA one cuDNN call (``torch.cudnn_convolution_relu`` / ``_add_relu``) in weight's dtype (x and residual are
    cast to it): the bias, the residual add and the ReLU run in the convolution's epilogue. torch otherwise adds a
    conv's bias with a non-vectorized broadcast kernel and runs the add and the ReLU as two more passes; on the H100
    a HaloNet-26t 1x1 conv 64 -> 256 at 56x56 took 190 us fused against 841 us as conv + BatchNorm + ReLU
    (kernels/README.md, "Fifteenth run"). Elsewhere ``F.conv2d``, add, ``relu``. Inference only.
    """
    if needs_grad(x, weight, bias, residual):
        raise ValueError("conv2d_bias_relu is inference-only: call it without autograd")
    if x.is_cuda and weight.is_cuda and torch.backends.cudnn.is_available() and weight.dtype in _DTYPES:
        x = x.to(weight.dtype)
        bias = bias.to(weight.dtype)
        if residual is None:
            return torch.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation, groups)
        return torch.cudnn_convolution_add_relu(x, weight, residual.to(weight.dtype), 1.0, bias, stride, padding,
                                                dilation, groups)
    out = F.conv2d(x.to(weight.dtype), weight, bias.to(weight.dtype), stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual.to(out.dtype)
    return torch.relu(out)
