"""Triton path of :func:`vitzoo.ops.agent.pooled_agent_attention`: agent pooling and both biased attentions as one
autograd node (custom ops ``vitzoo::pooled_agent_attention_fwd`` / ``_bwd`` and their packed twin
``vitzoo::pooled_agent_attention_packed_*``, registered through :class:`vitzoo.ops._triton_op.TritonOp`).

Composed from ops, q receives three gradients (the queries' attention, and through the pooling the agents' two
attentions), which autograd materializes at q's size and adds; with packed q, k, v it then stacks dq, dk, dv into the
projection's gradient (``vitzoo.ops._packed``). Here the backward writes dq, dk, dv straight into their (packed)
buffers and adds the pooling's backward of the agents' two small gradients into dq in one pass
(``kernels/grid_pool_bwd.py``); the forward pools with ``kernels/grid_pool_fwd.py`` (equal bins). At Agent-Swin-T
stage 3 (batch 128) those q-sized passes were about 0.1 ms of a 0.57 ms fwd+bwd.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._backend import resolve_backend
from ._packed import packed_source
from ._triton_op import TritonOp
from .biased import BiasedArgs, _bias_as_4d, common_dtype

__all__ = ["pooled_agent_attention_triton"]

_OP_NAME = "pooled_agent_attention"


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, agent_bias: Optional[torch.Tensor],
             query_bias: Optional[torch.Tensor], h: int, w: int, ph: int, pw: int, scale: float
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, agent tokens, agent values, agents' lse, queries' lse). The tokens are an empty tensor when the pooling
    is the identity (they are q itself, and a custom op's output may not alias its input)."""
    from vitzoo.kernels.biased_attention_fwd import biased_attention_fwd
    from vitzoo.kernels.grid_pool_fwd import grid_pool_fwd

    from .agent import agent_pool, pooling_kind

    if pooling_kind((h, w), (ph, pw)) == "equal":
        tokens = grid_pool_fwd(q, (h, w), (ph, pw))
    else:  # the identity (tokens is q) or uneven bins (GEMMs with bin indicators)
        tokens = agent_pool(q, (h, w), (ph, pw))
    agent_v, lse_agents = biased_attention_fwd(tokens, k, v, agent_bias, scale)
    out, lse_queries = biased_attention_fwd(q, tokens, agent_v, query_bias, scale)
    return out, (q.new_empty(0) if tokens is q else tokens), agent_v, lse_agents, lse_queries


def _forward_fake(q, k, v, agent_bias, query_bias, h, w, ph, pw, scale):
    from vitzoo.kernels._layout import empty_in_layout_of

    from .agent import pooling_kind

    batch, heads, n, head_dim = q.shape
    agents, v_dim = ph * pw, v.shape[-1]
    kind = pooling_kind((h, w), (ph, pw))
    if kind == "identity":
        tokens = q.new_empty(0)
    elif kind == "equal":  # grid_pool_fwd: q's memory order
        tokens = empty_in_layout_of(q, (batch, heads, agents, head_dim))
    else:  # agent_pool's GEMM path: contiguous
        tokens = q.new_empty(batch, heads, agents, head_dim)
    agent_v = empty_in_layout_of(q if tokens.numel() == 0 else tokens, (batch, heads, agents, v_dim))
    return (empty_in_layout_of(q, (batch, heads, n, v_dim)), tokens, agent_v,
            q.new_empty(batch, heads, agents, dtype=torch.float32), q.new_empty(batch, heads, n, dtype=torch.float32))


