"""Pure-torch biased dense attention and Agent attention (vitzoo.ops.biased / vitzoo.ops.agent) against independent
float64 references: a brute-force softmax with the bias explicitly expanded, and a literal re-implementation of the
official LeapLabTHU Agent-Attention forward (agent_swin.py / agent_pvt.py AgentAttention) from its parameter shapes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitzoo.ops import agent_attention, agent_biases, agent_pool, agent_pvt_biases, agent_swin_biases, biased_attention
from vitzoo.ops.agent import pooling_kind, uneven_pool_backward

BROADCAST_SHAPES = ["qk", "1qk", "hqk", "11qk", "1hqk", "b1qk", "bhqk"]


def _bias_shape(kind, b, h, lq, lk):
    sizes = {"q": lq, "k": lk, "h": h, "b": b, "1": 1}
    return tuple(sizes[c] for c in kind)


def _brute(q, k, v, bias, scale):
    """float64 softmax(scale q k^T + bias) v with the bias expanded to the full (B, H, Lq, Lk) map."""
    logits = scale * torch.einsum("bhqd,bhkd->bhqk", q, k)
    if bias is not None:
        logits = logits + bias.expand_as(logits)
    return torch.einsum("bhqk,bhkd->bhqd", torch.softmax(logits, dim=-1), v)


def _grads(fn, inputs, grad_out):
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    out.backward(grad_out)
    return out.detach(), [t.grad.detach().clone() for t in inputs]


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("kind", BROADCAST_SHAPES)
@pytest.mark.parametrize("lq,lk", [(9, 37), (37, 9), (12, 12)])
def test_reference_matches_bruteforce_every_broadcast(kind, lq, lk):
    b, h, d, dv = 3, 2, 8, 5
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, dv)
    bias = torch.randn(_bias_shape(kind, b, h, lq, lk))
    scale = 0.3
    go = torch.randn(b, h, lq, dv)
    out, grads = _grads(lambda *t: biased_attention(*t, scale=scale, backend="torch"), _leaves(q, k, v, bias), go)
    ref_out, ref_grads = _grads(lambda *t: _brute(*t, scale), _leaves(*(t.double() for t in (q, k, v, bias))),
                                go.double())
    assert out.dtype == torch.float32 and out.shape == (b, h, lq, dv)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    for name, g, rg in zip(("q", "k", "v", "bias"), grads, ref_grads):
        assert g.shape == rg.shape, name
        torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-5, msg=f"grad {name} ({kind})")


@pytest.mark.parametrize("kind", ["qk", "hqk", "b1qk", "bhqk"])
def test_gradcheck_including_bias(kind):
    b, h, lq, lk, d = 2, 2, 3, 5, 4
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64, requires_grad=True) for n in (lq, lk, lk))
    bias = torch.randn(_bias_shape(kind, b, h, lq, lk), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: biased_attention(*t, scale=0.7, backend="torch"), (q, k, v, bias),
                                    fast_mode=True)


def test_no_bias_default_scale_and_masking():
    b, h, lq, lk, d = 2, 3, 7, 11, 16
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64) for n in (lq, lk, lk))
    torch.testing.assert_close(biased_attention(q, k, v, backend="torch"), _brute(q, k, v, None, d ** -0.5))
    mask = torch.zeros(h, lq, lk, dtype=torch.float64)
    mask[:, :, 3:] = float("-inf")  # keys 3.. masked out: equals attention over the first 3 keys only
    out = biased_attention(q, k, v, mask, backend="torch")
    torch.testing.assert_close(out, _brute(q, k[:, :, :3], v[:, :, :3], None, d ** -0.5))


def test_half_inputs_and_autocast():
    b, h, lq, lk, d = 2, 2, 9, 20, 16
    q, k, v = (torch.randn(b, h, n, d) for n in (lq, lk, lk))
    bias = torch.randn(h, lq, lk)
    ref = _brute(q.double(), k.double(), v.double(), bias.double(), d ** -0.5)
    out = biased_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias, backend="torch")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=3e-2, atol=3e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = biased_attention(q, k, v, bias, backend="torch")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=3e-2, atol=3e-2)


def test_biased_attention_errors():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    with pytest.raises(ValueError, match="q must be a 4-D"):
        biased_attention(q[0], k, v)
    with pytest.raises(ValueError, match="share"):
        biased_attention(q, k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match="k head_dim"):
        biased_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="v must have as many tokens"):
        biased_attention(q, k, v[:, :, :6])
    for bad in ((5, 6), (2, 5, 7), (3, 3, 5, 7), (2, 2, 5, 7), (5,), (1, 1, 1, 5, 7)):
        with pytest.raises(ValueError, match="bias must|3-D bias|4-D bias"):
            biased_attention(q, k, v, torch.randn(bad))
    with pytest.raises(ValueError, match="floating-point"):
        biased_attention(q, k, v, torch.zeros(5, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="backend"):
        biased_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="head_dim"):  # the kernel's head dims are 16/32/64
        biased_attention(q, k, v, backend="triton")


# --------------------------------------------------------------------------------------------------------------
# Agent attention vs a literal float64 re-implementation of the official forward (LeapLabTHU/Agent-Attention)
# --------------------------------------------------------------------------------------------------------------

def _official_params(heads, agents, q_hw, kv_hw, dtype=torch.float64):
    """Random tensors with the official AgentAttention parameter shapes (trunc_normal std .02 there; larger here so
    the biases matter numerically)."""
    return dict(
        an_bias=torch.randn(heads, agents, 7, 7, dtype=dtype) * 0.5,
        na_bias=torch.randn(heads, agents, 7, 7, dtype=dtype) * 0.5,
        ah_bias=torch.randn(1, heads, agents, kv_hw[0], 1, dtype=dtype) * 0.5,
        aw_bias=torch.randn(1, heads, agents, 1, kv_hw[1], dtype=dtype) * 0.5,
        ha_bias=torch.randn(1, heads, q_hw[0], 1, agents, dtype=dtype) * 0.5,
        wa_bias=torch.randn(1, heads, 1, q_hw[1], agents, dtype=dtype) * 0.5,
    )


def _official_forward(q, k, v, p, num_heads, agent_num, window_size, kv_size):
    """Literal transcription of the official AgentAttention.forward (agent_pvt.py; agent_swin.py is the sr_ratio=1
    case), from ``agent_tokens = self.pool(...)`` to ``x = q_attn @ agent_v`` (before dwc / proj). q: (b, n, c);
    k, v: (b, n_kv, c)."""
    b, n, c = q.shape
    head_dim = c // num_heads
    scale = head_dim ** -0.5
    h, w = window_size
    pool_size = int(agent_num ** 0.5)
    pool = nn.AdaptiveAvgPool2d(output_size=(pool_size, pool_size))
    softmax = nn.Softmax(dim=-1)
    agent_tokens = pool(q.reshape(b, h, w, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
    q = q.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
    k = k.reshape(b, k.shape[1], num_heads, head_dim).permute(0, 2, 1, 3)
    v = v.reshape(b, v.shape[1], num_heads, head_dim).permute(0, 2, 1, 3)
    agent_tokens = agent_tokens.reshape(b, agent_num, num_heads, head_dim).permute(0, 2, 1, 3)
    position_bias1 = F.interpolate(p["an_bias"], size=kv_size, mode="bilinear")
    position_bias1 = position_bias1.reshape(1, num_heads, agent_num, -1).repeat(b, 1, 1, 1)
    position_bias2 = (p["ah_bias"] + p["aw_bias"]).reshape(1, num_heads, agent_num, -1).repeat(b, 1, 1, 1)
    position_bias = position_bias1 + position_bias2
    agent_attn = softmax((agent_tokens * scale) @ k.transpose(-2, -1) + position_bias)
    agent_v = agent_attn @ v
    agent_bias1 = F.interpolate(p["na_bias"], size=window_size, mode="bilinear")
    agent_bias1 = agent_bias1.reshape(1, num_heads, agent_num, -1).permute(0, 1, 3, 2).repeat(b, 1, 1, 1)
    agent_bias2 = (p["ha_bias"] + p["wa_bias"]).reshape(1, num_heads, -1, agent_num).repeat(b, 1, 1, 1)
    agent_bias = agent_bias1 + agent_bias2
    q_attn = softmax((q * scale) @ agent_tokens.transpose(-2, -1) + agent_bias)
    return q_attn @ agent_v  # (b, heads, n, head_dim)


def _heads(x, heads):
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


@pytest.mark.parametrize("agents,window", [(9, (6, 6)), (16, (8, 8)), (49, (7, 7)), (9, (5, 7))])
def test_agent_swin_matches_official(agents, window):
    b, heads, c = 2, 3, 24
    n = window[0] * window[1]
    x = [torch.randn(b, n, c, dtype=torch.float64) for _ in range(3)]
    params = _official_params(heads, agents, window, window)
    if window[0] != window[1]:  # the official Swin module assumes square windows: check the general builder only
        biases = agent_biases(*params.values(), window, window)
    else:
        biases = agent_swin_biases(*params.values(), window)
    ref = _official_forward(*x, params, heads, agents, window, window)
    q, k, v = (_heads(t, heads) for t in x)
    tokens = agent_pool(q, window, agents)
    out = agent_attention(q, k, v, tokens, biases.agent_bias, biases.query_bias, backend="torch")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # float32 parameters/inputs, same numerics within float32 rounding
    p32 = {key: t.float() for key, t in params.items()}
    b32 = agent_biases(*p32.values(), window, window)
    out32 = agent_attention(q.float(), k.float(), v.float(), agent_pool(q.float(), window, agents), *b32,
                            backend="torch")
    torch.testing.assert_close(out32.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sr_ratio", [1, 2])
def test_agent_pvt_matches_official(sr_ratio):
    b, heads, c, agents, window = 2, 2, 16, 16, (8, 8)
    kv = (window[0] // sr_ratio, window[1] // sr_ratio)
    q_in = torch.randn(b, window[0] * window[1], c, dtype=torch.float64)
    k_in, v_in = (torch.randn(b, kv[0] * kv[1], c, dtype=torch.float64) for _ in range(2))
    params = _official_params(heads, agents, window, kv)
    ref = _official_forward(q_in, k_in, v_in, params, heads, agents, window, kv)
    biases = agent_pvt_biases(*params.values(), window, sr_ratio)
    assert biases.agent_bias.shape == (heads, agents, kv[0] * kv[1])
    assert biases.query_bias.shape == (heads, window[0] * window[1], agents)
    q = _heads(q_in, heads)
    out = agent_attention(q, _heads(k_in, heads), _heads(v_in, heads), agent_pool(q, window, agents), *biases,
                          backend="torch")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("agents", [9, 12, 16, 49])
def test_agent_attention_gradients_vs_bruteforce(agents):
    """Every input incl. both biases (and through them the official parameters) gets the float64 gradient."""
    b, heads, n, d = 2, 2, 30, 8
    q, k, v = (torch.randn(b, heads, n, d, dtype=torch.float64) for _ in range(3))
    tokens = torch.randn(b, heads, agents, d, dtype=torch.float64)
    agent_bias, query_bias = torch.randn(heads, agents, n, dtype=torch.float64), torch.randn(heads, n, agents,
                                                                                           dtype=torch.float64)
    scale = d ** -0.5

    def brute(q, k, v, t, ab, qb):
        return _brute(q, t, _brute(t, k, v, ab, scale), qb, scale)

    inputs = (q, k, v, tokens, agent_bias, query_bias)
    go = torch.randn(b, heads, n, d, dtype=torch.float64)
    out, grads = _grads(lambda *t: agent_attention(*t, backend="torch"), _leaves(*inputs), go)
    ref_out, ref_grads = _grads(brute, _leaves(*inputs), go)
    torch.testing.assert_close(out, ref_out)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg)


def test_agent_bias_builder_gradients_reach_official_parameters():
    heads, agents, window = 2, 4, (4, 4)
    params = {k: t.requires_grad_(True) for k, t in _official_params(heads, agents, window, window).items()}
    assert torch.autograd.gradcheck(lambda *p: agent_swin_biases(*p, window), tuple(params.values()), fast_mode=True)


def test_agent_pool_matches_module_and_pairs():
    b, heads, d, h, w = 2, 3, 4, 6, 9
    q = torch.randn(b, heads, h * w, d, dtype=torch.float64)
    x = q.transpose(1, 2).reshape(b, h * w, heads * d)  # the official (b, n, c) layout
    pooled = nn.AdaptiveAvgPool2d((3, 4))(x.reshape(b, h, w, -1).permute(0, 3, 1, 2)).reshape(b, heads * d, -1)
    ref = pooled.permute(0, 2, 1).reshape(b, 12, heads, d).permute(0, 2, 1, 3)
    torch.testing.assert_close(agent_pool(q, (h, w), (3, 4)), ref)
    assert agent_pool(q, (h, w), 9).shape == (b, heads, 9, d)
    # uneven bins (17 -> 5 overlaps neighbours) and the gradient of the separable GEMM form
    q2 = torch.randn(1, 2, 13 * 17, 3, dtype=torch.float64, requires_grad=True)
    want = nn.AdaptiveAvgPool2d((4, 5))(q2.transpose(-1, -2).reshape(1, 6, 13, 17))
    want = want.reshape(1, 2, 3, 20).transpose(-1, -2)
    torch.testing.assert_close(agent_pool(q2, (13, 17), (4, 5)), want)
    assert torch.autograd.gradcheck(lambda t: agent_pool(t, (13, 17), (4, 5)), (q2,), fast_mode=True)


@pytest.mark.parametrize("q_hw,kv_hw", [((7, 7), (7, 7)), ((14, 14), (14, 14)), ((5, 9), (3, 4)), ((56, 56), (28, 28))])
def test_agent_biases_match_interpolate_with_gradients(q_hw, kv_hw):
    """The GEMM resize (identity when the size is unchanged, up- and down-sampling, rectangular grids) gives the
    official F.interpolate biases and the same parameter gradients."""
    heads, agents = 2, 9
    params = {k: t.requires_grad_(True) for k, t in _official_params(heads, agents, q_hw, kv_hw).items()}
    got = agent_biases(*params.values(), q_hw, kv_hw)
    p = params
    want_agent = (F.interpolate(p["an_bias"], size=kv_hw, mode="bilinear").reshape(heads, agents, -1)
                  + (p["ah_bias"] + p["aw_bias"]).reshape(heads, agents, -1))
    want_query = (F.interpolate(p["na_bias"], size=q_hw, mode="bilinear").reshape(heads, agents, -1).transpose(1, 2)
                  + (p["ha_bias"] + p["wa_bias"]).reshape(heads, -1, agents))
    torch.testing.assert_close(got.agent_bias, want_agent, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.query_bias, want_query, rtol=1e-12, atol=1e-12)
    g_agent, g_query = torch.randn_like(want_agent), torch.randn_like(want_query)
    leaves = tuple(params.values())
    grads = torch.autograd.grad((got.agent_bias * g_agent).sum() + (got.query_bias * g_query).sum(), leaves)
    want = torch.autograd.grad((want_agent * g_agent).sum() + (want_query * g_query).sum(), leaves)
    for name, g, w in zip(params, grads, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("hw,pooled", [((7, 7), (7, 7)), ((28, 28), (4, 4)), ((6, 9), (3, 3)), ((10, 7), (3, 2))])
def test_agent_pool_paths_match_adaptive_avg_pool(hw, pooled):
    """Identity (one token per bin), equal bins (strided mean) and uneven bins (GEMMs), outputs and gradients."""
    b, heads, d = 2, 3, 4
    q = torch.randn(b, heads, hw[0] * hw[1], d, dtype=torch.float64, requires_grad=True)

    def ref(t):
        grid = t.transpose(-1, -2).reshape(b, heads * d, *hw)
        return nn.AdaptiveAvgPool2d(pooled)(grid).reshape(b, heads, d, -1).transpose(-1, -2)

    go = torch.randn(b, heads, pooled[0] * pooled[1], d, dtype=torch.float64)
    out = agent_pool(q, hw, pooled)
    (g,) = torch.autograd.grad((out * go).sum(), q)
    want = ref(q)
    (g_want,) = torch.autograd.grad((want * go).sum(), q)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_want, rtol=1e-12, atol=1e-12)


def test_agent_pool_after_inference_mode_trains():
    """The pooling operators are cached; a first call under inference_mode must not poison a later training call."""
    with torch.inference_mode():
        agent_pool(torch.randn(1, 2, 11 * 7, 4), (11, 7), (2, 3))
    q = torch.randn(1, 2, 11 * 7, 4, requires_grad=True)
    agent_pool(q, (11, 7), (2, 3)).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_agent_errors():
    q = torch.randn(2, 3, 36, 8)
    with pytest.raises(ValueError, match="perfect square"):
        agent_pool(q, 6, 12)
    with pytest.raises(ValueError, match="h\\*w"):
        agent_pool(q, (5, 6), 9)
    with pytest.raises(ValueError, match="agent_tokens"):
        agent_attention(q, q, q, torch.randn(2, 3, 9, 4))
    params = _official_params(3, 9, (6, 6), (6, 6), torch.float32)
    with pytest.raises(ValueError, match="ah_bias"):
        agent_swin_biases(*params.values(), (5, 6))
    bad = dict(params, ha_bias=torch.zeros(1, 3, 6, 1, 8))
    with pytest.raises(ValueError, match="ha_bias"):
        agent_swin_biases(*bad.values(), 6)
    with pytest.raises(ValueError, match="na_bias"):
        agent_swin_biases(*dict(params, na_bias=torch.zeros(3, 8, 7, 7)).values(), 6)
    with pytest.raises(ValueError, match="sr_ratio"):
        agent_pvt_biases(*params.values(), 6, 0)


@pytest.mark.parametrize("hw, pooled", [((13, 17), (4, 5)), ((7, 9), (3, 2))])
def test_uneven_pool_backward_is_agent_pools_vjp(hw, pooled):
    """The in-place uneven-bins pooling backward (the fused agent op's path for it) equals autograd through
    agent_pool, added to q's existing gradient."""
    assert pooling_kind(hw, pooled) == "uneven"
    b, heads, d = 2, 3, 5
    q = torch.randn(b, heads, hw[0] * hw[1], d, dtype=torch.float64, requires_grad=True)
    g = torch.randn(b, heads, pooled[0] * pooled[1], d, dtype=torch.float64)
    base = torch.randn(b, hw[0] * hw[1], heads, d, dtype=torch.float64).transpose(1, 2)  # strided, as in the op
    want = base + torch.autograd.grad(agent_pool(q, hw, pooled), q, g)[0]
    got = uneven_pool_backward(g, hw, pooled, base.clone())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_pooling_kind():
    assert pooling_kind((7, 7), (7, 7)) == "identity"
    assert pooling_kind((14, 14), (7, 7)) == "equal" and pooling_kind((6, 4), (3, 1)) == "equal"
    assert pooling_kind((56, 56), (3, 3)) == "uneven"
