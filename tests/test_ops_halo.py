"""halo_attention_2d's torch reference against timm's own ``HaloAttn`` (outputs and gradients: the weight-compat
contract) and against an independent float64 brute force over the explicit zero-padded key map with an (N, N)
window mask and relative bias; gradcheck of the hand-written backward; argument validation."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers.halo_attn import HaloAttn

from vitzoo.ops import halo_attention_2d, halo_attention_2d_torch


def timm_qkv(attn: HaloAttn, x: torch.Tensor):
    """timm's projections in our (B, H, W, heads, d) layout: q is (heads, d_qk) channel-major; kv interleaves each
    head's d_qk key channels then its d_v value channels (timm reshapes kv to (B * heads, d_qk + d_v, ...))."""
    b, _, h, w = x.shape
    q = attn.q(x)
    q = q.view(b, attn.num_heads, attn.dim_head_qk, *q.shape[-2:]).permute(0, 3, 4, 1, 2)
    kv = attn.kv(x).view(b, attn.num_heads, attn.dim_head_qk + attn.dim_head_v, h, w).permute(0, 3, 4, 1, 2)
    return q, kv[..., : attn.dim_head_qk], kv[..., attn.dim_head_qk:]


def ours_like_timm(attn: HaloAttn, x: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    q, k, v = timm_qkv(attn, x)
    rel_h, rel_w = attn.pos_embed.height_rel, attn.pos_embed.width_rel
    if attn.scale_pos_embed:  # timm: (q.k + rel) * scale
        rel_h, rel_w = rel_h * attn.scale, rel_w * attn.scale
    out = halo_attention_2d(q, k, v, attn.block_size, attn.halo_size, rel_h, rel_w, scale=attn.scale, backend=backend)
    b, hq, wq = out.shape[:3]
    return attn.pool(out.permute(0, 3, 4, 1, 2).reshape(b, -1, hq, wq))


TIMM_CASES = [
    # HaloAttn kwargs, input (C, H, W)
    (dict(dim=32, num_heads=2, block_size=4, halo_size=1), (32, 8, 12)),
    (dict(dim=32, num_heads=4, block_size=8, halo_size=3), (32, 16, 8)),  # halonet50ts geometry (win 14)
    (dict(dim=32, num_heads=2, block_size=4, halo_size=2, stride=2), (32, 8, 12)),  # strided query blocks
    (dict(dim=48, num_heads=2, block_size=3, halo_size=2, qk_ratio=0.33), (48, 9, 6)),  # d_qk != d_v, odd block
    (dict(dim=32, num_heads=2, block_size=4, halo_size=1, scale_pos_embed=True), (32, 8, 8)),
    (dict(dim=32, num_heads=2, block_size=2, halo_size=3), (32, 4, 6)),  # halo larger than the block
]


@pytest.mark.parametrize("kwargs,shape", TIMM_CASES)
def test_matches_timm_haloattn_forward_and_backward(kwargs, shape):
    attn = HaloAttn(**kwargs).double()
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    ref = attn(x)
    grad = torch.randn_like(ref)
    params = [x, attn.pos_embed.height_rel, attn.pos_embed.width_rel, attn.q.weight, attn.kv.weight]
    ref_grads = torch.autograd.grad(ref, params, grad)
    out = ours_like_timm(attn, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(torch.autograd.grad(out, params, grad), ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


def brute_force(q, k, v, block, halo, rel_h, rel_w, scale):
    """Dense attention of every query over the whole zero-padded key map (Hp * Wp keys) with an explicit window mask
    and relative bias built pair by pair from the HaloNet definition (no window-offset arithmetic shared with the
    op): padded keys are real zero keys/values."""
    b, hq, wq, heads, _ = q.shape
    _, h, w, _, dv = v.shape
    stride = h // hq
    bq, win = block // stride, block + 2 * halo
    kp = F.pad(k, (0, 0, 0, 0, halo, halo, halo, halo))
    vp = F.pad(v, (0, 0, 0, 0, halo, halo, halo, halo))
    hp, wp = h + 2 * halo, w + 2 * halo
    mask = torch.zeros(hq, wq, hp, wp, dtype=torch.bool)
    rel_y = torch.zeros(hq, hp, dtype=torch.long)
    rel_x = torch.zeros(wq, wp, dtype=torch.long)
    for y in range(hq):
        top = (y // bq) * block  # window's first row on the padded map
        for yy in range(top, top + win):
            rel_y[y, yy] = (yy - top) - (y % bq) + win - 1
    for x in range(wq):
        left = (x // bq) * block
        for xx in range(left, left + win):
            rel_x[x, xx] = (xx - left) - (x % bq) + win - 1
    for y in range(hq):
        for x in range(wq):
            top, left = (y // bq) * block, (x // bq) * block
            mask[y, x, top: top + win, left: left + win] = True
    logits = torch.einsum("byxhd,bijhd->bhyxij", q, kp) * scale
    if rel_h is not None:
        lh = torch.einsum("byxhd,yid->bhyxi", q, rel_h[rel_y])  # (.., hp)
        lw = torch.einsum("byxhd,xjd->bhyxj", q, rel_w[rel_x])  # (.., wp)
        logits = logits + lh[..., :, None] + lw[..., None, :]
    logits = logits.masked_fill(~mask, float("-inf")).reshape(b, heads, hq, wq, hp * wp)
    out = torch.einsum("bhyxn,bnhd->byxhd", logits.softmax(-1), vp.reshape(b, hp * wp, heads, dv))
    return out


BRUTE_CASES = [
    # (B, H, W, heads, d_qk, d_v, block, halo, stride, rel)
    (2, 8, 12, 2, 5, 7, 4, 1, 1, True),
    (1, 12, 6, 3, 4, 4, 6, 2, 2, True),
    (1, 9, 6, 1, 6, 3, 3, 2, 3, True),  # stride 3: one query per block
    (2, 8, 8, 2, 4, 6, 4, 0, 1, True),  # no halo: plain blocked attention
    (1, 8, 4, 2, 4, 4, 4, 2, 1, False),
]


def _inputs(b, h, w, heads, dqk, dv, block, halo, stride, rel, dtype=torch.float64):
    q = torch.randn(b, h // stride, w // stride, heads, dqk, dtype=dtype)
    k = torch.randn(b, h, w, heads, dqk, dtype=dtype)
    v = torch.randn(b, h, w, heads, dv, dtype=dtype)
    win = block + 2 * halo
    rel_h = torch.randn(2 * win - 1, dqk, dtype=dtype) * 0.5 if rel else None
    rel_w = torch.randn(2 * win - 1, dqk, dtype=dtype) * 0.5 if rel else None
    return q, k, v, rel_h, rel_w


@pytest.mark.parametrize("case", BRUTE_CASES)
def test_reference_matches_brute_force(case):
    *_, block, halo, stride, rel = case
    q, k, v, rel_h, rel_w = _inputs(*case)
    scale = 0.3
    out = halo_attention_2d_torch(q, k, v, block, halo, rel_h, rel_w, scale=scale)
    torch.testing.assert_close(out, brute_force(q, k, v, block, halo, rel_h, rel_w, scale), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", [(1, 4, 6, 2, 3, 2, 2, 1, 1, True), (1, 4, 4, 1, 2, 3, 4, 1, 2, True)])
def test_reference_gradcheck(case):
    *_, block, halo, stride, rel = case
    inputs = [t.requires_grad_() for t in _inputs(*case)]
    assert torch.autograd.gradcheck(
        lambda q, k, v, rh, rw: halo_attention_2d_torch(q, k, v, block, halo, rh, rw), inputs, fast_mode=True
    )


def test_reference_low_precision_matches_float64():
    q, k, v, rel_h, rel_w = _inputs(1, 8, 8, 2, 8, 8, 4, 2, 1, True)
    ref = halo_attention_2d_torch(q, k, v, 4, 2, rel_h, rel_w)
    out = halo_attention_2d_torch(*(t.to(torch.bfloat16) for t in (q, k, v)), 4, 2, rel_h.bfloat16(), rel_w.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=0.05, atol=0.05)


def test_reference_saves_no_unfolded_windows():
    """The autograd graph keeps q, k, v, the tables, the output and one (.., win^2) probability tensor: nothing of
    the size of the unfolded k/v windows (timm's unfold keeps ~win^2 / block^2 copies of k and v)."""
    b, h, w, heads, d, block, halo = 1, 16, 16, 2, 32, 4, 2
    q, k, v, rel_h, rel_w = (t.requires_grad_() for t in _inputs(b, h, w, heads, d, d, block, halo, 1, True))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        halo_attention_2d_torch(q, k, v, block, halo, rel_h, rel_w)
    win = block + 2 * halo
    allowed = 4 * q.numel() + 2 * rel_h.numel() + b * h * w * heads * win * win
    assert sum(saved) <= allowed


def test_backend_auto_on_cpu_is_reference():
    q, k, v, rel_h, rel_w = _inputs(1, 8, 8, 1, 4, 4, 4, 1, 1, True)
    torch.testing.assert_close(halo_attention_2d(q, k, v, 4, 1, rel_h, rel_w),
                               halo_attention_2d_torch(q, k, v, 4, 1, rel_h, rel_w), rtol=0, atol=0)


def _err(**over):
    q, k, v, rel_h, rel_w = _inputs(1, 8, 8, 2, 4, 4, 4, 1, 1, True)
    kwargs = dict(q=q, k=k, v=v, block_size=4, halo_size=1, rel_h=rel_h, rel_w=rel_w)
    kwargs.update(over)
    return kwargs


@pytest.mark.parametrize(
    "over,match",
    [
        (dict(q=torch.randn(1, 64, 2, 4)), "layout"),
        (dict(block_size=3), "multiple of block_size"),
        (dict(block_size=0), "block_size"),
        (dict(block_size=4.0), "block_size"),
        (dict(halo_size=-1), "halo_size"),
        (dict(q=torch.randn(1, 3, 3, 2, 4, dtype=torch.float64)), "query stride"),
        (dict(q=torch.randn(1, 8, 4, 2, 4, dtype=torch.float64)), "query stride"),
        (dict(q=torch.randn(1, 1, 1, 2, 4, dtype=torch.float64)), "multiple of the query stride"),
        (dict(q=torch.randn(1, 8, 8, 2, 5, dtype=torch.float64)), "head_dim"),
        (dict(v=torch.randn(1, 8, 4, 2, 4, dtype=torch.float64)), "v must match k"),
        (dict(rel_h=torch.randn(13, 4, dtype=torch.float64)), "rel_h must have shape"),
        (dict(rel_w=torch.randn(5, 4, dtype=torch.float64)), "rel_w must have shape"),
        (dict(rel_w=None), "together"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_arguments_raise(over, match):
    with pytest.raises(ValueError, match=match):
        halo_attention_2d(**_err(**over))


@pytest.mark.parametrize("case", [(2, 8, 12, 2, 5, 7, 4, 2, 1, True), (1, 8, 8, 2, 4, 6, 4, 1, 2, True)])
def test_benchmark_timm_core_matches_reference(case):
    """kernels/_competitor_halo_timm.py (timm's HaloAttn core on given q/kv: the bench competitor and the GPU check's
    same-precision baseline) computes the op's semantics."""
    from vitzoo.kernels._competitor_halo_timm import timm_halo_attention

    *_, block, halo, stride, rel = case
    q, k, v, rel_h, rel_w = _inputs(*case)
    torch.testing.assert_close(timm_halo_attention(q, k, v, block, halo, rel_h, rel_w),
                               halo_attention_2d_torch(q, k, v, block, halo, rel_h, rel_w), rtol=1e-10, atol=1e-10)