def _backward_into(grad_out, q, k, v, agent_bias, query_bias, tokens, agent_v, out, lse_agents, lse_queries,
                   geometry: Tuple[int, int, int, int], scale: float, agent_bias_grad: bool, query_bias_grad: bool,
                   grads: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    """Write dq, dk, dv into ``grads``; return the two bias gradients (None where not wanted)."""
    from vitzoo.kernels._layout import empty_in_layout_of
    from vitzoo.kernels.biased_attention_bwd import biased_attention_bwd
    from vitzoo.kernels.grid_pool_bwd import grid_pool_bwd_add

    from .agent import pooling_kind, uneven_pool_backward

    dq, dk, dv = grads
    tokens = q if tokens.numel() == 0 else tokens
    d_tokens_as_keys, d_agent_v = empty_in_layout_of(tokens), empty_in_layout_of(agent_v)
    # the queries' attention first: its value gradient is the agents' attention's output gradient
    *_, d_query_bias = biased_attention_bwd(grad_out, q, tokens, agent_v, query_bias, out, lse_queries, scale,
                                            query_bias_grad, grads=(dq, d_tokens_as_keys, d_agent_v))
    d_tokens = empty_in_layout_of(tokens)
    *_, d_agent_bias = biased_attention_bwd(d_agent_v, tokens, k, v, agent_bias, agent_v, lse_agents, scale,
                                            agent_bias_grad, grads=(d_tokens, dk, dv))
    size, pooled = geometry[:2], geometry[2:]
    if pooling_kind(size, pooled) == "uneven":
        uneven_pool_backward(d_tokens.add_(d_tokens_as_keys), size, pooled, dq)
    else:  # one pass: dq += pool_backward(d_tokens + d_tokens_as_keys)
        grid_pool_bwd_add(dq, d_tokens, d_tokens_as_keys, size, pooled)
    return d_agent_bias, d_query_bias


def _bias_grads_or_empty(q: torch.Tensor, *grads: Optional[torch.Tensor]):
    return tuple(g if g is not None else q.new_empty(0) for g in grads)  # custom ops cannot return None


def _backward_impl(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   agent_bias: Optional[torch.Tensor], query_bias: Optional[torch.Tensor], tokens: torch.Tensor,
                   agent_v: torch.Tensor, out: torch.Tensor, lse_agents: torch.Tensor, lse_queries: torch.Tensor,
                   h: int, w: int, ph: int, pw: int, scale: float, agent_bias_grad: bool, query_bias_grad: bool
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from vitzoo.kernels._layout import empty_in_layout_of

    grads = empty_in_layout_of(q), empty_in_layout_of(k), empty_in_layout_of(v)
    bias_grads = _backward_into(grad_out, q, k, v, agent_bias, query_bias, tokens, agent_v, out, lse_agents,
                                lse_queries, (h, w, ph, pw), scale, agent_bias_grad, query_bias_grad, grads)
    return grads + _bias_grads_or_empty(q, *bias_grads)


def _bias_grad_fakes(q, agent_bias, query_bias, agent_bias_grad, query_bias_grad):
    return (agent_bias.new_empty(agent_bias.shape) if agent_bias is not None and agent_bias_grad else q.new_empty(0),
            query_bias.new_empty(query_bias.shape) if query_bias is not None and query_bias_grad else q.new_empty(0))


def _backward_fake(grad_out, q, k, v, agent_bias, query_bias, tokens, agent_v, out, lse_agents, lse_queries,
                   h, w, ph, pw, scale, agent_bias_grad, query_bias_grad):
    from vitzoo.kernels._layout import empty_in_layout_of

    return (empty_in_layout_of(q), empty_in_layout_of(k), empty_in_layout_of(v)) + _bias_grad_fakes(
        q, agent_bias, query_bias, agent_bias_grad, query_bias_grad)


def _save(ctx, attention_inputs, agent_bias, query_bias, geometry, scale, output) -> None:
    out, tokens, agent_v, lse_agents, lse_queries = output
    ctx.save_for_backward(*attention_inputs, agent_bias, query_bias, tokens, agent_v, out, lse_agents, lse_queries)
    ctx.geometry, ctx.scale = tuple(geometry), scale
    ctx.mark_non_differentiable(tokens, agent_v, lse_agents, lse_queries)


def _setup_context(ctx, inputs, output):
    q, k, v, agent_bias, query_bias, h, w, ph, pw, scale = inputs
    _save(ctx, (q, k, v), agent_bias, query_bias, (h, w, ph, pw), scale, output)


def _bias_grad_flags(ctx, first_bias_input: int, agent_bias, query_bias) -> Tuple[bool, bool]:
    return (agent_bias is not None and ctx.needs_input_grad[first_bias_input],
            query_bias is not None and ctx.needs_input_grad[first_bias_input + 1])


def _backward(ctx, backward_fn, grad_out, *unused_grads):
    q, k, v, agent_bias, query_bias, *saved = ctx.saved_tensors
    flags = _bias_grad_flags(ctx, 3, agent_bias, query_bias)
    dq, dk, dv, d_agent_bias, d_query_bias = backward_fn(grad_out, q, k, v, agent_bias, query_bias, *saved,
                                                         *ctx.geometry, ctx.scale, *flags)
    return (dq, dk, dv, d_agent_bias if flags[0] else None, d_query_bias if flags[1] else None) + (None,) * 5


_OP = TritonOp(_OP_NAME, _forward, _forward_fake, _backward_impl, _backward_fake, _setup_context, _backward)


# The same op on packed q, k, v (``vitzoo.ops._packed``, Agent-Swin's one qkv projection): its autograd input is the
# projection output, whose gradient the backward writes as one buffer. ``qkv.unbind(pack_dim)`` are the token-major
# (B, N, heads, d) slices; the attention sees them head-split, (B, heads, N, d).
def _heads_first(qkv: torch.Tensor, pack_dim: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(t.transpose(1, 2) for t in qkv.unbind(pack_dim))


def _forward_packed(qkv: torch.Tensor, pack_dim: int, agent_bias: Optional[torch.Tensor],
                    query_bias: Optional[torch.Tensor], h: int, w: int, ph: int, pw: int, scale: float
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(*_heads_first(qkv, pack_dim), agent_bias, query_bias, h, w, ph, pw, scale)


def _forward_packed_fake(qkv, pack_dim, agent_bias, query_bias, h, w, ph, pw, scale):
    return _forward_fake(*_heads_first(qkv, pack_dim), agent_bias, query_bias, h, w, ph, pw, scale)


def _backward_packed_impl(grad_out: torch.Tensor, qkv: torch.Tensor, pack_dim: int, agent_bias: Optional[torch.Tensor],
                          query_bias: Optional[torch.Tensor], tokens: torch.Tensor, agent_v: torch.Tensor,
                          out: torch.Tensor, lse_agents: torch.Tensor, lse_queries: torch.Tensor, h: int, w: int,
                          ph: int, pw: int, scale: float, agent_bias_grad: bool, query_bias_grad: bool
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d_qkv = torch.empty_like(qkv)
    bias_grads = _backward_into(grad_out, *_heads_first(qkv, pack_dim), agent_bias, query_bias, tokens, agent_v,
                                out, lse_agents, lse_queries, (h, w, ph, pw), scale, agent_bias_grad,
                                query_bias_grad, _heads_first(d_qkv, pack_dim))
    return (d_qkv,) + _bias_grads_or_empty(qkv, *bias_grads)


def _backward_packed_fake(grad_out, qkv, pack_dim, agent_bias, query_bias, tokens, agent_v, out, lse_agents,
                          lse_queries, h, w, ph, pw, scale, agent_bias_grad, query_bias_grad):
    return (torch.empty_like(qkv),) + _bias_grad_fakes(qkv, agent_bias, query_bias, agent_bias_grad,
                                                       query_bias_grad)


def _setup_packed_context(ctx, inputs, output):
    qkv, pack_dim, agent_bias, query_bias, h, w, ph, pw, scale = inputs
    _save(ctx, (qkv,), agent_bias, query_bias, (h, w, ph, pw), scale, output)
    ctx.pack_dim = pack_dim


def _backward_packed(ctx, backward_fn, grad_out, *unused_grads):
    qkv, agent_bias, query_bias, *saved = ctx.saved_tensors
    flags = _bias_grad_flags(ctx, 2, agent_bias, query_bias)
    d_qkv, d_agent_bias, d_query_bias = backward_fn(grad_out, qkv, ctx.pack_dim, agent_bias, query_bias, *saved,
                                                    *ctx.geometry, ctx.scale, *flags)
    return (d_qkv, None, d_agent_bias if flags[0] else None, d_query_bias if flags[1] else None) + (None,) * 5


_PACKED_OP = TritonOp(f"{_OP_NAME}_packed", _forward_packed, _forward_packed_fake, _backward_packed_impl,
                      _backward_packed_fake, _setup_packed_context, _backward_packed)


def pooled_agent_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: Tuple[int, int],
                                  pooled: Tuple[int, int], agent_bias: Optional[torch.Tensor],
                                  query_bias: Optional[torch.Tensor], scale: Optional[float], backend: str,
                                  pack_qkv: bool = True) -> Optional[torch.Tensor]:
    """The fused op's output, or None when ``backend`` resolves to torch for this call (the caller then composes
    :func:`~vitzoo.ops.agent.agent_pool` and :func:`~vitzoo.ops.agent.agent_attention`). Checks every argument
    first, so both paths raise the same errors."""
    from ._biased_triton import unsupported_reason

    args = BiasedArgs(q, k, v, None, scale, op=_OP_NAME)
    agents = pooled[0] * pooled[1]
    agent_bias4 = None if agent_bias is None else _bias_as_4d(agent_bias, args.batch, args.heads, agents, args.lk,
                                                              f"{_OP_NAME} (agent_bias)")
    query_bias4 = None if query_bias is None else _bias_as_4d(query_bias, args.batch, args.heads, args.lq, agents,
                                                              f"{_OP_NAME} (query_bias)")
    dtype = common_dtype(q, k, v)

    def unsupported() -> Optional[str]:
        return unsupported_reason(q, k, v, agent_bias4, dtype) or unsupported_reason(q, k, v, query_bias4, dtype)

    if resolve_backend(backend, q, k, v, agent_bias, query_bias, op=_OP_NAME, unsupported_reason=unsupported) \
            != "triton":
        return None
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    geometry = (*size, *pooled, float(args.scale))
    # the head-split views of a token-major projection, (B, N, 3, heads, d) -> three (B, heads, N, d)
    packed = packed_source(*(t.transpose(1, 2) for t in (q, k, v))) \
        if pack_qkv and torch.is_grad_enabled() and q.requires_grad else None
    if packed is not None:
        return _PACKED_OP(*packed, agent_bias4, query_bias4, *geometry)[0]
    return _OP(q, k, v, agent_bias4, query_bias4, *geometry)[0]
