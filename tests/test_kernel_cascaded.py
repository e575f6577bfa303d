"""Cascaded group attention (``vitzoo.ops.cascaded_group_attention``, EfficientViT inference): the Triton kernel
(``kernels/cascaded_attention_fwd.py``, run by the CPU interpreter in fp32 / fp16) against the float64 torch
reference on fresh random inputs, with unwritten outputs poisoned; the torch reference against timm's own
``LocalWindowAttention`` on the same weights; the EfficientViT layer and model running every head in one call;
argument errors. GPU-only checks (bf16, M5's shapes, whole models): ``kernels/gpu_check_cascaded.py``."""
import pytest
import torch
from timm.models.efficientvit_msra import LocalWindowAttention

from vitzoo.ops import cascaded_group_attention, cascaded_group_attention_torch

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN

# (B, heads, key_dim, d_v, per-head kernels, H, W, window (None: whole map), table resolution)
CASES = {
    "windows_7x7_kernels_7_5_3": (2, 3, 16, 16, (7, 5, 3), 14, 14, 7, 7),
    "padded_odd_map_wide_values": (1, 2, 16, 48, (3, 5), 9, 11, 4, 5),
    "global_non_square_table_larger": (2, 2, 32, 32, (5, 1), 4, 3, None, 5),
    "one_head_kernel_1": (1, 1, 16, 24, (1,), 6, 6, 3, 3),
    "values_above_64": (1, 2, 16, 80, (3, 3), 4, 4, None, 4),
}


def _weights(heads, key_dim, v_dim, kernels, res, dtype=torch.float64, in_dim=None):
    in_dim = v_dim if in_dim is None else in_dim
    out = 2 * key_dim + v_dim
    return ([torch.randn(out, in_dim, 1, 1, dtype=dtype) / in_dim ** 0.5 for _ in range(heads)],
            [torch.randn(out, dtype=dtype) * 0.1 for _ in range(heads)],
            [torch.randn(key_dim, 1, k, k, dtype=dtype) / k for k in kernels],
            [torch.randn(key_dim, dtype=dtype) * 0.1 for _ in range(heads)],
            torch.randn(heads, res * res, dtype=dtype))


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_float64(name, dtype, relu):
    batch, heads, key_dim, v_dim, kernels, height, width, window, res = CASES[name]
    weights = _weights(heads, key_dim, v_dim, kernels, res)
    x = torch.randn(batch, heads * v_dim, height, width, dtype=torch.float64)
    exact = cascaded_group_attention_torch(x, *weights, key_dim, window, relu=relu)
    low = [[w.to(dtype) for w in weights[0]], [b.float() for b in weights[1]], [w.float() for w in weights[2]],
           [b.float() for b in weights[3]], weights[4].float()]
    with torch.no_grad():
        out = cascaded_group_attention(x.to(dtype), *low, key_dim, window, relu=relu, backend="triton")
        same_dtype = cascaded_group_attention_torch(x.to(dtype).float(), *low, key_dim, window, relu=relu)
    assert out.shape == exact.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert out.is_contiguous(memory_format=torch.channels_last)
    tol = 2e-6 if dtype == torch.float32 else 4e-3
    assert _rel(out, exact) <= max(2 * _rel(same_dtype.to(dtype), exact), tol)
    if relu:
        assert (out >= 0).all()


def test_kernel_reads_any_input_strides_and_scale():
    """x as a channels_last map, as an NCHW map and as a channel slice of a wider map; a non-default scale."""
    heads, key_dim, v_dim = 2, 16, 16
    weights = _weights(heads, key_dim, v_dim, (3, 3), 4, dtype=torch.float32)
    wide = torch.randn(2, 3 * v_dim, 8, 8)
    for x in (wide[:, :heads * v_dim], wide[:, :heads * v_dim].contiguous(memory_format=torch.channels_last),
              wide[:, v_dim:].contiguous()):
        with torch.no_grad():
            out = cascaded_group_attention(x, *weights, key_dim, 4, scale=0.3, backend="triton")
        exact = cascaded_group_attention_torch(x.double(), *[[w.double() for w in ws] for ws in weights[:4]],
                                               weights[4].double(), key_dim, 4, scale=0.3)
        assert _rel(out, exact) <= 2e-6


def test_weights_changed_in_place_are_reread():
    """The kernel layout of fixed weights is cached: an in-place update must be seen by the next call."""
    weights = _weights(2, 16, 16, (3, 5), 4, dtype=torch.float32)
    x = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        first = cascaded_group_attention(x, *weights, 16, backend="triton")
        weights[0][1].mul_(2.0)
        weights[2][0].add_(0.5)
        second = cascaded_group_attention(x, *weights, 16, backend="triton")
    exact = cascaded_group_attention_torch(x.double(), *[[w.double() for w in ws] for ws in weights[:4]],
                                           weights[4].double(), 16)
    assert _rel(second, first) > 1e-2 and _rel(second, exact) <= 2e-6


