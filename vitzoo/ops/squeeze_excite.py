"""Squeeze-and-excitation's gating with autograd: ``y = x * gate_fn(mean_hw(x))`` on channels_last maps, the gate's
small MLP (``gate_fn``: timm's ``SEModule`` fc1 -> act -> fc2 -> sigmoid) run by torch.

Why: torch's backward of ``x * gate`` on a channels_last map runs two broadcasting, non-vectorized multiplies, a
product map for the gate's gradient and its reduction, and adds the pooling's gradient (an NCHW-contiguous map) to
the multiply's (channels_last) through the slow mixed-layout path: about 9 of MaxViT-T's 75 ms per train step
(kernels/README.md, "Sixteenth run"). Here, on the Triton path:

* forward: the mean (torch), the gate MLP on the (B, C) means without autograd, ``x * gate`` in one pass
  (``vitzoo.kernels.channel_scale``);
* backward: ``d gate = sum_hw(dy * x)`` in one pass (``vitzoo.kernels.channel_dot``), the gate MLP re-run on the
  saved means to backpropagate ``d gate`` to the means and the MLP's parameters (B x C sized: free), then
  ``dx = dy * gate + d mean / HW`` in one pass.

The torch path is timm's ``SEModule`` computation, so CPU results equal timm's.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ._backend import resolve_backend

__all__ = ["squeeze_excite", "squeeze_excite_torch"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GateFn = Callable[[torch.Tensor], torch.Tensor]


def squeeze_excite_torch(x: torch.Tensor, gate_fn: GateFn) -> torch.Tensor:
    """Pure-torch reference of :func:`squeeze_excite` (timm's ``SEModule.forward`` with ``add_maxpool=False``)."""
    return x * gate_fn(x.mean((2, 3), keepdim=True))


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """The (B, H*W, C) view of a dense channels_last map."""
    batch, channels, height, width = t.shape
    return t.permute(0, 2, 3, 1).reshape(batch, height * width, channels)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _gate_multiply(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x * gate`` (gate (B, C, 1, 1)) in one pass on a dense channels_last map; returns a channels_last map."""
    from ..kernels.channel_scale import channel_scale

    batch, channels, height, width = x.shape
    y = channel_scale(_nhwc(x), gate.flatten(1))
    return y.view(batch, height, width, channels).permute(0, 3, 1, 2)


class _SqueezeExcite(torch.autograd.Function):

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, gate_fn, *params):
        with torch.no_grad():
            pooled = x.mean((2, 3), keepdim=True)
            gate = gate_fn(pooled)
        ctx.gate_fn = gate_fn
        ctx.save_for_backward(x, pooled, gate, *params)
        return _gate_multiply(x, gate)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        from ..kernels.channel_dot import channel_dot
        from ..kernels.channel_scale import channel_scale

        x, pooled, gate, *params = ctx.saved_tensors
        batch, channels, height, width = x.shape
        dy_nhwc = _nhwc(_channels_last(dy))
        dgate = channel_dot(dy_nhwc, _nhwc(x))
        wanted = [p for p, need in zip(params, ctx.needs_input_grad[2:]) if need]
        with torch.enable_grad():
            leaf = pooled.detach().requires_grad_(True)
            regate = ctx.gate_fn(leaf)
            grads = torch.autograd.grad(regate, [leaf, *wanted], dgate.view_as(regate).to(regate.dtype),
                                        allow_unused=True)
        dpooled, dparams = grads[0], iter(grads[1:])
        shift = dpooled.flatten(1).float() / (height * width)
        dx = channel_scale(dy_nhwc, gate.flatten(1), shift=shift, out=torch.empty_like(dy_nhwc, dtype=x.dtype))
        dx = dx.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return (dx, None, *(next(dparams) if need else None for need in ctx.needs_input_grad[2:]))


def squeeze_excite(x: torch.Tensor, gate_fn: GateFn, params: Sequence[torch.Tensor] = (),
                   backend: str = "auto") -> torch.Tensor:
    """``x * gate_fn(x.mean((2, 3), keepdim=True))`` with autograd.

    Args:
        x: (B, C, H, W); the Triton path needs a dense channels_last map (other layouts run the torch path on
            ``"auto"``).
        gate_fn: (B, C, 1, 1) means -> (B, C, 1, 1) gate; it must be deterministic and free of side effects (the
            Triton path runs it again in the backward: no dropout, no BatchNorm in training mode).
        params: every tensor ``gate_fn`` uses that needs a gradient (the MLP's parameters): the Triton path returns
            their gradients through these.
        backend: ``"auto" | "torch" | "triton"`` (:mod:`vitzoo.ops._backend`); "auto" takes Triton for CUDA fp16 /
            bf16 / fp32 channels_last maps, except under ``torch.compile`` tracing.

    Returns y of x's shape and dtype (channels_last on the Triton path).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"squeeze_excite: x must be a (B, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if torch.compiler.is_compiling() and backend == "auto":
        backend = "torch"

    def unsupported() -> Optional[str]:
        if x.dtype not in _DTYPES:
            return f"x dtype must be float16, bfloat16 or float32, got {x.dtype}"
        if x.numel() and not x.is_contiguous(memory_format=torch.channels_last):
            return "x must be a dense channels_last map"
        return None

    if resolve_backend(backend, x, op="squeeze_excite", unsupported_reason=unsupported) != "triton":
        return squeeze_excite_torch(x, gate_fn)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _SqueezeExcite.apply(x, gate_fn, *params)
    return _gate_multiply(x, gate_fn(x.mean((2, 3), keepdim=True)))
