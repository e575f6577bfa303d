"""DaViT channel attention: the forward-only Triton kernel (vitzoo.kernels.channel_attention_fwd) under the CPU
interpreter against a float64 brute force (fresh inputs, NaN-poisoned outputs, token counts that are not tile
multiples, strided views of one qkv buffer, fp32 / fp16, head dims 16 / 32 / 64), the op's dispatch (no backward:
autograd runs torch, an explicit backend="triton" with autograd is refused) and DaViT's ChannelAttention module."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from vitzoo.kernels.channel_attention_fwd import channel_attention_fwd  # noqa: E402
from vitzoo.ops import channel_attention, channel_attention_torch  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN


def _brute(q, k, v, scale):
    """float64, written out: attn[b, h, i, j] = softmax_j(scale * sum_n k[b, n, h, i] v[b, n, h, j])."""
    q, k, v = (t.double() for t in (q, k, v))
    attn = torch.softmax(scale * torch.einsum("bnhi,bnhj->bhij", k, v), dim=-1)
    return torch.einsum("bnhj,bhij->bnhi", q, attn)


def _qkv_views(batch, tokens, heads, dim, dtype):
    qkv = torch.randn(batch, tokens, 3, heads, dim, dtype=dtype)
    return qkv.unbind(2)  # (B, N, heads, d) strided views, as DaViT's qkv projection gives them


@pytest.mark.parametrize("tokens,heads,dim", [(37, 2, 16), (16, 1, 32), (50, 3, 32), (9, 2, 64)])
def test_fp32_matches_float64(tokens, heads, dim):
    q, k, v = _qkv_views(2, tokens, heads, dim, torch.float32)
    scale = dim ** -0.5
    out = channel_attention_fwd(q, k, v, scale)
    assert out.shape == q.shape and out.is_contiguous() and out.dtype == torch.float32
    ref = _brute(q, k, v, scale)
    assert float((out.double() - ref).abs().max()) < 1e-4 * float(ref.abs().max())


def test_fp16_error_within_twice_torch_fp16():
    """The low-precision rule: the kernel's error against float64 at most about twice torch's same-dtype error."""
    q, k, v = _qkv_views(2, 45, 2, 32, torch.float32)
    q, k, v = (t * 0.5 for t in (q, k, v))
    ref = _brute(q, k, v, 32 ** -0.5)
    half = [t.half() for t in (q, k, v)]
    kernel_err = float((channel_attention_fwd(*half, 32 ** -0.5).double() - ref).abs().max())
    torch_err = float((channel_attention_torch(*[t.float() for t in half], 32 ** -0.5).half().double() - ref)
                      .abs().max())
    assert kernel_err <= 2 * torch_err + 1e-3, (kernel_err, torch_err)


def test_op_dispatch_and_errors():
    q, k, v = _qkv_views(1, 20, 2, 16, torch.float32)
    ref = channel_attention_torch(q, k, v, 0.25)
    torch.testing.assert_close(channel_attention(q, k, v, 0.25, backend="triton"), ref, rtol=1e-4, atol=1e-5)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    with pytest.raises(ValueError, match="forward-only"):
        channel_attention(*leaves, backend="triton")
    out = channel_attention(*leaves, backend="auto")  # CPU tensors: torch, with its backward
    out.sum().backward()
    assert all(t.grad is not None for t in leaves)
    with pytest.raises(ValueError, match="head_dim must be one of"):
        channel_attention(*(torch.randn(1, 4, 2, 24) for _ in range(3)), backend="triton")
    with pytest.raises(ValueError, match="one shape"):
        channel_attention(q, k, v[:, :10])


def test_davit_channel_attention_module_triton_matches_torch():
    from vitzoo.models.davit import ChannelAttention

    torch.manual_seed(0)
    x = torch.randn(2, 30, 64)
    modules = [ChannelAttention(64, num_heads=2, qkv_bias=True, attn_backend=b) for b in ("torch", "triton")]
    modules[1].load_state_dict(modules[0].state_dict())
    with torch.no_grad():
        ref, got = (m(x) for m in modules)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # with autograd the module runs torch even when pinned to triton (the kernel has no backward)
    xg = x.clone().requires_grad_(True)
    modules[1](xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