def _randomized(layer):
    """Unit-scale attention biases (timm initialises them to zero) and non-trivial BatchNorm statistics."""
    with torch.no_grad():
        layer.attn.attention_biases.normal_()
        for m in layer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return layer


def _fold(conv_norm):
    """(weight, bias) of timm's eval ConvNorm (conv, then BatchNorm) as one convolution, in float64 (timm's own
    ``fuse()`` builds a float32 conv)."""
    bn = conv_norm.bn
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return conv_norm.conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


@pytest.mark.parametrize("resolution, window", [(9, 7), (5, 7), (14, 7)])
def test_reference_matches_timm_layer(resolution, window):
    """The torch reference against timm's LocalWindowAttention (float64, eval, same weights): padded windows,
    global attention, exact windows; kernels 3 / 5 / 7 per head."""
    layer = _randomized(LocalWindowAttention(48, 16, 3, attn_ratio=1, resolution=resolution,
                                             window_resolution=window, kernels=(3, 5, 7)).double().eval())
    attn = layer.attn
    qkv, dws = [_fold(c) for c in attn.qkvs], [_fold(c) for c in attn.dws]
    x = torch.randn(2, 48, resolution, resolution, dtype=torch.float64)
    with torch.no_grad():
        ours = cascaded_group_attention_torch(
            x, [w for w, _ in qkv], [b for _, b in qkv], [w for w, _ in dws], [b for _, b in dws],
            attn.attention_biases, 16, None if resolution <= window else window, relu=True)
        ref = layer(x)
        assert _rel(attn.proj[1](ours), ref) <= 1e-12


def test_efficientvit_layer_runs_every_head_in_one_call(monkeypatch):
    """In eval without autograd the EfficientViT layer makes one op call (Triton here) and matches its per-head
    training path; with autograd it keeps the per-head path."""
    import vitzoo.models.efficientvit_msra as evit

    calls = []
    real = evit.cascaded_group_attention
    monkeypatch.setattr(evit, "cascaded_group_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    layer = _randomized(evit.LocalWindowAttentionVz(32, 16, 2, attn_ratio=1, resolution=9, window_resolution=7,
                                                    kernels=(3, 5), attn_backend="triton").eval())
    x = torch.randn(2, 32, 9, 9)
    with torch.no_grad():
        one_op = layer(x)
    assert len(calls) == 1 and calls[0]["relu"]
    per_head = layer(x)  # grad mode on, parameters require grad: the per-head path
    assert len(calls) == 1 and per_head.requires_grad
    assert _rel(one_op, per_head.detach()) <= 2e-6


def test_errors_name_the_parameter():
    weights = _weights(2, 16, 16, (3, 3), 4, dtype=torch.float32)
    x = torch.randn(1, 32, 4, 4)
    with pytest.raises(ValueError, match="x must be"):
        cascaded_group_attention(x[0], *weights, 16)
    with pytest.raises(ValueError, match="one entry per head"):
        cascaded_group_attention(x, weights[0][:1], *weights[1:], 16)
    with pytest.raises(ValueError, match="must be equal"):  # two heads: d_v must equal C / heads
        cascaded_group_attention(torch.randn(1, 64, 4, 4), *_weights(2, 16, 16, (3, 3), 4, torch.float32, 32), 16)
    with pytest.raises(ValueError, match=r"dw_weights\[0\]"):
        cascaded_group_attention(x, weights[0], weights[1], [torch.randn(16, 1, 2, 2)] * 2, weights[3],
                                 weights[4], 16)
    with pytest.raises(ValueError, match="bias table of resolution"):
        cascaded_group_attention(torch.randn(1, 32, 5, 5), *weights, 16)
    with pytest.raises(ValueError, match="window must be"):
        cascaded_group_attention(x, *weights, 16, window=0)
    with pytest.raises(ValueError, match="inference-only"):
        cascaded_group_attention(x.requires_grad_(), *weights, 16, backend="triton")
    with pytest.raises(ValueError, match="C / heads == d_v"):  # legal for one head, but not the kernel's case
        cascaded_group_attention(torch.randn(1, 32, 4, 4), *_weights(1, 16, 16, (3,), 4, torch.float32, 32), 16,
                                 backend="triton")
    with pytest.raises(ValueError, match="key_dim must be one of"):
        cascaded_group_attention(x.detach(), *_weights(2, 8, 16, (3, 3), 4, torch.float32), 8, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        cascaded_group_attention(x.detach(), *weights, 16, backend="cuda")


def test_autograd_falls_back_to_the_differentiable_reference():
    weights = _weights(1, 16, 16, (3,), 4)
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cascaded_group_attention(t, *weights, 16), (x,), fast_mode=True)
