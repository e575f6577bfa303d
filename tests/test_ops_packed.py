"""Packed q, k, v (``vitzoo.ops._packed``): q, k, v that are ``unbind`` slices of one projection output reach the
neighborhood and channel attention ops' packed custom ops, whose backward writes the projection's gradient in one
buffer (no stack of three gradients). Detection cases, gradients against the torch backend (including q used by a
second op), fake implementations (opcheck). CPU, TRITON_INTERPRET=1, tiny shapes."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import vitzoo.ops._channel_triton as channel_triton  # noqa: E402
import vitzoo.ops._neighborhood_triton as na_triton  # noqa: E402
from vitzoo.ops import channel_attention, neighborhood_attention_2d  # noqa: E402
from vitzoo.ops._packed import packed_source  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN


@pytest.mark.parametrize("shape, dim", [((2, 5, 3, 4, 8), 2), ((2, 5, 4, 3, 8), 3), ((2, 5, 3, 1, 8), 2),
                                        ((1, 4, 6, 3, 2, 16), 3)])
def test_unbind_slices_of_one_tensor_are_found(shape, dim):
    x = torch.randn(shape)
    q, k, v = x.unbind(dim)
    qkv, found = packed_source(q, k, v)
    # a size-1 dim may put the packing dim on either side of it: the same slices either way
    assert (found == dim or x.shape[dim + 1] == 1) and qkv.data_ptr() == x.data_ptr()
    for a, b in zip(qkv.unbind(found), (q, k, v)):
        assert a.shape == b.shape and torch.equal(a, b)


def test_other_layouts_are_not_packed():
    x = torch.randn(2, 5, 3, 4, 8)
    q, k, v = x.unbind(2)
    assert packed_source(k, q, v) is None  # out of order
    assert packed_source(q, k, torch.randn_like(v)) is None  # another tensor
    wide = torch.randn(2, 5, 4, 4, 8)  # a fourth slice: the three do not cover their base
    assert packed_source(*wide.unbind(2)[:3]) is None
    t = torch.empty_strided((2, 5, 3, 4, 8), (480, 8, 160, 40, 1)).normal_()  # a base that is not contiguous
    assert t._base is None and packed_source(*t.unbind(2)) is None
    s = torch.randn(2, 3, 5, 4, 8).transpose(1, 2)  # slices of a transposed view: packed in the contiguous base
    qkv, found = packed_source(*s.unbind(2))
    assert found == 1 and torch.equal(qkv.unbind(1)[2], s.unbind(2)[2])
    # head-major views of the slices: their logical order is not their memory order (a plain view of the base
    # cannot express them), so they stay unpacked
    assert packed_source(*(s.transpose(1, 2) for s in x.unbind(2))) is None


def _spy(monkeypatch, module):
    calls = []
    real = module._PACKED_OP

    class Spy:
        def __call__(self, *args):
            calls.append(args[1])
            return real(*args)

    monkeypatch.setattr(module, "_PACKED_OP", Spy())
    return calls


def _grads(fn, x, extra, grad_seed=0):
    out = fn(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    return torch.autograd.grad((out * weights).sum(), [x] + extra)


@pytest.mark.parametrize("kernel, stride, head_first", [((4, 4), (4, 4), False), ((4, 4), (4, 4), True),
                                                        ((3, 3), (1, 1), False)])
def test_neighborhood_packed_gradients(kernel, stride, head_first, monkeypatch):
    """One-tile windows and the general kernels (sliding windows, gradients copied into the packed buffer); q also
    feeds a second op, whose gradient autograd adds through unbind's backward."""
    batch, height, width, heads, dim = 2, 8, 8, 2, 16
    x = torch.randn(batch, height, width, 3 * heads * dim, requires_grad=True)
    rpb = torch.randn(heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1, requires_grad=True)
    calls = _spy(monkeypatch, na_triton)

    def attend(backend):
        def fn(x):
            y = x * 1.0
            q, k, v = (y.view(batch, height, width, heads, 3, dim).unbind(4) if head_first
                       else y.view(batch, height, width, 3, heads, dim).unbind(3))
            out = neighborhood_attention_2d(q, k, v, kernel, stride=stride, rpb=rpb, backend=backend)
            return out + q.sin()
        return fn

    got = _grads(attend("triton"), x, [rpb])
    assert calls == [4 if head_first else 3]
    want = _grads(attend("torch"), x, [rpb])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_channel_packed_gradients(monkeypatch):
    batch, tokens, heads, dim = 2, 20, 2, 16
    x = torch.randn(batch, tokens, 3 * heads * dim, requires_grad=True)
    calls = _spy(monkeypatch, channel_triton)

    def attend(backend):
        def fn(x):
            q, k, v = (x * 1.0).view(batch, tokens, 3, heads, dim).unbind(2)
            return channel_attention(q, k, v, backend=backend) + k.cos()
        return fn

    got = _grads(attend("triton"), x, [])
    assert calls == [2]
    want = _grads(attend("torch"), x, [])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_packed_custom_ops_fake_impls():
    """The packed ops' fake implementations give the real outputs' shapes, strides and dtypes (opcheck)."""
    checks = ("test_schema", "test_faketensor")
    qkv = torch.randn(1, 8, 8, 3, 2, 16)
    rpb = torch.randn(2, 7, 7)
    for kernel, stride in (([4, 4], [4, 4]), ([4, 4], [1, 1])):
        params = (kernel, [1, 1], stride, 0.25, False)
        torch.library.opcheck(na_triton._PACKED_OP.forward_op, (qkv, 3, rpb, None, *params), test_utils=checks)
        out, lse, table = na_triton._PACKED_OP.forward_impl(qkv, 3, rpb, None, *params)
        torch.library.opcheck(na_triton._PACKED_OP.backward_op,
                              (torch.randn_like(out), qkv, 3, out, lse, rpb, None, table, *params[:4]),
                              test_utils=checks)
    tokens = torch.randn(2, 12, 3, 2, 16)
    torch.library.opcheck(channel_triton._PACKED_OP.forward_op, (tokens, 2, 0.25), test_utils=checks)
    out, attn = channel_triton._PACKED_OP.forward_impl(tokens, 2, 0.25)
    torch.library.opcheck(channel_triton._PACKED_OP.backward_op, (torch.randn_like(out), tokens, 2, attn, 0.25),
                          test_utils=checks)


