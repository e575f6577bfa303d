"""``F.linear`` whose bias gradient is a matrix-vector product (cuBLAS GEMV) instead of torch's column reduction.

Why: a Linear's bias gradient is the column sum of its (tokens, out_features) output gradient. torch reduces that
(M, N) matrix over M with a generic strided ``reduce_kernel``, which for the N = 96-3072 of vision transformers runs
at 25-55 % of HBM bandwidth on the H100; ``ones(M) @ grad`` as one GEMV reads the same bytes at 55-90 %
(``kernels/README.md``, "Eleventh run": 101 -> 46 us at 401408 x 96, 138 -> 27 us at 100352 x 192, bf16). In
Agent-Swin-T training those reductions were 3.8 of 37.5 ms of GPU time per step.

Everything else is ``F.linear``'s own computation: the forward is ``F.linear`` (cuBLAS with the bias epilogue); the
backward's input and weight gradients are the same two GEMMs as torch's ``addmm`` backward. Autocast is honoured
exactly as torch's autocast ``linear`` does: input, weight and bias are cast to the autocast dtype (tracked casts,
so fp32 master weights get their gradients) and the output is in that dtype. The GEMV accumulates in fp32 like the
reduction it replaces and writes the bias dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .biased import _autocast_dtype

__all__ = ["linear", "column_sum"]

_AUTOCAST_ELIGIBLE = (torch.float16, torch.bfloat16, torch.float32)


def column_sum(grad_2d: torch.Tensor) -> torch.Tensor:
    """Sum over the rows of an (M, N) gradient, as one GEMV ``grad^T @ ones`` (fp32 accumulation, grad's dtype out):
    the bias gradient of a Linear, or of any per-channel bias added to (M, N) rows (module docstring says why)."""
    return torch.mv(grad_2d.t(), grad_2d.new_ones(grad_2d.shape[0]))


class _LinearGemvBiasGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        with torch.autocast(x.device.type, enabled=False):
            out = F.linear(x, weight, bias)
        # F.linear's N-d output is a view of its 2-d GEMM result, which is no part of the autograd graph here: return
        # it as a tensor of its own, so views of the output keep it as their ``_base`` (vitzoo.ops._packed relies on it)
        return torch.ops.aten._unsafe_view(out, out.shape) if out._base is not None else out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = None
        with torch.autocast(x.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = grad_out.matmul(weight)
            if ctx.needs_input_grad[1]:  # torch's orientation (x^T @ grad, transposed view): its cuBLAS kernel choice
                grad_w = x.reshape(-1, x.shape[-1]).t().mm(grad_2d).t()
            if ctx.needs_input_grad[2]:
                grad_b = column_sum(grad_2d)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the same forward, outputs and dtypes (autocast included); with autograd and
    a bias, the bias gradient is one GEMV (module docstring). Without a bias, or without autograd, it is ``F.linear``.
    """
    if bias is None or not torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    dtype = _autocast_dtype(x.device.type)
    if dtype is not None and x.dtype in _AUTOCAST_ELIGIBLE:
        x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    return _LinearGemvBiasGrad.apply(x, weight, bias)
