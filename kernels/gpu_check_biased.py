"""GPU correctness of the biased dense-attention kernels (and Agent attention built on them): bf16 / fp16 / fp32
outputs and dq, dk, dv, d_bias against float64, on Agent-Swin-like and general shapes, for every d_bias path.

Calls whose shorter side fits one tile are checked on both backward paths (the one-pass strip kernel, case suffix
``/strip``, and the general delta + dk/dv + dq kernels, ``/general``).

Rule (FlashAttention's): relative error of the kernel <= 2 x that of the same-precision plain torch formulation
(what the official code computes under autocast: low-precision matmuls, float32 softmax) + a small floor.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from ._bench_utils import rel_err, row

PATTERN = "biased"
DEVICE = "cuda"  # a CPU smoke run under TRITON_INTERPRET=1 sets "cpu" and shrinks CASES
FLOOR = {torch.bfloat16: 2e-3, torch.float16: 5e-4, torch.float32: 1e-5}

# (case, B, H, Lq, Lk, head_dim, bias kind): Agent-Swin stage 1/3 shapes on both sides, general maps for the
# global-partial path (both sides > 64), 2-D and full biases, head_dim 16 and 64
CASES = (
    ("agent_side_s1", 8, 3, 9, 3136, 32, "hqk"),
    ("query_side_s1", 8, 3, 3136, 9, 32, "hqk"),
    ("agent_side_s3", 16, 12, 49, 196, 32, "hqk"),
    ("query_side_s3", 16, 12, 196, 49, 32, "hqk"),
    ("general_b1qk", 4, 4, 300, 500, 64, "b1qk"),
    ("general_qk_d16", 4, 4, 333, 130, 16, "qk"),
    ("full_bias", 2, 2, 200, 200, 64, "bhqk"),
    ("per_sample_bias_d16", 4, 4, 40, 300, 16, "b1qk"),
    ("agents_64_d64", 4, 4, 500, 64, 64, "qk"),
)


def _bias(kind: str, b: int, h: int, lq: int, lk: int) -> torch.Tensor:
    sizes = {"q": lq, "k": lk, "h": h, "b": b, "1": 1}
    return torch.randn(tuple(sizes[c] for c in kind), device=DEVICE)


def _plain(q, k, v, bias, scale):
    """The same-precision torch formulation: low-precision matmuls, float32 (float64 for the exact reference) logits
    + bias and softmax."""
    acc = torch.promote_types(q.dtype, torch.float32)
    logits = torch.matmul(q, k.transpose(-1, -2)).to(acc) * scale + bias.to(acc)
    return torch.matmul(torch.softmax(logits, dim=-1).to(q.dtype), v)


def _grads(fn, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return [out.detach()] + list(grads)


def _check(case: str, tensors64, scale: float, dtype: torch.dtype, fn_ours, fn_ref) -> List[Dict]:
    names = ("out", "dq", "dk", "dv", "dbias")
    q, k, v, bias, go = tensors64
    exact = _grads(fn_ref, (q, k, v, bias), go)
    low = [t.to(dtype) for t in (q, k, v)] + [bias.float()]
    ours = _grads(fn_ours, low, go)
    plain = _grads(fn_ref, low, go)
    rows = []
    for name, a, p, e in zip(names, ours, plain, exact):
        err, ref_err = rel_err(a, e), rel_err(p, e)
        rows.append(row(PATTERN, case, name, dtype=str(dtype).replace("torch.", ""), err=err, ref_err=ref_err,
                        ok=bool(err <= 2 * ref_err + FLOOR[dtype])))
    return rows


def run() -> List[Dict]:
    from vitzoo.ops import agent_attention, agent_pool, agent_swin_biases, biased_attention

    from . import strip_attention_bwd as strip

    torch.manual_seed(0)
    rows: List[Dict] = []
    for case, b, h, lq, lk, d, kind in CASES:
        scale = d ** -0.5
        q, k, v = (torch.randn(b, h, n, d, device=DEVICE, dtype=torch.float64) for n in (lq, lk, lk))
        bias = _bias(kind, b, h, lq, lk).double()
        go = torch.randn(b, h, lq, d, device=DEVICE, dtype=torch.float64)
        strip_fits = min(lq, lk) <= strip.MAX_FIXED < max(lq, lk)
        for path in ("strip", "general") if strip_fits else ("",):
            saved = strip.ENABLED, strip.MIN_PAIRS_PER_SM
            strip.ENABLED, strip.MIN_PAIRS_PER_SM = path != "general", 0  # these batches are small
            try:
                for dtype in (torch.bfloat16, torch.float16, torch.float32):
                    rows += _check(f"{case}/{path}" if path else case, (q, k, v, bias, go), scale, dtype,
                                   lambda *t: biased_attention(*t, scale=scale, backend="triton"),
                                   lambda *t: _plain(*t, scale))
            finally:
                strip.ENABLED, strip.MIN_PAIRS_PER_SM = saved

    # the full Agent attention (Agent-Swin-T stage 2 window, 16 agents) with the biases built from official-shaped
    # parameters; the plain formulation composes _plain twice
    b, h, side, agents, d = 4, 6, 28, 16, 32
    n = side * side
    params = [torch.randn(s, device=DEVICE, dtype=torch.float64) * 0.5 for s in (
        (h, agents, 7, 7), (h, agents, 7, 7), (1, h, agents, side, 1), (1, h, agents, 1, side),
        (1, h, side, 1, agents), (1, h, 1, side, agents))]
    agent_bias, query_bias = agent_swin_biases(*params, side)
    q, k, v = (torch.randn(b, h, n, d, device=DEVICE, dtype=torch.float64) for _ in range(3))
    go = torch.randn(b, h, n, d, device=DEVICE, dtype=torch.float64)
    scale = d ** -0.5
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        def ours(q, k, v, ab, qb=query_bias.float()):
            return agent_attention(q, k, v, agent_pool(q, side, agents), ab, qb, backend="triton")

        def plain(q, k, v, ab, qb=query_bias):
            t = agent_pool(q, side, agents)
            return _plain(q, t, _plain(t, k, v, ab, scale), qb.to(ab.dtype), scale)

        rows += _check("agent_swin_t_s2", (q, k, v, agent_bias, go), scale, dtype, ours, plain)
    for case, b, h, side, agents in POOLED_CASES:
        rows += _check_pooled(case, b, h, side, agents, d=32)
    return rows


# the fused op (pooling + both attentions, packed qkv gradient) per pooling path: Agent-Swin-T stage 1 (56 -> 3x3,
# uneven bins), stage 3 (14 -> 7x7, equal bins), stage 4 (7x7, identity); batches sized for the strip backward
POOLED_CASES = (("pooled_s1_uneven", 4, 3, 56, 9), ("pooled_s3_equal", 16, 12, 14, 49),
                ("pooled_s4_identity", 16, 24, 7, 49))


def _check_pooled(case: str, b: int, h: int, side: int, agents: int, d: int) -> List[Dict]:
    """pooled_agent_attention on packed (B, N, 3, heads, d) qkv: out, d_qkv, d_agent_bias, d_query_bias against
    float64, next to the same-precision plain formulation (agent_pool + _plain twice)."""
    from vitzoo.ops import agent_pool, pooled_agent_attention

    n, scale = side * side, d ** -0.5
    qkv = torch.randn(b, n, 3, h, d, device=DEVICE, dtype=torch.float64)
    agent_bias = torch.randn(h, agents, n, device=DEVICE, dtype=torch.float64)
    query_bias = torch.randn(h, n, agents, device=DEVICE, dtype=torch.float64)
    go = torch.randn(b, h, n, d, device=DEVICE, dtype=torch.float64)

    def heads(qkv):
        return [t.transpose(1, 2) for t in qkv.unbind(2)]

    def ours(qkv, ab, qb):
        return pooled_agent_attention(*heads(qkv), side, agents, ab, qb, backend="triton")

    def plain(qkv, ab, qb):
        q, k, v = heads(qkv)
        t = agent_pool(q, side, agents)
        return _plain(q, t, _plain(t, k, v, ab, scale), qb.to(ab.dtype), scale)

    exact = _grads(plain, (qkv, agent_bias, query_bias), go)
    rows = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        low = (qkv.to(dtype), agent_bias.float(), query_bias.float())
        for name, a, p, e in zip(("out", "dqkv", "d_agent_bias", "d_query_bias"), _grads(ours, low, go),
                                 _grads(plain, low, go), exact):
            err, ref_err = rel_err(a, e), rel_err(p, e)
            rows.append(row(PATTERN, case, name, dtype=str(dtype).replace("torch.", ""), err=err, ref_err=ref_err,
                            ok=bool(err <= 2 * ref_err + FLOOR[dtype])))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
