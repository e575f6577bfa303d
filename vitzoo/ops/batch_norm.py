"""Training-mode BatchNorm2d with its epilogue (an optional residual add and an activation) as one op with autograd:
``y = act(batch_norm(x) [+ residual])``, batch statistics, running statistics updated in place.

Why: in a convolutional backbone's training step torch runs BatchNorm's statistics, its transform, the residual add
and the activation as separate passes over the map, and their backwards as three more (activation backward, BatchNorm
reduce, BatchNorm elementwise). In a HaloNet-26t train step on the H100 those passes were 17 of the 32 ms of GPU time;
the convolutions were 9 (kernels/README.md, "Sixteenth run"). The Triton path reads x twice and writes y once
forward, reads dy and x twice and writes dx once backward (``vitzoo.kernels.batch_norm_*``).

The torch path is ``torch.nn.functional.batch_norm`` then the add and the activation: exactly timm's
``BatchNormAct2d`` (and a ByobNet block tail), so CPU results equal timm's. Under ``torch.compile`` tracing the op
takes the torch path (Inductor fuses these passes itself).

Two relatives (kernels/README.md, "Seventeenth run"): ``residual_norm=`` gives the residual its own BatchNorm inside
the add (a downsampling block's tail ``relu(bn(x) + bn_r(r))``), and :func:`batch_norm_act_max_pool` ends a stem
with its norm, activation and max pool as one op.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ._backend import resolve_backend

__all__ = ["batch_norm_act", "batch_norm_act_torch", "batch_norm_act_max_pool", "batch_norm_act_max_pool_torch",
           "ResidualNorm", "BN_ACTIVATIONS"]

BN_ACTIVATIONS = ("none", "relu", "gelu_tanh", "gelu", "silu")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class ResidualNorm(NamedTuple):
    """A residual's own training BatchNorm (a downsampling shortcut's conv -> BN), applied before the add:
    ``act(bn(x) + bn_r(residual))``. Fields as :func:`batch_norm_act`'s."""

    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    running_mean: Optional[torch.Tensor]
    running_var: Optional[torch.Tensor]
    momentum: float = 0.1
    eps: float = 1e-5


def _act_torch(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return F.relu(y)
    if act == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if act == "gelu":
        return F.gelu(y)
    if act == "silu":
        return F.silu(y)
    return y


def _check(x, weight, bias, running_mean, running_var, momentum, eps, act, residual,
           op: str = "batch_norm_act") -> None:
    """ValueError naming the parameter (``op``: the name the messages start with)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{op}: x must be a floating-point (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    channels = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (channels,)):
            raise ValueError(f"{op}: {name} must be None or a tensor of shape ({channels},), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be tensors or both be None")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{op}: momentum must be a float in [0, 1], got {momentum!r} (a cumulative average, "
                         f"BatchNorm's momentum=None, is computed by the caller: 1 / num_batches_tracked)")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0.0:
        raise ValueError(f"{op}: eps must be a positive float, got {eps!r}")
    if act not in BN_ACTIVATIONS:
        raise ValueError(f"{op}: act must be one of {BN_ACTIVATIONS}, got {act!r}")
    if residual is not None and (not isinstance(residual, torch.Tensor) or residual.shape != x.shape):
        raise ValueError(f"{op}: residual must be None or a tensor of x's shape {tuple(x.shape)}, got "
                         f"{tuple(residual.shape) if isinstance(residual, torch.Tensor) else type(residual).__name__}")
    if x.numel() // max(channels, 1) < 2:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(x.shape)}")


def _check_residual_norm(residual: Optional[torch.Tensor], residual_norm) -> None:
    if residual_norm is None:
        return
    if not isinstance(residual_norm, ResidualNorm):
        raise ValueError(f"batch_norm_act: residual_norm must be None or a vitzoo.ops.ResidualNorm, got "
                         f"{type(residual_norm).__name__}")
    if residual is None:
        raise ValueError("batch_norm_act: residual_norm needs a residual")
    _check(residual, *residual_norm, "none", None, op="batch_norm_act residual_norm")


def batch_norm_act_torch(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                         running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                         momentum: float = 0.1, eps: float = 1e-5, act: str = "none",
                         residual: Optional[torch.Tensor] = None,
                         residual_norm: Optional[ResidualNorm] = None) -> torch.Tensor:
    """Pure-torch reference of :func:`batch_norm_act` (timm's computation; float64 is computed in float64)."""
    _check(x, weight, bias, running_mean, running_var, momentum, eps, act, residual)
    _check_residual_norm(residual, residual_norm)
    return _run_torch(x, weight, bias, running_mean, running_var, momentum, eps, act, residual, residual_norm)


def _run_torch(x, weight, bias, running_mean, running_var, momentum, eps, act, residual,
               residual_norm: Optional[ResidualNorm] = None) -> torch.Tensor:
    y = F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    if residual_norm is not None:
        norm = residual_norm
        residual = F.batch_norm(residual, norm.running_mean, norm.running_var, norm.weight, norm.bias, True,
                                norm.momentum, norm.eps)
    if residual is not None:
        y = y + residual
    return _act_torch(y, act)


def _unsupported(x, weight, bias, running_mean, residual) -> Optional[str]:
    if x.dtype not in _DTYPES:
        return f"x dtype must be float16, bfloat16 or float32, got {x.dtype}"
    if residual is not None and residual.dtype != x.dtype:
        return f"residual dtype must equal x's ({x.dtype}), got {residual.dtype}"
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean)):
        if t is not None and t.dtype not in _DTYPES:
            return f"{name} dtype must be float16, bfloat16 or float32, got {t.dtype}"
    return None


