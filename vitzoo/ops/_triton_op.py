"""One registration helper for every Triton-backed op: a ``torch.library`` custom op pair (forward, backward) for
``torch.compile``, and a direct eager path for everything else.

Why two paths: ``torch.compile`` needs the custom ops (fake implementations, registered autograd) to trace models as
opaque kernels, but in eager mode the custom-op dispatcher costs host time on every call. Measured on the H100
machine (torch 2.11, triton 3.6, a tiny NA shape so the GPU is idle): 136 us per forward through the custom op vs
101 us calling the launcher, and 1.81 ms vs 1.42 ms per backward. Eager training is host-bound on attention layers at
those costs, so the eager path calls the same Python implementations through a plain ``torch.autograd.Function``.
Both paths run the same implementation functions and the same ``setup_context`` / ``backward`` formulas, so they
cannot drift apart; the tests run both.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["TritonOp"]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class TritonOp:
    """A Triton op registered as ``vitzoo::<name>_fwd`` / ``vitzoo::<name>_bwd``.

    Args:
        name: op name without namespace and suffix (``"neighborhood_attention_2d"``).
        forward: the forward implementation; type-annotated (the custom-op schema is inferred from it); returns a
            tuple of tensors whose first element is the op's output.
        forward_fake / backward_fake: shape-only implementations for tracing.
        backward_impl: the backward implementation (type-annotated like ``forward``).
        setup_context: ``(ctx, inputs, output)`` as for ``torch.library.register_autograd``.
        backward: ``(ctx, backward_fn, *grads) -> grads of the inputs``; ``backward_fn`` is the backward custom op
            when tracing and ``backward_impl`` in eager mode.
    """

    def __init__(self, name: str, forward: Callable, forward_fake: Callable, backward_impl: Callable,
                 backward_fake: Callable, setup_context: Callable, backward: Callable) -> None:
        self.forward_impl = forward
        self.forward_op = torch.library.custom_op(f"vitzoo::{name}_fwd", forward, mutates_args=())
        self.forward_op.register_fake(forward_fake)
        self.backward_op = torch.library.custom_op(f"vitzoo::{name}_bwd", backward_impl, mutates_args=())
        self.backward_op.register_fake(backward_fake)
        backward_op = self.backward_op

        def traced_backward(ctx, *grads):
            return backward(ctx, backward_op, *grads)

        self.forward_op.register_autograd(traced_backward, setup_context=setup_context)

        class _Eager(torch.autograd.Function):
            """The eager path: same implementation and formulas, no custom-op dispatch."""

            @staticmethod
            def forward(ctx, *inputs):
                # The extra outputs (log-sum-exps, norm statistics) are non-differentiable: without this, autograd
                # would allocate and zero-fill a gradient for each of them on every backward (a kernel and host
                # time per call). The backward formulas never read those gradients.
                ctx.set_materialize_grads(False)
                output = forward(*inputs)
                setup_context(ctx, inputs, output)
                return output

            @staticmethod
            def backward(ctx, *grads):
                return backward(ctx, backward_impl, *grads)

        _Eager.__name__ = _Eager.__qualname__ = f"{name}_eager"
        self._eager = _Eager

    def __call__(self, *inputs):
        """Run the forward; returns the implementation's output tuple."""
        if _compiling():
            return self.forward_op(*inputs)
        if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
            return self._eager.apply(*inputs)
        return self.forward_impl(*inputs)
