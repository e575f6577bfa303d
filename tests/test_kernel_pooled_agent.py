"""The fused Agent-attention op (:func:`vitzoo.ops.pooled_agent_attention`, ``vitzoo.ops._agent_triton``) under the CPU
interpreter (TRITON_INTERPRET=1): output and the gradients of q, k, v (or of the packed qkv buffer) and of both
biases against a float64 brute force built from ``F.adaptive_avg_pool2d`` and two softmax attentions; every pooling
path (identity, equal bins, uneven bins), reduced keys (Agent-PVT), every backward path of the two attentions,
fp16, torch.compile, the custom ops' fake implementations, argument errors. Unwritten outputs are NaN (conftest)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vitzoo.kernels.strip_attention_bwd as strip  # noqa: E402
import vitzoo.kernels.tile_attention_bwd as tile  # noqa: E402
import vitzoo.ops._agent_triton as agent_triton  # noqa: E402
from vitzoo.ops import agent_attention, agent_pool, pooled_agent_attention  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN


def _attend(q, k, v, bias, scale):
    logits = scale * q @ k.transpose(-1, -2)
    return torch.softmax(logits if bias is None else logits + bias, dim=-1) @ v


def _brute(q, k, v, size, pooled, agent_bias, query_bias, scale):
    """float64 reference: the official module's pooling (adaptive average pooling of the (h, w) query map), then the
    agents' and the queries' attention."""
    b, heads, n, d = q.shape
    q_map = q.transpose(-1, -2).reshape(b, heads * d, *size)
    tokens = F.adaptive_avg_pool2d(q_map, pooled).reshape(b, heads, d, -1).transpose(-1, -2)
    return _attend(q, tokens, _attend(tokens, k, v, agent_bias, scale), query_bias, scale)


def _rel(a, b):
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm())


# (B, heads, (h, w), pooled grid, key grid, d, packed q/k/v, with biases)
CASES = {
    "identity-pool-packed": (2, 2, (4, 4), (4, 4), None, 16, True, True),  # Agent-Swin stage 4: agents are q
    "equal-bins-packed": (2, 2, (6, 6), (3, 3), None, 32, True, True),  # Agent-Swin stages 2-3
    "uneven-bins": (1, 3, (5, 7), (2, 3), None, 16, False, True),  # Agent-Swin stage 1 (56 -> 3)
    "reduced-keys": (2, 1, (6, 6), (3, 3), (3, 3), 16, False, True),  # Agent-PVT: keys on a sr-reduced grid
    "no-biases": (1, 2, (4, 6), (2, 3), None, 16, True, False),
}


def _inputs(case, dtype):
    b, heads, size, pooled, kv_grid, d, packed, biased = CASES[case]
    n, agents = size[0] * size[1], pooled[0] * pooled[1]
    nk = n if kv_grid is None else kv_grid[0] * kv_grid[1]
    if packed:  # Agent-Swin: one qkv projection, seen as (B, heads, N, d) slices
        qkv = torch.randn(b, n, 3, heads, d, dtype=dtype)
        leaves = [qkv]
    else:
        q, k, v = torch.randn(b, n, heads, d, dtype=dtype), torch.randn(b, nk, heads, d, dtype=dtype), \
            torch.randn(b, nk, heads, d, dtype=dtype)
        leaves = [q, k, v]
    biases = [torch.randn(heads, agents, nk), torch.randn(heads, n, agents)] if biased else [None, None]
    return leaves, biases, size, pooled


def _split(leaves):
    if len(leaves) == 1:
        return [t.transpose(1, 2) for t in leaves[0].unbind(2)]
    return [t.transpose(1, 2) for t in leaves]


def _run(fn, leaves, biases, size, pooled, go, dtype=None):
    leaves = [t.detach().clone().to(dtype or t.dtype).requires_grad_(True) for t in leaves]
    biases = [t.detach().clone().to(dtype or t.dtype).requires_grad_(True) if t is not None else None
              for t in biases]
    out = fn(*_split(leaves), size, pooled, *biases)
    out.backward(go.to(out.dtype))
    return out, [t.grad for t in leaves] + [t.grad for t in biases if t is not None]


def _check(case, dtype, tol):
    leaves, biases, size, pooled = _inputs(case, dtype)
    q = _split(leaves)[0]
    scale = q.shape[-1] ** -0.5
    go = torch.randn(q.shape, dtype=dtype)
    out, grads = _run(lambda *a: pooled_agent_attention(*a, backend="triton"), leaves, biases, size, pooled, go)
    ref, ref_grads = _run(lambda *a: _brute(*a, scale=scale), leaves, biases, size, pooled, go, torch.float64)
    assert out.dtype == dtype and out.shape == ref.shape
    assert _rel(out, ref) < tol, ("out", _rel(out, ref))
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g.shape == r.shape and _rel(g, r) < tol, (i, _rel(g, r))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64(case, monkeypatch):
    calls = []
    for name in ("_OP", "_PACKED_OP"):
        real = getattr(agent_triton, name)
        monkeypatch.setattr(agent_triton, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    _check(case, torch.float32, 1e-4)
    assert calls == ["_PACKED_OP" if CASES[case][6] else "_OP"]  # packed q, k, v reach the packed twin


def test_pack_qkv_false_keeps_the_unpacked_op(monkeypatch):
    """pack_qkv=False (q, k or v also feed another op) takes the unpacked twin even for packed slices."""
    calls = []
    for name in ("_OP", "_PACKED_OP"):
        real = getattr(agent_triton, name)
        monkeypatch.setattr(agent_triton, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    leaves, biases, size, pooled = _inputs("equal-bins-packed", torch.float32)
    go = torch.randn(_split(leaves)[0].shape)
    got = _run(lambda *a: pooled_agent_attention(*a, backend="triton", pack_qkv=False), leaves, biases, size, pooled,
               go)
    want = _run(lambda *a: pooled_agent_attention(*a, backend="triton"), leaves, biases, size, pooled, go)
    assert calls == ["_OP", "_PACKED_OP"]
    for a, b in zip([got[0]] + got[1], [want[0]] + want[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("path", ["one_tile", "strip", "general"])
def test_every_attention_backward_path(path, monkeypatch):
    """The two attentions' backwards write into the (packed) gradient buffers on each path."""
    monkeypatch.setattr(tile, "ENABLED", path == "one_tile")
    monkeypatch.setattr(strip, "ENABLED", path in ("one_tile", "strip"))
    monkeypatch.setattr(strip, "MIN_PAIRS_PER_SM", 0)  # tiny batches too
    _check("equal-bins-packed" if path != "one_tile" else "identity-pool-packed", torch.float32, 1e-4)


