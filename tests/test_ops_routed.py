"""vitzoo.ops.routed_attention (BiFormer bi-level routing attention): torch reference vs an independent float64
brute force with an explicit (N, N) mask, the released code's gather formulation, gradcheck, routing, errors."""
import pytest
import torch

from vitzoo.kernels.bench_routed import released_bra_attention
from vitzoo.ops import route_regions, routed_attention, routed_attention_torch


def _region_of_tokens(height, width, n_win):
    rh, rw = -(-height // n_win), -(-width // n_win)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((ys // rh) * n_win + xs // rw).reshape(-1)


def _brute(q, k, v, n_win, index, scale):
    """float64 dense attention per batch with the routing as an explicit (N, N) mask over the valid tokens."""
    batch, height, width, heads = q.shape[:4]
    region = _region_of_tokens(height, width, n_win)
    outs = []
    for b in range(batch):
        allowed = torch.zeros(n_win * n_win, n_win * n_win, dtype=torch.bool)
        for r in range(n_win * n_win):
            for j in index[b, r].tolist():
                allowed[r, j] = True
        mask = allowed[region][:, region]
        qb, kb, vb = (t[b].double().reshape(height * width, heads, -1).transpose(0, 1) for t in (q, k, v))
        s = (scale * qb @ kb.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
        outs.append((s.softmax(-1) @ vb).transpose(0, 1).reshape(height, width, heads, -1))
    return torch.stack(outs)


def _brute_routing(q, k, n_win):
    """Affinity from explicit per-region loops over valid tokens (all heads' channels); -inf for empty regions."""
    batch, height, width = q.shape[:3]
    region = _region_of_tokens(height, width, n_win)
    qf, kf = q.double().reshape(batch, height * width, -1), k.double().reshape(batch, height * width, -1)
    aff = torch.full((batch, n_win ** 2, n_win ** 2), float("-inf"), dtype=torch.float64)
    for b in range(batch):
        means_q = [qf[b, region == r].mean(0) if (region == r).any() else torch.zeros(qf.shape[-1], dtype=torch.float64)
                   for r in range(n_win ** 2)]
        for r in range(n_win ** 2):
            for s in range(n_win ** 2):
                if (region == s).any():
                    aff[b, r, s] = means_q[r] @ kf[b, region == s].mean(0)
    return aff


def _inputs(batch, height, width, heads, d, dv, dtype=torch.float64):
    q, k = (torch.randn(batch, height, width, heads, d, dtype=dtype, requires_grad=True) for _ in range(2))
    return q, k, torch.randn(batch, height, width, heads, dv, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("shape", [
    (2, 13, 11, 3, 1),  # padding on both axes, topk = 1
    (1, 13, 11, 3, 4),
    (2, 12, 12, 3, 2),  # divisible
    (1, 5, 7, 4, 3),  # fully padded region row: never routed to
    (1, 5, 7, 4, 16),  # topk = all regions incl. fully padded ones
])
def test_reference_matches_masked_bruteforce(shape):
    batch, height, width, n_win, topk = shape
    q, k, v = _inputs(batch, height, width, 2, 4, 3)
    out, index = routed_attention(q, k, v, n_win, topk, scale=0.7, backend="torch", return_routing=True)
    assert index.shape == (batch, n_win ** 2, topk) and index.dtype == torch.int64
    ref = _brute(q, k, v, n_win, index, 0.7)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_topk_all_regions_is_dense_attention_over_valid_tokens():
    q, k, v = _inputs(2, 13, 11, 2, 5, 4)
    out = routed_attention(q, k, v, 3, 9, backend="torch")
    flat = [t.reshape(2, 13 * 11, 2, -1).transpose(1, 2) for t in (q, k, v)]
    dense = torch.softmax(flat[0] @ flat[1].transpose(-1, -2) * 5 ** -0.5, -1) @ flat[2]
    torch.testing.assert_close(out, dense.transpose(1, 2).reshape(2, 13, 11, 2, 4), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 13, 11, 3, 4), (1, 5, 7, 4, 12), (1, 8, 8, 2, 3)])
def test_router_matches_explicit_region_means(shape):
    batch, height, width, n_win, topk = shape
    q, k, _ = _inputs(batch, height, width, 3, 4, 1)
    index = route_regions(q, k, n_win, topk)
    aff = _brute_routing(q, k, n_win)
    chosen = aff.gather(-1, index)
    best = aff.sort(-1, descending=True).values[..., :topk]
    torch.testing.assert_close(chosen, best, rtol=1e-12, atol=1e-12)  # tie-robust: the top-k values, any order
    valid = torch.isfinite(aff[0, 0]).sum().item()
    if topk <= valid:
        assert torch.isfinite(chosen).all()  # fully padded regions only when topk exceeds the valid regions
    assert all(len(set(row)) == topk for row in index.reshape(-1, topk).tolist())


def test_routing_is_detached_and_shared_by_heads():
    q, k, v = _inputs(1, 8, 8, 2, 4, 4)
    out, index = routed_attention(q, k, v, 2, 1, backend="torch", return_routing=True)
    assert not index.requires_grad
    # one routing for all heads: per-head attention with the shared index reproduces the output
    for h in range(2):
        one = routed_attention_torch(q[:, :, :, h:h + 1], k[:, :, :, h:h + 1], v[:, :, :, h:h + 1], 2, 1,
                                     index=index)
        torch.testing.assert_close(one[:, :, :, 0], out[:, :, :, h])


@pytest.mark.parametrize("shape", [(2, 14, 14, 7, 4, 2), (1, 12, 8, 4, 5, 3)])
def test_matches_released_gather_formulation(shape):
    batch, height, width, n_win, topk, heads = shape
    q, k, v = _inputs(batch, height, width, heads, 8, 6)
    scale = (heads * 8) ** -0.5  # BiFormer's scale: the full qk width
    ref, r_idx = released_bra_attention(q, k, v, n_win, topk, scale)
    out, index = routed_attention(q, k, v, n_win, topk, scale=scale, backend="torch", return_routing=True)
    assert torch.equal(index.sort(-1).values, r_idx.sort(-1).values)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("shape", [(1, 5, 4, 2, 2), (2, 3, 3, 2, 4)])
def test_gradcheck(shape):
    batch, height, width, n_win, topk = shape
    q, k, v = _inputs(batch, height, width, 1, 2, 2)
    index = route_regions(q, k, n_win, topk)
    assert torch.autograd.gradcheck(lambda a, b, c: routed_attention_torch(a, b, c, n_win, topk, 0.8, index=index),
                                    (q, k, v))


def test_low_precision_and_autocast():
    q, k, v = _inputs(1, 9, 10, 2, 8, 8, dtype=torch.float32)
    ref = routed_attention(q, k, v, 3, 2, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = routed_attention(q, k, v, 3, 2, backend="torch")
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, ref)  # the op computes in float32 whatever autocast says
    mixed = routed_attention(q.detach(), k.detach().to(torch.bfloat16), v.detach(), 3, 2, backend="torch")
    assert mixed.dtype == torch.float32  # promoted to one dtype
    half = routed_attention(*(t.detach().to(torch.bfloat16) for t in (q, k, v)), 3, 2, backend="torch")
    assert half.dtype == torch.bfloat16
    assert (half.float() - ref).abs().max() < 0.05


def test_backward_saves_no_gathered_copies():
    q, k, v = _inputs(2, 12, 12, 2, 4, 4)
    out = routed_attention(q, k, v, 3, 9, backend="torch")
    saved = sum(t.numel() for t in out.grad_fn.saved_tensors)
    # q, k, v, out, lse (one per query row and head) and the index; a topk-fold gathered K/V would be 9x k + v
    assert saved <= 4 * q.numel() + q[..., 0].numel() + 2 * 9 * 9


def test_errors():
    q, k, v = _inputs(1, 6, 6, 2, 4, 4)
    with pytest.raises(ValueError, match="layout"):
        routed_attention(q[0], k[0], v[0], 2, 1)
    with pytest.raises(ValueError, match="same shape"):
        routed_attention(q, k[..., :2], v, 2, 1)
    with pytest.raises(ValueError, match="v must match"):
        routed_attention(q, k, v[:, :5], 2, 1)
    for topk in (0, 5, 1.5, True):
        with pytest.raises(ValueError, match="topk must be an int in 1..n_win"):
            routed_attention(q, k, v, 2, topk)
    for n_win in (0, -1, 2.0):
        with pytest.raises(ValueError, match="n_win must be a positive int"):
            routed_attention(q, k, v, n_win, 1)
    with pytest.raises(ValueError, match="head_dim >= 1"):
        routed_attention(q[..., :0], k[..., :0], v, 2, 1)
    with pytest.raises(ValueError, match="backend"):
        routed_attention(q, k, v, 2, 1, backend="cuda")
    with pytest.raises(ValueError, match="cannot run this call: dtype"):
        routed_attention(q, k, v, 2, 1, backend="triton")  # float64: the kernels take fp16/bf16/fp32
    with pytest.raises(ValueError, match="head_dim and v head_dim must be <= 128"):
        routed_attention(*(torch.randn(1, 4, 4, 1, 130) for _ in range(3)), 2, 1, backend="triton")
    with pytest.raises(ValueError, match="index must be"):
        routed_attention_torch(q, k, v, 2, 1, index=torch.zeros(1, 4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="region ids"):
        routed_attention_torch(q, k, v, 2, 1, index=torch.full((1, 4, 1), 4))
    with pytest.raises(ValueError, match="route_regions expects"):
        route_regions(q, k[..., :2], 2, 1)