def batch_norm_act(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    momentum: float = 0.1,
    eps: float = 1e-5,
    act: str = "none",
    residual: Optional[torch.Tensor] = None,
    backend: str = "auto",
    residual_norm: Optional[ResidualNorm] = None,
) -> torch.Tensor:
    """``act(batch_norm(x, training=True) [+ residual])`` with autograd.

    Args:
        x: (N, C, H, W), any memory format (channels_last is the fast one on the GPU).
        weight, bias: None or (C,) affine parameters (gradients in their own dtype).
        running_mean, running_var: None or (C,) each (both or neither), updated in place with ``momentum`` (the
            biased batch variance normalizes, the unbiased one enters ``running_var``, as in torch).
        momentum: in [0, 1]; eps: added to the variance.
        act: ``"none" | "relu" | "gelu_tanh" | "gelu" | "silu"``.
        residual: None or a tensor of x's shape added after the normalization, before the activation.
        backend: ``"auto" | "torch" | "triton"`` (:mod:`vitzoo.ops._backend`); "auto" takes Triton for CUDA
            fp16 / bf16 / fp32 maps, except under ``torch.compile`` tracing.
        residual_norm: None or the residual's own training BatchNorm (:class:`ResidualNorm`, its running statistics
            updated too): ``act(bn(x) + bn_r(residual))``, a downsampling block's tail. The Triton path applies
            ``bn_r`` inside the add (its map is never written); with an activation other than none / relu it takes
            the torch path.

    Returns y of x's shape and dtype (Triton: x's memory format; statistics and math in fp32).
    """
    _check(x, weight, bias, running_mean, running_var, momentum, eps, act, residual)
    _check_residual_norm(residual, residual_norm)
    if torch.compiler.is_compiling() and backend == "auto":
        backend = "torch"

    def unsupported():
        if residual_norm is not None and act not in ("none", "relu"):  # act'(z) comes from a mask or the output
            return f"act must be none or relu with a residual_norm, got {act!r}"
        reason = _unsupported(x, weight, bias, running_mean, residual)
        if reason is None and residual_norm is not None:
            reason = _unsupported(residual, residual_norm.weight, residual_norm.bias, residual_norm.running_mean,
                                  None)
        return reason

    norm_tensors = residual_norm[:4] if residual_norm is not None else ()
    if resolve_backend(backend, x, weight, bias, running_mean, running_var, residual, *norm_tensors,
                       op="batch_norm_act", unsupported_reason=unsupported) != "triton":
        return _run_torch(x, weight, bias, running_mean, running_var, momentum, eps, act, residual, residual_norm)
    from ._batch_norm_triton import batch_norm_act_triton

    if residual_norm is not None:
        residual_norm = residual_norm._replace(momentum=float(residual_norm.momentum), eps=float(residual_norm.eps))
    return batch_norm_act_triton(x, weight, bias, running_mean, running_var, float(momentum), float(eps), act,
                                 residual, residual_norm)


