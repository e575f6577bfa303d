"""neighborhood_attention_2d's torch reference against an independent float64 brute force.

The brute force builds the explicit (N, N) mask from NATTEN's own definition (window *center* clamped to the
sub-lattice, distance test around it; see NATTEN's flex mask), not from vitzoo's start/local arithmetic, and the
(N, N) additive bias by looking up every (query, key) pair; then it runs dense softmax attention.
"""
import pytest
import torch

from vitzoo.ops import neighborhood_attention_2d, neighborhood_attention_2d_torch
from vitzoo.ops._backend import ENV_VAR


def _axis_mask(length: int, kernel: int, dilation: int, stride: int) -> torch.Tensor:
    mask = torch.zeros(length, length, dtype=torch.bool)
    left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
    for qi in range(length):
        group, sub = qi % dilation, qi // dilation
        group_len = length // dilation + (1 if group < length % dilation else 0)
        leader = min((sub // stride) * stride + stride // 2, group_len - 1)
        center = max(left, min(leader, group_len - 1 - right))
        for kj in range(group, length, dilation):
            offset = kj // dilation - center
            mask[qi, kj] = -left <= offset <= right
    return mask


def _pair_terms(mask: torch.Tensor, kernel: int, dilation: int):
    """Per axis, for every (query, key) pair: relative index (key - query) / dilation + kernel - 1, the query's slot
    and the key's slot in the query's window (its first key being the smallest masked-in position)."""
    pos = torch.arange(mask.shape[0])
    first = torch.where(mask, pos[None, :], mask.shape[0]).min(1).values
    rel = (pos[None, :] - pos[:, None]).div(dilation, rounding_mode="floor") + kernel - 1
    slot_q = (pos - first) // dilation
    slot_k = (pos[None, :] - first[:, None]).div(dilation, rounding_mode="floor")
    return rel.clamp(0, 2 * kernel - 2), slot_q, slot_k.clamp(0, kernel - 1)


def brute_force(q, k, v, kernel, dilation, stride, rpb, bias, scale):
    b, h, w, heads, d = q.shape
    my, mx = _axis_mask(h, kernel[0], dilation[0], stride[0]), _axis_mask(w, kernel[1], dilation[1], stride[1])
    mask = (my[:, None, :, None] & mx[None, :, None, :]).reshape(h * w, h * w)
    (rel_y, sq_y, sk_y), (rel_x, sq_x, sk_x) = _pair_terms(my, kernel[0], dilation[0]), _pair_terms(mx, kernel[1],
                                                                                                      dilation[1])
    add = torch.zeros(heads, h, w, h, w, dtype=q.dtype)
    if rpb is not None:
        add += rpb[:, rel_y[:, None, :, None], rel_x[None, :, None, :]]
    if bias is not None:
        row = (sq_y[:, None] * kernel[1] + sq_x[None, :])[:, :, None, None]
        col = sk_y[:, None, :, None] * kernel[1] + sk_x[None, :, None, :]
        add += bias[:, row, col]
    logits = torch.einsum("bnhd,bmhd->bhnm", q.reshape(b, h * w, heads, d), k.reshape(b, h * w, heads, d)) * scale
    logits = logits + add.reshape(heads, h * w, h * w) + torch.where(mask, 0.0, float("-inf")).to(q.dtype)
    out = torch.einsum("bhnm,bmhd->bnhd", logits.softmax(-1), v.reshape(b, h * w, heads, -1))
    return out.reshape(b, h, w, heads, -1)


CASES = [
    # (H, W, kernel, dilation, stride)
    (13, 11, (3, 3), (1, 1), (1, 1)),  # plain NA, odd sizes, all borders
    (13, 11, (5, 7), (2, 1), (1, 1)),  # dilation with uneven groups (13 = 2*6 + 1)
    (12, 10, (3, 3), (3, 2), (1, 1)),  # dilation 3
    (9, 10, (3, 5), (1, 2), (2, 3)),  # strided NA, incomplete stride runs at the border
    (14, 14, (7, 7), (1, 1), (7, 7)),  # non-overlapping 7x7 windows (MaxViT block / Swin)
    (14, 21, (7, 7), (2, 3), (7, 7)),  # MaxViT grid attention: dilation = size // kernel
    (8, 7, (4, 2), (1, 3), (3, 2)),  # even kernels
]


@pytest.mark.parametrize("size_h,size_w,kernel,dilation,stride", CASES)
def test_reference_matches_brute_force(size_h, size_w, kernel, dilation, stride):
    heads, d = 2, 5
    q, k = (torch.randn(2, size_h, size_w, heads, d, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, size_h, size_w, heads, 3, dtype=torch.float64)  # value dim may differ
    rpb = torch.randn(heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1, dtype=torch.float64)
    bias = torch.randn(heads, kernel[0] * kernel[1], kernel[0] * kernel[1], dtype=torch.float64)
    for use_rpb, use_bias in [(False, False), (True, False), (False, True), (True, True)]:
        r, b = (rpb if use_rpb else None), (bias if use_bias else None)
        out = neighborhood_attention_2d(q, k, v, kernel, dilation, stride, rpb=r, bias=b, scale=0.37, backend="torch")
        ref = brute_force(q, k, v, kernel, dilation, stride, r, b, 0.37)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_default_scale_and_int_arguments():
    q, k, v = (torch.randn(1, 9, 9, 2, 8, dtype=torch.float64) for _ in range(3))
    out = neighborhood_attention_2d(q, k, v, 3, 2, backend="torch")
    ref = brute_force(q, k, v, (3, 3), (2, 2), (1, 1), None, None, 8 ** -0.5)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("size_h,size_w,kernel,dilation,stride", [
    (7, 5, (3, 3), (2, 1), (1, 1)), (5, 7, (3, 5), (1, 1), (2, 3)), (4, 6, (2, 3), (2, 2), (2, 3))])
def test_gradcheck_all_inputs(size_h, size_w, kernel, dilation, stride):
    heads = 1
    q, k, v = (torch.randn(1, size_h, size_w, heads, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rpb = torch.randn(heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(heads, kernel[0] * kernel[1], kernel[0] * kernel[1], dtype=torch.float64, requires_grad=True)

    def fn(q_, k_, v_, rpb_, bias_):
        return neighborhood_attention_2d_torch(q_, k_, v_, kernel, dilation, stride, rpb=rpb_, bias=bias_, scale=0.7)

    assert torch.autograd.gradcheck(fn, (q, k, v, rpb, bias))


def test_low_precision_inputs_accumulate_in_float32():
    q, k, v = (torch.randn(2, 9, 8, 2, 16) for _ in range(3))
    rpb = torch.randn(2, 5, 5)
    ref = neighborhood_attention_2d(q.double(), k.double(), v.double(), 3, rpb=rpb.double(), backend="torch")
    for dtype in (torch.float16, torch.bfloat16):
        out = neighborhood_attention_2d(q.to(dtype), k.to(dtype), v.to(dtype), 3, rpb=rpb, backend="torch")
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


def test_strided_views_are_accepted():
    """Models hand in q/k/v as views of one (B, H, W, 3, heads, d) projection: non-contiguous strides."""
    qkv = torch.randn(2, 10, 9, 3, 2, 4, dtype=torch.float64)
    q, k, v = qkv.unbind(3)
    out = neighborhood_attention_2d(q, k, v, (3, 5), backend="torch")
    ref = brute_force(q.contiguous(), k.contiguous(), v.contiguous(), (3, 5), (1, 1), (1, 1), None, None, 0.5)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=5, dilation=2), "kernel_size \\* dilation must be <= the feature size along height"),
        (dict(kernel_size=3, stride=4), "stride must satisfy 1 <= stride <= kernel_size"),
        (dict(kernel_size=0), "kernel_size must be >= 1"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size must be an int or a pair"),
        (dict(kernel_size=3, rpb=torch.zeros(2, 3, 3)), "rpb must have shape \\(heads, 2\\*kh-1, 2\\*kw-1\\)"),
        (dict(kernel_size=3, bias=torch.zeros(2, 9, 8)), "bias must have shape \\(heads, kh\\*kw, kh\\*kw\\)"),
        (dict(kernel_size=3, backend="cuda"), "backend=...\\) must be one of"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    q = torch.randn(1, 9, 12, 2, 4)
    with pytest.raises(ValueError, match=match):
        neighborhood_attention_2d(q, q, q, **kwargs)


def test_bad_layouts_raise_clear_errors():
    q = torch.randn(1, 9, 12, 2, 4)
    with pytest.raises(ValueError, match="\\(B, H, W, heads, head_dim\\) layout"):
        neighborhood_attention_2d(q.flatten(1, 2), q.flatten(1, 2), q.flatten(1, 2), 3)
    with pytest.raises(ValueError, match="q and k must have the same shape"):
        neighborhood_attention_2d(q, q[..., :2], q, 3)
    with pytest.raises(ValueError, match="v must match q"):
        neighborhood_attention_2d(q, q, q[:, :5], 3)


def test_backend_resolution(monkeypatch):
    q = torch.randn(1, 7, 7, 1, 16)
    # auto on CPU tensors is always the torch reference, even with the interpreter switched on
    torch.testing.assert_close(neighborhood_attention_2d(q, q, q, 3),
                               neighborhood_attention_2d(q, q, q, 3, backend="torch"))
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=f"environment variable {ENV_VAR} must be one of"):
        neighborhood_attention_2d(q, q, q, 3)
    monkeypatch.setenv(ENV_VAR, "torch")
    neighborhood_attention_2d(q, q, q, 3, backend="triton")  # the env var wins over the argument
