"""Triton path of :func:`vitzoo.ops.batch_norm.batch_norm_act`: the kernels of ``vitzoo.kernels.batch_norm_*``
under one ``torch.autograd.Function``.

Forward: statistics (row chunks, then their merge, which also updates the running statistics and writes the
per-channel affine map), then the transform + residual + activation. Backward: the per-channel sums, then the input
(and residual) gradient. Saved for backward: x, the (4, C) statistics, and what ``dz`` is recomputed from: nothing,
x alone, the residual, or (ReLU after a residual) the output, which the next layer keeps anyway.

Not a ``torch.library`` custom op: the forward mutates the running statistics, and under ``torch.compile`` the op
layer takes the torch path (Inductor fuses BatchNorm's passes itself).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels.batch_norm_act_bwd import batch_norm_act_bwd
from ..kernels.batch_norm_act_bwd_reduce import batch_norm_act_bwd_reduce
from ..kernels.batch_norm_act_fwd import batch_norm_act_fwd
from ..kernels.batch_norm_stats import batch_norm_stats
from ..kernels.batch_norm_stats_merge import batch_norm_stats_merge

__all__ = ["batch_norm_act_triton", "z_source"]


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself when it is dense in NCHW or channels_last order, else an NCHW copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t with exactly x's strides (a copy only when they differ, e.g. an NCHW gradient of a channels_last map)."""
    return t if t.stride() == x.stride() else torch.empty_like(x, dtype=t.dtype).copy_(t)


def z_source(act: str, has_residual: bool) -> str:
    """What the backward recomputes ``act'(z)`` from (``vitzoo.kernels.batch_norm_act_bwd_reduce``)."""
    if act == "none":
        return "none"
    if not has_residual:
        return "x"
    return "output" if act == "relu" else "x_residual"


def _forward(x, weight, bias, running_mean, running_var, momentum, eps, act, residual):
    """(y, stats) for dense x and a residual with x's strides."""
    batch, _, height, width = x.shape
    parts, per_program = batch_norm_stats(x)
    stats = batch_norm_stats_merge(parts, batch * height * width, per_program, weight, bias, running_mean,
                                   running_var, momentum, eps)
    return batch_norm_act_fwd(x, stats, act, residual), stats


class _BatchNormAct(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, momentum, eps, act):
        y, stats = _forward(x, weight, bias, running_mean, running_var, momentum, eps, act, residual)
        z_from = z_source(act, residual is not None)
        src = {"output": y, "x_residual": residual}.get(z_from)
        ctx.save_for_backward(x, weight, stats, src)
        ctx.act, ctx.z_from = act, z_from
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        ctx.residual_dtype = None if residual is None else residual.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, stats, src = ctx.saved_tensors
        dy = _like(dy, x)
        sums = batch_norm_act_bwd_reduce(dy, x, stats, ctx.act, ctx.z_from, src)
        need_dx, need_dweight, need_dbias, need_dres = ctx.needs_input_grad[:4]
        dx = dres = None
        if need_dx or need_dres:
            dx, dres = batch_norm_act_bwd(dy, x, stats, sums, weight, ctx.act, ctx.z_from, src,
                                          ctx.residual_dtype if need_dres else None)
        dweight = sums[1].to(ctx.param_dtypes[0]) if need_dweight else None
        dbias = sums[0].to(ctx.param_dtypes[1]) if need_dbias else None
        return (dx if need_dx else None), dweight, dbias, dres, None, None, None, None, None


def batch_norm_act_triton(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                          running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], momentum: float,
                          eps: float, act: str, residual: Optional[torch.Tensor]) -> torch.Tensor:
    """Arguments validated by the op layer. Returns y with x's strides (dense x) and dtype."""
    x = _dense(x)
    residual = _like(residual, x) if residual is not None else None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, residual)):
        return _BatchNormAct.apply(x, weight, bias, residual, running_mean, running_var, momentum, eps, act)
    return _forward(x, weight, bias, running_mean, running_var, momentum, eps, act, residual)[0]