def _check_pool(kernel_size, stride, padding, x: torch.Tensor) -> None:
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"batch_norm_act_max_pool: {name} must be an int (square windows), got {value!r}")
    if kernel_size < 1 or stride < 1 or not 0 <= padding <= kernel_size // 2:
        raise ValueError(f"batch_norm_act_max_pool: need kernel_size >= 1, stride >= 1 and 0 <= padding <= "
                         f"kernel_size // 2, got kernel_size={kernel_size}, stride={stride}, padding={padding}")
    if min(x.shape[-2:]) + 2 * padding < kernel_size:
        raise ValueError(f"batch_norm_act_max_pool: x's (H, W) {tuple(x.shape[-2:])} padded by {padding} is smaller "
                         f"than kernel_size {kernel_size}")


def batch_norm_act_max_pool_torch(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                                  running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                                  momentum: float = 0.1, eps: float = 1e-5, act: str = "relu",
                                  kernel_size: int = 3, stride: int = 2, padding: int = 1) -> torch.Tensor:
    """Pure-torch reference of :func:`batch_norm_act_max_pool` (timm's stem: ``BatchNormAct2d`` then ``MaxPool2d``)."""
    _check(x, weight, bias, running_mean, running_var, momentum, eps, act, None)
    _check_pool(kernel_size, stride, padding, x)
    return F.max_pool2d(_run_torch(x, weight, bias, running_mean, running_var, momentum, eps, act, None),
                        kernel_size, stride, padding)


def batch_norm_act_max_pool(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    momentum: float = 0.1,
    eps: float = 1e-5,
    act: str = "relu",
    kernel_size: int = 3,
    stride: int = 2,
    padding: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """``max_pool2d(act(batch_norm(x, training=True)), kernel_size, stride, padding)`` with autograd: a ResNet-style
    stem's last norm and its pooling (floor mode, dilation 1, square windows).

    Why: torch writes the activated map (the stem's largest) and reads it back to pool, keeps int64 indices (8 bytes
    per pooled element) and scatters the pooling's gradient into a zeroed map. The Triton path normalizes, activates
    and pools in one pass over x and keeps a one-byte argmax; its backward gathers the pooled gradient
    (``vitzoo.kernels.max_pool_bwd``) and then runs :func:`batch_norm_act`'s backward kernels. The pooled values,
    their tie rule and the gradients are torch's. Arguments as :func:`batch_norm_act` (no residual), plus the
    pooling's ``kernel_size``, ``stride`` and ``padding`` (ints, ``padding <= kernel_size // 2``).
    """
    _check(x, weight, bias, running_mean, running_var, momentum, eps, act, None)
    _check_pool(kernel_size, stride, padding, x)
    if torch.compiler.is_compiling() and backend == "auto":
        backend = "torch"

    def unsupported():
        return _unsupported(x, weight, bias, running_mean, None)

    if resolve_backend(backend, x, weight, bias, running_mean, running_var, op="batch_norm_act_max_pool",
                       unsupported_reason=unsupported) != "triton":
        return F.max_pool2d(_run_torch(x, weight, bias, running_mean, running_var, momentum, eps, act, None),
                            kernel_size, stride, padding)
    from ._batch_norm_triton import batch_norm_act_max_pool_triton

    return batch_norm_act_max_pool_triton(x, weight, bias, running_mean, running_var, float(momentum), float(eps),
                                          act, kernel_size, stride, padding)
