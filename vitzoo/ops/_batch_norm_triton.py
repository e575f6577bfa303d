"""Triton path of :func:`vitzoo.ops.batch_norm.batch_norm_act`: the kernels of ``vitzoo.kernels.batch_norm_*``
under one ``torch.autograd.Function``.

Forward: statistics (row chunks, then their merge, which also updates the running statistics and writes the
per-channel affine map), then the transform + residual + activation. Backward: the per-channel sums, then the input
(and residual) gradient. Saved for backward: x, the (4, C) statistics, and what ``dz`` is recomputed from: nothing,
x alone, the residual, or (ReLU after a residual) a bit mask of ``z > 0`` the forward packs (1/16 of the output's
bytes; the output itself when C is not a multiple of 8).

Not a ``torch.library`` custom op: the forward mutates the running statistics, and under ``torch.compile`` the op
layer takes the torch path (Inductor fuses BatchNorm's passes itself).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels._batch_norm_common import MASK_BITS
from ..kernels.batch_norm_act_bwd import batch_norm_act_bwd
from ..kernels.batch_norm_act_bwd_reduce import batch_norm_act_bwd_reduce
from ..kernels.batch_norm_act_fwd import batch_norm_act_fwd
from ..kernels.batch_norm_act_max_pool_fwd import batch_norm_act_max_pool_fwd
from ..kernels.batch_norm_stats import batch_norm_stats
from ..kernels.batch_norm_stats_merge import batch_norm_stats_merge
from ..kernels.max_pool_bwd import max_pool_bwd

__all__ = ["batch_norm_act_triton", "batch_norm_act_max_pool_triton", "z_source"]


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself when it is dense in NCHW or channels_last order, else an NCHW copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t with exactly x's strides (a copy only when they differ, e.g. an NCHW gradient of a channels_last map)."""
    return t if t.stride() == x.stride() else torch.empty_like(x, dtype=t.dtype).copy_(t)


def z_source(act: str, has_residual: bool, channels: int) -> str:
    """What the backward recomputes ``act'(z)`` from (``vitzoo.kernels.batch_norm_act_bwd_reduce``): for ReLU after a
    residual add, the forward's packed bit mask of ``z > 0`` (C a multiple of 8) or its output."""
    if act == "none":
        return "none"
    if not has_residual:
        return "x"
    if act != "relu":
        return "x_residual"
    return "relu_mask" if channels % MASK_BITS == 0 else "output"


def _statistics(x, weight, bias, running_mean, running_var, momentum, eps) -> torch.Tensor:
    """The (4, C) statistics of dense x (running statistics updated)."""
    batch, _, height, width = x.shape
    parts, per_program = batch_norm_stats(x)
    return batch_norm_stats_merge(parts, batch * height * width, per_program, weight, bias, running_mean,
                                  running_var, momentum, eps)


def _forward(x, weight, bias, running_mean, running_var, momentum, eps, act, residual, relu_mask=False):
    """(y, stats, packed ReLU mask or None) for dense x and a residual with x's strides."""
    stats = _statistics(x, weight, bias, running_mean, running_var, momentum, eps)
    y, mask = batch_norm_act_fwd(x, stats, act, residual, relu_mask)
    return y, stats, mask


def _saved_param_dtypes(weight, bias) -> tuple:
    return None if weight is None else weight.dtype, None if bias is None else bias.dtype


def _backward(ctx, dy, x, weight, stats, src, need_dx, need_dres, residual_dtype=None) -> tuple:
    """(dx, dweight, dbias, dresidual) of ``act(bn(x) [+ residual])`` for the output gradient dy (x's strides)."""
    sums = batch_norm_act_bwd_reduce(dy, x, stats, ctx.act, ctx.z_from, src)
    dx = dres = None
    if need_dx or need_dres:
        dx, dres = batch_norm_act_bwd(dy, x, stats, sums, weight, ctx.act, ctx.z_from, src,
                                      residual_dtype if need_dres else None)
    need_dweight, need_dbias = ctx.needs_input_grad[1:3]
    dweight = sums[1].to(ctx.param_dtypes[0]) if need_dweight else None
    dbias = sums[0].to(ctx.param_dtypes[1]) if need_dbias else None
    return (dx if need_dx else None), dweight, dbias, dres


class _BatchNormAct(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, momentum, eps, act):
        z_from = z_source(act, residual is not None, x.shape[1])
        y, stats, mask = _forward(x, weight, bias, running_mean, running_var, momentum, eps, act, residual,
                                  z_from == "relu_mask")
        src = {"output": y, "x_residual": residual, "relu_mask": mask}.get(z_from)
        ctx.save_for_backward(x, weight, stats, src)
        ctx.act, ctx.z_from = act, z_from
        ctx.param_dtypes = _saved_param_dtypes(weight, bias)
        ctx.residual_dtype = None if residual is None else residual.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, stats, src = ctx.saved_tensors
        need_dx, need_dres = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        dx, dweight, dbias, dres = _backward(ctx, _like(dy, x), x, weight, stats, src, need_dx, need_dres,
                                             ctx.residual_dtype)
        return dx, dweight, dbias, dres, None, None, None, None, None


class _BatchNormActMaxPool(torch.autograd.Function):
    """``max_pool2d(act(bn(x)))``: saves x, the statistics and the uint8 window argmax; the backward gathers the
    pooled gradient into dy of the activated map, then runs the BatchNorm backward on it."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, act, kernel_size, stride, padding):
        stats = _statistics(x, weight, bias, running_mean, running_var, momentum, eps)
        out, argmax = batch_norm_act_max_pool_fwd(x, stats, act, kernel_size, stride, padding)
        ctx.save_for_backward(x, weight, stats, argmax)
        ctx.act, ctx.z_from = act, z_source(act, False, x.shape[1])
        ctx.pool = (kernel_size, stride, padding)
        ctx.param_dtypes = _saved_param_dtypes(weight, bias)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, stats, argmax = ctx.saved_tensors
        dy = max_pool_bwd(dout, argmax, tuple(x.shape[-2:]), *ctx.pool, like=x)
        dx, dweight, dbias, _ = _backward(ctx, dy, x, weight, stats, None, ctx.needs_input_grad[0], False)
        return (dx, dweight, dbias) + (None,) * 8


def batch_norm_act_triton(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                          running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], momentum: float,
                          eps: float, act: str, residual: Optional[torch.Tensor]) -> torch.Tensor:
    """Arguments validated by the op layer. Returns y with x's strides (dense x) and dtype."""
    x = _dense(x)
    residual = _like(residual, x) if residual is not None else None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, residual)):
        return _BatchNormAct.apply(x, weight, bias, residual, running_mean, running_var, momentum, eps, act)
    return _forward(x, weight, bias, running_mean, running_var, momentum, eps, act, residual)[0]


def batch_norm_act_max_pool_triton(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                                   running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                                   momentum: float, eps: float, act: str, kernel_size: int, stride: int,
                                   padding: int) -> torch.Tensor:
    """Arguments validated by the op layer. Returns the pooled map in x's memory format (dense x) and dtype."""
    x = _dense(x)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _BatchNormActMaxPool.apply(x, weight, bias, running_mean, running_var, momentum, eps, act,
                                          kernel_size, stride, padding)
    stats = _statistics(x, weight, bias, running_mean, running_var, momentum, eps)
    return batch_norm_act_max_pool_fwd(x, stats, act, kernel_size, stride, padding)[0]
