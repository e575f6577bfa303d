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


def _forward(x, weight, bias, running_mean, running_var, momentum, eps, act, residual, relu_mask=False,
             residual_norm=None):
    """(y, stats, packed ReLU mask or None, residual statistics or None) for dense x and a residual with x's
    strides; ``residual_norm``: None or the residual's own BatchNorm (``vitzoo.ops.batch_norm.ResidualNorm``)."""
    stats = _statistics(x, weight, bias, running_mean, running_var, momentum, eps)
    res_stats = None if residual_norm is None else _statistics(residual, *residual_norm)
    y, mask = batch_norm_act_fwd(x, stats, act, residual, relu_mask, res_stats)
    return y, stats, mask, res_stats


def _saved_param_dtypes(*params) -> tuple:
    return tuple(None if p is None else p.dtype for p in params)


def _backward(ctx, dy, x, weight, stats, src, need_dx, need_dres, residual_dtype=None, res=None, res_stats=None,
              res_weight=None) -> tuple:
    """(dx, dweight, dbias, dresidual, sums) of ``act(bn(x) [+ residual])`` for the output gradient dy (x's
    strides); with ``res`` the residual had its own BatchNorm (statistics ``res_stats``, weight ``res_weight``)."""
    sums = batch_norm_act_bwd_reduce(dy, x, stats, ctx.act, ctx.z_from, src, res, res_stats)
    dx = dres = None
    if need_dx or need_dres:
        dx, dres = batch_norm_act_bwd(dy, x, stats, sums, weight, ctx.act, ctx.z_from, src,
                                      residual_dtype if need_dres else None, res, res_stats, res_weight)
    need_dweight, need_dbias = ctx.needs_input_grad[1:3]
    dweight = sums[1].to(ctx.param_dtypes[0]) if need_dweight else None
    dbias = sums[0].to(ctx.param_dtypes[1]) if need_dbias else None
    return (dx if need_dx else None), dweight, dbias, dres, sums


class _BatchNormAct(torch.autograd.Function):
    """``act(bn(x) [+ residual])``, or with a residual BatchNorm ``act(bn(x) + bn_r(residual))`` (a downsampling
    block's tail: the shortcut's normalized map is neither written nor read back)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, momentum, eps, act, res_weight, res_bias,
                res_running_mean, res_running_var, res_momentum, res_eps):
        residual_norm = None
        if res_momentum is not None:
            residual_norm = (res_weight, res_bias, res_running_mean, res_running_var, res_momentum, res_eps)
        z_from = z_source(act, residual is not None, x.shape[1])
        y, stats, mask, res_stats = _forward(x, weight, bias, running_mean, running_var, momentum, eps, act,
                                             residual, z_from == "relu_mask", residual_norm)
        src = {"output": y, "x_residual": residual, "relu_mask": mask}.get(z_from)
        ctx.save_for_backward(x, weight, stats, src, *((residual, res_stats, res_weight) if residual_norm else ()))
        ctx.act, ctx.z_from = act, z_from
        ctx.param_dtypes = _saved_param_dtypes(weight, bias, res_weight, res_bias)
        ctx.residual_dtype = None if residual is None else residual.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, stats, src, *res_norm = ctx.saved_tensors
        need_dx, need_dres = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        dx, dweight, dbias, dres, sums = _backward(ctx, _like(dy, x), x, weight, stats, src, need_dx, need_dres,
                                                   ctx.residual_dtype, *res_norm)
        dres_weight = dres_bias = None
        if res_norm and ctx.needs_input_grad[9]:
            dres_weight = sums[2].to(ctx.param_dtypes[2])
        if res_norm and ctx.needs_input_grad[10]:
            dres_bias = sums[0].to(ctx.param_dtypes[3])
        return (dx, dweight, dbias, dres) + (None,) * 5 + (dres_weight, dres_bias) + (None,) * 4


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
        dx, dweight, dbias, _, _ = _backward(ctx, dy, x, weight, stats, None, ctx.needs_input_grad[0], False)
        return (dx, dweight, dbias) + (None,) * 8


def batch_norm_act_triton(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                          running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], momentum: float,
                          eps: float, act: str, residual: Optional[torch.Tensor],
                          residual_norm: Optional[tuple] = None) -> torch.Tensor:
    """Arguments validated by the op layer (``residual_norm``: None or a ``ResidualNorm``, with act none or relu).
    Returns y with x's strides (dense x) and dtype."""
    x = _dense(x)
    residual = _like(residual, x) if residual is not None else None
    res_params = tuple(residual_norm) if residual_norm is not None else (None,) * 6
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, weight, bias, residual) + res_params[:2]):
        return _BatchNormAct.apply(x, weight, bias, residual, running_mean, running_var, momentum, eps, act,
                                   *res_params)
    return _forward(x, weight, bias, running_mean, running_var, momentum, eps, act, residual,
                    residual_norm=residual_norm)[0]


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
