"""vitzoo.cuda_graph on the CPU: what can be checked without a GPU. The capture itself (graphed train steps and
forwards against eager ones, weight caches after replays) is GPU-only: ``tools/gpu_check_graphs.py``, run on the
device machine, results in kernels/README.md. The command-line errors of ``train.cuda_graph`` and ``benchmark.py
--mode graph`` are cases of tests/test_tools.py's bad-input table."""
import pytest
import torch
from torch import nn

from vitzoo.cuda_graph import GraphedForward, GraphedTrainStep
from vitzoo.models._conv_bn import conv_bn
from vitzoo.ops._weight_cache import cached_from_weights


@pytest.fixture
def capturing(monkeypatch):
    """Make the process look as if a CUDA graph capture were under way on the current stream."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)


def test_weight_cache_is_bypassed_while_capturing(capturing):
    """A tensor cached at capture time would be read by every later replay, after the weights changed."""
    w = torch.randn(4)
    built = []
    with torch.no_grad():
        assert cached_from_weights((w,), "k", lambda: built.append(1) or w * 2) is None
    assert built == []


def test_conv_bn_computes_unfolded_while_capturing(capturing):
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5).eval()
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(conv_bn(conv, bn, x), bn(conv(x)))


def test_graphed_objects_need_cuda_tensors_and_a_capturable_optimizer():
    model = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="example must be a CUDA tensor"):
        GraphedForward(model, torch.randn(2, 4))
    opt = torch.optim.AdamW(model.parameters())  # capturable defaults to False
    with pytest.raises(ValueError, match="param group 0 of AdamW has capturable=False"):
        GraphedTrainStep(model, opt, nn.functional.cross_entropy, torch.randn(2, 4), torch.zeros(2, dtype=torch.long))
    opt = torch.optim.AdamW(model.parameters(), capturable=True)
    with pytest.raises(ValueError, match="example_input must be a CUDA tensor"):
        GraphedTrainStep(model, opt, nn.functional.cross_entropy, torch.randn(2, 4), torch.zeros(2, dtype=torch.long))


def test_graph_steps_run_the_zoo_norm_through_the_op_in_training(monkeypatch):
    """Inside graph_step_kernels (a capture's warm-up and capture), LayerNorms that record autograd go through
    vitzoo.ops.layer_norm (on the GPU the Triton forward and backward); outside, training keeps torch's norm."""
    import vitzoo.models._norm as norm_module
    from vitzoo.models._step_kernels import graph_step_kernels

    calls = []
    real = norm_module.layer_norm
    monkeypatch.setattr(norm_module, "layer_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    norm = norm_module.LayerNorm(8)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(3, 5, 8, requires_grad=True)
    expected = torch.autograd.grad(nn.functional.layer_norm(x, (8,), norm.weight, norm.bias).square().sum(),
                                   (x, norm.weight, norm.bias))
    norm(x)
    assert calls == []
    with graph_step_kernels():
        got = torch.autograd.grad(norm(x).square().sum(), (x, norm.weight, norm.bias))
    assert calls == [1]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    norm(x)
    assert calls == [1]  # the switch is scoped to the block