class _ViewOfInternal(torch.autograd.Function):
    """A Function whose output is a view of a tensor created in its forward (outside the autograd graph)."""

    @staticmethod
    def forward(ctx, x):
        return (x * 2).view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_a_base_outside_the_autograd_graph_is_not_used():
    """Views of such an output have the internal tensor as ``_base``: a view of it would cut the gradient off."""
    x = torch.randn(2, 5, 3 * 8, requires_grad=True)
    y = _ViewOfInternal.apply(x)
    q, k, v = y.view(2, 5, 3, 2, 4).unbind(2)
    assert q._base is not None and not q._base.requires_grad
    assert packed_source(q, k, v) is None


def test_every_parameter_gets_its_gradient_through_packed_ops(monkeypatch):
    """vz_davit_tiny (window and channel attention on packed qkv views of its Linear, the graphed step's GEMV-bias
    Linear included): every parameter's gradient against the torch backend; the packed ops ran."""
    import timm

    import vitzoo  # noqa: F401
    from vitzoo.models._step_kernels import graph_step_kernels

    calls = [_spy(monkeypatch, na_triton), _spy(monkeypatch, channel_triton)]
    torch.manual_seed(0)
    ours = timm.create_model("vz_davit_tiny", attn_backend="triton")
    ref = timm.create_model("vz_davit_tiny", attn_backend="torch")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with graph_step_kernels():
        ours(x).square().mean().backward()
    ref(x).square().mean().backward()
    assert [len(c) for c in calls] == [6, 6]
    ref_params = dict(ref.named_parameters())
    for name, param in ours.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)
