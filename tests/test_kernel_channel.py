"""DaViT channel attention: the Triton kernels (vitzoo.kernels.channel_attention_fwd / _bwd) under the CPU
interpreter against a float64 brute force (fresh inputs, NaN-poisoned outputs, token counts that are not tile
multiples, strided views of one qkv buffer, fp32 / fp16, head dims 16 / 32 / 64) for the output and dq / dk / dv;
the op's dispatch, custom ops (opcheck, torch.compile) and DaViT's ChannelAttention module."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from vitzoo.kernels.channel_attention_fwd import channel_attention_fwd  # noqa: E402
from vitzoo.ops import channel_attention, channel_attention_torch  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN


def _brute(q, k, v, scale):
    """attn[b, h, i, j] = softmax_j(scale * sum_n k[b, n, h, i] v[b, n, h, j]); out[b, n, h, i] = sum_j q attn."""
    attn = torch.softmax(scale * torch.einsum("bnhi,bnhj->bhij", k, v), dim=-1)
    return torch.einsum("bnhj,bhij->bnhi", q, attn)


def _qkv(batch, tokens, heads, dim, dtype=torch.float32):
    return torch.randn(batch, tokens, 3, heads, dim, dtype=dtype)  # DaViT's qkv projection, viewed per head


def _rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.mark.parametrize("tokens,heads,dim", [(37, 2, 16), (16, 1, 32), (50, 3, 32), (9, 2, 64)])
def test_fp32_output_and_grads_match_float64(tokens, heads, dim):
    qkv = _qkv(2, tokens, heads, dim).requires_grad_(True)
    scale = dim ** -0.5
    out = channel_attention(*qkv.unbind(2), scale, backend="triton")
    assert out.shape == (2, tokens, heads, dim) and out.dtype == torch.float32
    assert out.reshape(2, tokens, -1).data_ptr() == out.data_ptr()  # token-major: the reshape is a view
    grad = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, qkv, grad)
    exact = qkv.detach().double().requires_grad_(True)
    ref = _brute(*exact.unbind(2), scale)
    (want,) = torch.autograd.grad(ref, exact, grad.double())
    assert _rel(out, ref) < 1e-5
    for i, name in enumerate("qkv"):
        assert _rel(got[:, :, i], want[:, :, i]) < 1e-5, name


def test_fp16_error_within_twice_torch_fp16():
    """The low-precision rule: the kernels' error against float64 at most about twice torch's fp16 error."""
    qkv = _qkv(2, 45, 2, 32) * 0.5
    grad = torch.randn(2, 45, 2, 32)
    exact = qkv.double().requires_grad_(True)
    ref = _brute(*exact.unbind(2), 32 ** -0.5)
    (ref_grad,) = torch.autograd.grad(ref, exact, grad.double())
    errors = {}
    for name, fn in (("triton", lambda t: channel_attention(*t.unbind(2), backend="triton")),
                     ("torch", lambda t: channel_attention_torch(*t.float().unbind(2), 32 ** -0.5).half())):
        leaf = qkv.half().requires_grad_(True)
        out = fn(leaf)
        (g,) = torch.autograd.grad(out, leaf, grad.half())
        errors[name] = (_rel(out, ref), _rel(g, ref_grad))
    for kernel_err, torch_err in zip(errors["triton"], errors["torch"]):
        assert kernel_err <= 2 * torch_err + 1e-3, errors


def test_inference_call_skips_the_saved_softmax():
    q, k, v = _qkv(1, 20, 2, 16).unbind(2)
    out, attn = channel_attention_fwd(q, k, v, 0.25)
    assert attn is None
    out2, attn2 = channel_attention_fwd(q, k, v, 0.25, save_attn=True)
    assert torch.equal(out, out2) and attn2.shape == (1, 2, 16, 16)
    torch.testing.assert_close(attn2.sum(-1), torch.ones(1, 2, 16))


def test_op_errors_custom_ops_and_compile():
    from vitzoo.ops._channel_triton import _OP

    with pytest.raises(ValueError, match="head_dim must be one of"):
        channel_attention(*(torch.randn(1, 4, 2, 24) for _ in range(3)), backend="triton")
    q, k, v = _qkv(1, 20, 2, 16).unbind(2)
    with pytest.raises(ValueError, match="one shape"):
        channel_attention(q, k, v[:, :10])
    torch.library.opcheck(_OP.forward_op, (q, k, v, 0.25), test_utils=("test_schema", "test_faketensor"))
    out, attn = _OP.forward_impl(q, k, v, 0.25)
    torch.library.opcheck(_OP.backward_op, (torch.randn_like(out), q, k, v, attn, 0.25),
                          test_utils=("test_schema", "test_faketensor"))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    eager_out = channel_attention(*leaves, 0.25, backend="triton")
    eager_grads = torch.autograd.grad(eager_out.square().sum(), leaves)
    compiled = torch.compile(lambda *t: channel_attention(*t, 0.25, backend="triton"), backend="aot_eager",
                             fullgraph=True)
    out = compiled(*leaves)
    assert torch.equal(out, eager_out)
    for g, e in zip(torch.autograd.grad(out.square().sum(), leaves), eager_grads):
        assert torch.equal(g, e)


def test_davit_channel_attention_module_triton_matches_torch():
    from vitzoo.models.davit import ChannelAttention

    torch.manual_seed(0)
    x = torch.randn(2, 30, 64)
    modules = [ChannelAttention(64, num_heads=2, qkv_bias=True, attn_backend=b) for b in ("torch", "triton")]
    modules[1].load_state_dict(modules[0].state_dict())
    results = []
    for m in modules:
        leaf = x.clone().requires_grad_(True)
        out = m(leaf)
        out.square().sum().backward()
        results.append([out.detach(), leaf.grad] + [p.grad for p in m.parameters()])
    for got, ref in zip(*reversed(results)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