def test_fp16():
    _check("equal-bins-packed", torch.float16, 3e-3)


def test_same_as_composed_ops_and_torch_backend():
    """The fused op equals agent_attention on agent_pool's tokens (Triton) and the torch backend."""
    leaves, biases, size, pooled = _inputs("uneven-bins", torch.float32)
    go = torch.randn(_split(leaves)[0].shape)

    def composed(q, k, v, size, pooled, ab, qb):
        return agent_attention(q, k, v, agent_pool(q, size, pooled), ab, qb, backend="triton")

    fused = _run(lambda *a: pooled_agent_attention(*a, backend="triton"), leaves, biases, size, pooled, go)
    for fn in (composed, lambda *a: pooled_agent_attention(*a, backend="torch")):
        other = _run(fn, leaves, biases, size, pooled, go)
        torch.testing.assert_close(fused[0], other[0], rtol=1e-5, atol=1e-5)
        for a, b in zip(fused[1], other[1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_matches_eager():
    leaves, biases, size, pooled = _inputs("equal-bins-packed", torch.float32)
    go = torch.randn(_split(leaves)[0].shape)
    eager = _run(lambda *a: pooled_agent_attention(*a, backend="triton"), leaves, biases, size, pooled, go)
    compiled_fn = torch.compile(lambda *a: pooled_agent_attention(*a, backend="triton"), backend="aot_eager",
                                fullgraph=True)
    compiled = _run(compiled_fn, leaves, biases, size, pooled, go)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooled", [(4, 4), (2, 2), (3, 3)])
def test_custom_ops_fake_impls(pooled):
    """Fake implementations give the real outputs' shapes, strides and dtypes (opcheck), for each pooling path."""
    checks = ("test_schema", "test_faketensor")
    heads, d, size = 2, 16, (4, 4)
    agents = pooled[0] * pooled[1]
    qkv = torch.randn(1, 16, 3, heads, d)  # token-major slices on dim 2
    ab, qb = torch.randn(1, heads, agents, 16), torch.randn(1, heads, 16, agents)
    geometry = (*size, *pooled, d ** -0.5)
    fwd = (qkv, 2, ab, qb, *geometry)
    torch.library.opcheck(agent_triton._PACKED_OP.forward_op, fwd, test_utils=checks)
    out, *saved = agent_triton._PACKED_OP.forward_impl(*fwd)
    torch.library.opcheck(agent_triton._PACKED_OP.backward_op,
                          (torch.randn_like(out), qkv, 2, ab, qb, *saved[:2], out, *saved[2:], *geometry, True,
                           False), test_utils=checks)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    torch.library.opcheck(agent_triton._OP.forward_op, (q, k, v, None, qb, *geometry), test_utils=checks)
    out, *saved = agent_triton._OP.forward_impl(q, k, v, None, qb, *geometry)
    torch.library.opcheck(agent_triton._OP.backward_op,
                          (torch.randn_like(out), q, k, v, None, qb, *saved[:2], out, *saved[2:], *geometry, False,
                           True), test_utils=checks)


def test_argument_errors():
    q = torch.randn(1, 2, 16, 16)
    with pytest.raises(ValueError, match="agent_bias"):
        pooled_agent_attention(q, q, q, (4, 4), 4, torch.randn(2, 5, 16), None, backend="triton")
    with pytest.raises(ValueError, match="query_bias"):
        pooled_agent_attention(q, q, q, (4, 4), 4, None, torch.randn(2, 16, 3), backend="triton")
    with pytest.raises(ValueError, match="agent_num must be a perfect square"):
        pooled_agent_attention(q, q, q, (4, 4), 5, backend="triton")
    with pytest.raises(ValueError, match=r"h\*w=20"):
        pooled_agent_attention(q, q, q, (4, 5), 4)
    with pytest.raises(ValueError, match="head_dim"):
        pooled_agent_attention(torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8), (4, 4),
                               4, backend="triton")


@pytest.mark.parametrize("size, pooled", [((6, 6), (3, 3)), ((4, 6), (2, 3)), ((6, 4), (1, 2)), ((3, 5), (3, 5))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_grid_pool_kernels_match_float64(size, pooled, dtype):
    """grid_pool_fwd (mean over equal bins) and grid_pool_bwd_add (dq += pool backward of two gradients) on
    head-split views of token-major tensors, against adaptive_avg_pool2d / its autograd in float64."""
    from vitzoo.kernels.grid_pool_bwd import grid_pool_bwd_add
    from vitzoo.kernels.grid_pool_fwd import grid_pool_fwd

    b, heads, d = 2, 3, 16
    n, agents = size[0] * size[1], pooled[0] * pooled[1]
    x = torch.randn(b, n, heads, d, dtype=dtype).transpose(1, 2)  # (B, heads, N, d) view, token-major memory
    x64 = x.double().requires_grad_(True)
    want = F.adaptive_avg_pool2d(x64.transpose(-1, -2).reshape(b, heads * d, *size), pooled)
    want = want.reshape(b, heads, d, agents).transpose(-1, -2)
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    if pooled != size:  # 1 x 1 bins: the callers never pool (tokens are q)
        got = grid_pool_fwd(x, size, pooled)
        assert got.dtype == dtype and got.stride(2) > got.stride(1)  # x's memory order
        assert _rel(got, want) < tol
    ga, gb = (torch.randn(b, agents, heads, d, dtype=dtype).transpose(1, 2) for _ in range(2))
    grad_x = torch.randn(b, n, heads, d, dtype=dtype).transpose(1, 2)
    expected = grad_x.double() + torch.autograd.grad(want, x64, ga.double() + gb.double(), retain_graph=True)[0]
    assert _rel(grid_pool_bwd_add(grad_x.clone(), ga, gb, size, pooled), expected) < tol
    expected_a = grad_x.double() + torch.autograd.grad(want, x64, ga.double())[0]
    assert _rel(grid_pool_bwd_add(grad_x.clone(), ga, None, size, pooled), expected_a) < tol


def test_grid_pool_errors():
    from vitzoo.kernels.grid_pool_bwd import grid_pool_bwd_add
    from vitzoo.kernels.grid_pool_fwd import grid_pool_fwd

    x = torch.randn(1, 2, 30, 16)
    with pytest.raises(ValueError, match=r"pooled grid \(2, 4\) must divide the token grid \(5, 6\)"):
        grid_pool_fwd(x, (5, 6), (2, 4))
    with pytest.raises(ValueError, match="h\\*w = 36"):
        grid_pool_fwd(x, (6, 6), (3, 3))
    with pytest.raises(ValueError, match="grad_a must be"):
        grid_pool_bwd_add(x, torch.randn(1, 2, 4, 16), None, (5, 6), (5, 3))

