"""Benchmark of Agent attention (two biased dense attentions) at the Agent-Swin-T shapes, bf16 under autocast.

Shapes (official ``agent_swin_t.yaml``: WINDOW_SIZE 56, AGENT NUM 9-16-49-49, heads 3-6-12-24, head_dim 32) at 224
with batch 128: a block's window is clipped to the stage resolution, so N = 3136 / 784 / 196 / 49 tokens per
window (one window per image). Stage 4 is a plain window-attention block in the official AAAB config; its shape is
timed anyway as the small-map case. Each implementation does the full per-call work from the official parameters:
bias construction (bilinear interpolation of an/na_bias + the h/w terms), agent pooling of q, both attentions:

* ``vitzoo_triton``: :func:`vitzoo.ops.agent_swin_biases` + :func:`vitzoo.ops.pooled_agent_attention` (Triton
  kernels; the biases stay (heads, ., .) and are read with stride 0 over the batch; pooling and both attentions are
  one autograd node whose backward writes the packed qkv gradient);
* ``official``: the literal LeapLabTHU ``AgentAttention.forward`` core (``.repeat(b, ...)`` biases, two matmuls +
  softmax per stage);
* ``sdpa_float_mask``: ``F.scaled_dot_product_attention`` per stage with the biases as float ``attn_mask``;
* ``vitzoo_torch``: our pure-torch reference (full runs only).

fwd is timed under ``torch.no_grad``; fwd+bwd takes gradients of the qkv buffer and all six bias parameters.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from ._bench_utils import gpu_time_ms, hbm_floor_ms, peak_memory_gb, row, tensor_bytes, time_ms

PATTERN = "biased"
BATCH = 128
HEAD_DIM = 32
# (case, window side, agents, heads) per Agent-Swin-T stage at 224
STAGES = (("agent_swin_t_s1", 56, 9, 3), ("agent_swin_t_s2", 28, 16, 6), ("agent_swin_t_s3", 14, 49, 12),
          ("agent_swin_t_s4", 7, 49, 24))


def make_inputs(side: int, agents: int, heads: int, batch: int = BATCH, device: str = "cuda") -> Dict:
    """A bf16 qkv buffer laid out as the official ``qkv(x).reshape(b, n, 3, c)`` and the six fp32 bias parameters."""
    n, c = side * side, heads * HEAD_DIM
    qkv = torch.randn(batch, n, 3, c, device=device, dtype=torch.bfloat16, requires_grad=True)
    shapes = ((heads, agents, 7, 7), (heads, agents, 7, 7), (1, heads, agents, side, 1), (1, heads, agents, 1, side),
              (1, heads, side, 1, agents), (1, heads, 1, side, agents))
    params = [(torch.randn(s, device=device) * 0.02).requires_grad_(True) for s in shapes]
    return dict(qkv=qkv, params=params, side=side, agents=agents, heads=heads)


def _split_heads(qkv: torch.Tensor, heads: int):
    b, n, _, c = qkv.shape
    return [t.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3) for t in qkv.unbind(2)]


def vitzoo_impl(backend: str) -> Callable:
    def run(qkv, params, side, agents, heads):
        from vitzoo.ops import agent_swin_biases, pooled_agent_attention

        q, k, v = _split_heads(qkv, heads)
        agent_bias, query_bias = agent_swin_biases(*params, side)
        return pooled_agent_attention(q, k, v, side, agents, agent_bias, query_bias, backend=backend)

    return run


def official_impl(qkv, params, side, agents, heads):
    """The official AgentAttention.forward core (agent_swin.py), from the pooling to ``q_attn @ agent_v``."""
    an_bias, na_bias, ah_bias, aw_bias, ha_bias, wa_bias = params
    b, n, _, c = qkv.shape
    head_dim = c // heads
    scale = head_dim ** -0.5
    q, k, v = qkv.unbind(2)
    pool_size = int(agents ** 0.5)
    agent_tokens = F.adaptive_avg_pool2d(q.reshape(b, side, side, c).permute(0, 3, 1, 2), pool_size)
    agent_tokens = agent_tokens.reshape(b, c, -1).permute(0, 2, 1)
    q, k, v = (t.reshape(b, n, heads, head_dim).permute(0, 2, 1, 3) for t in (q, k, v))
    agent_tokens = agent_tokens.reshape(b, agents, heads, head_dim).permute(0, 2, 1, 3)
    position_bias1 = F.interpolate(an_bias, size=(side, side), mode="bilinear")
    position_bias1 = position_bias1.reshape(1, heads, agents, -1).repeat(b, 1, 1, 1)
    position_bias2 = (ah_bias + aw_bias).reshape(1, heads, agents, -1).repeat(b, 1, 1, 1)
    position_bias = position_bias1 + position_bias2
    agent_attn = torch.softmax((agent_tokens * scale) @ k.transpose(-2, -1) + position_bias, dim=-1)
    agent_v = agent_attn @ v
    agent_bias1 = F.interpolate(na_bias, size=(side, side), mode="bilinear")
    agent_bias1 = agent_bias1.reshape(1, heads, agents, -1).permute(0, 1, 3, 2).repeat(b, 1, 1, 1)
    agent_bias2 = (ha_bias + wa_bias).reshape(1, heads, -1, agents).repeat(b, 1, 1, 1)
    agent_bias = agent_bias1 + agent_bias2
    q_attn = torch.softmax((q * scale) @ agent_tokens.transpose(-2, -1) + agent_bias, dim=-1)
    return q_attn @ agent_v


def sdpa_impl(qkv, params, side, agents, heads):
    from vitzoo.ops import agent_pool, agent_swin_biases

    q, k, v = _split_heads(qkv, heads)
    agent_bias, query_bias = agent_swin_biases(*params, side)
    tokens = agent_pool(q, side, agents)
    agent_v = F.scaled_dot_product_attention(tokens, k, v, attn_mask=agent_bias.to(q.dtype)[None])
    return F.scaled_dot_product_attention(q, tokens, agent_v, attn_mask=query_bias.to(q.dtype)[None])


def _measure(fn: Callable, inputs: Dict, quick: bool) -> Dict:
    leaves = [inputs["qkv"]] + inputs["params"]
    kwargs = {key: inputs[key] for key in ("side", "agents", "heads")}
    rep = 30 if quick else 100

    def fwd():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return fn(inputs["qkv"], inputs["params"], **kwargs)

    out = fwd()
    grad_out = torch.randn_like(out)

    def fwdbwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res = fn(inputs["qkv"], inputs["params"], **kwargs)
        return torch.autograd.grad(res, leaves, grad_out)

    fwdbwd()  # compile / autotune outside the timed region
    return dict(fwd_ms=time_ms(fwd, rep_ms=rep), fwdbwd_ms=time_ms(fwdbwd, rep_ms=rep),
                fwd_gpu_ms=gpu_time_ms(fwd, rep_ms=rep), fwdbwd_gpu_ms=gpu_time_ms(fwdbwd, rep_ms=rep),
                peak_gb=peak_memory_gb(fwdbwd))


def run(quick: bool = False) -> List[dict]:
    impls = [("vitzoo_triton", vitzoo_impl("triton")), ("official", official_impl), ("sdpa_float_mask", sdpa_impl)]
    if not quick:
        impls.append(("vitzoo_torch", vitzoo_impl("torch")))
    stages = STAGES[::2] if quick else STAGES
    rows: List[dict] = []
    for case, side, agents, heads in stages:
        inputs = make_inputs(side, agents, heads)
        q_bytes = inputs["qkv"].numel() // 3 * inputs["qkv"].element_size()
        # read q, k, v and write the output once; biases and agent tokens are negligible next to them
        floor = hbm_floor_ms(4 * q_bytes + tensor_bytes(inputs["params"]))
        for impl, fn in impls:
            try:
                values = _measure(fn, inputs, quick)
                note = f"B={BATCH} N={side * side} agents={agents} heads={heads} d={HEAD_DIM}"
            except Exception as exc:  # a competitor that cannot run this shape is a result, not a crash
                values, note = {}, f"failed: {type(exc).__name__}: {exc}"[:200]
            rows.append(row(PATTERN, case, impl, dtype="bf16", floor_ms=floor, note=note, **values))
        del inputs
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
