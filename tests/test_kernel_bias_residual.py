"""vitzoo.ops.bias_residual_add (x + y + bias in one pass) and DaViT's PosConv that uses it: the Triton kernel under
the CPU interpreter against float64 (NaN-poisoned outputs, odd channel counts, strided rows, fp32 / fp16 and mixed
dtypes), its gradients (the bias gradient as a GEMV), torch.compile, and PosConv against timm's ConvPosEnc."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from vitzoo.ops import bias_residual_add  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN


@pytest.mark.parametrize("shape,x_dtype,y_dtype", [((2, 5, 7, 24), torch.float32, torch.float32),
                                                   ((3, 130), torch.float16, torch.float16),
                                                   ((4, 9, 96), torch.float32, torch.float16)])
def test_matches_float64_with_promotion(shape, x_dtype, y_dtype):
    wide = torch.randn(*shape[:-1], shape[-1] + 5)
    x = wide[..., :shape[-1]].to(x_dtype)  # strided rows when x_dtype is fp32 (slice of a wider buffer)
    y, bias = torch.randn(shape).to(y_dtype), torch.randn(shape[-1])
    out = bias_residual_add(x, y, bias, backend="triton")
    want = x.double() + y.double() + bias.double()
    assert out.dtype == torch.promote_types(x_dtype, y_dtype) and out.shape == x.shape
    tol = 1e-6 if out.dtype == torch.float32 else 2e-3
    assert float((out.double() - want).abs().max()) <= tol * float(want.abs().max())


def test_gradients_and_compile():
    x, y = torch.randn(2, 6, 6, 16, requires_grad=True), torch.randn(2, 6, 6, 16, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    grad = torch.randn(2, 6, 6, 16)
    out = bias_residual_add(x, y, bias, backend="triton")
    got = torch.autograd.grad(out, (x, y, bias), grad)
    want = torch.autograd.grad(x + y + bias, (x, y, bias), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    compiled = torch.compile(lambda *t: bias_residual_add(*t, backend="triton"), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x, y, bias), out)
    from vitzoo.ops.residual import _OP

    rows = (x.detach().reshape(-1, 16), y.detach().reshape(-1, 16), bias.detach(), torch.float32)
    torch.library.opcheck(_OP.forward_op, rows, test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(_OP.backward_op, (grad.reshape(-1, 16), torch.float32),
                          test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(ValueError, match="bias be"):
        bias_residual_add(x, y, torch.zeros(3))


def test_davit_pos_conv_matches_timm():
    from timm.models.davit import ConvPosEnc

    from vitzoo.models._step_kernels import graph_step_kernels
    from vitzoo.models.davit import PosConv

    torch.manual_seed(0)
    ours, ref = PosConv(24, attn_backend="triton"), ConvPosEnc(24)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 24, 9, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # the fused path: bias-free conv, then the kernel
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    leaf_a, leaf_b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with graph_step_kernels():  # the fused path with autograd, as in a graphed training step
        out = ours(leaf_a)
    out.square().sum().backward()
    ref(leaf_b).square().sum().backward()
    torch.testing.assert_close(leaf_a.grad, leaf_b.grad, rtol=1e-5, atol=1e-5)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
