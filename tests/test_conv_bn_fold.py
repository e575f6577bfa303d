"""Convolution + BatchNorm folded into one convolution in inference (vitzoo/models/_conv_bn.py) and the weight cache
behind it (vitzoo/ops/_weight_cache.py): same outputs as the two modules, cached folded weights rebuilt whenever a
parameter or running statistic changes, no folding (and gradients for every parameter) while autograd records."""
import pickle

import pytest
import torch
from timm.models.efficientvit_msra import ConvNorm, PatchEmbedding

from vitzoo.models import _conv_bn
from vitzoo.models._conv_bn import FoldingConvNorm, conv_bn, fold_conv_norms


def _randomized(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()


@pytest.fixture
def counted_folds(monkeypatch):
    calls = []
    real = _conv_bn._folded

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_conv_bn, "_folded", counting)
    return calls


@pytest.mark.parametrize("groups, kernel, stride, conv_bias", [(1, 1, 1, False), (8, 3, 2, True), (4, 5, 1, False)])
def test_folded_matches_conv_then_bn(groups, kernel, stride, conv_bias):
    conv = torch.nn.Conv2d(16, 24, kernel, stride, kernel // 2, groups=groups, bias=conv_bias)
    bn = _randomized(torch.nn.BatchNorm2d(24))
    x = torch.randn(2, 16, 11, 9)
    with torch.no_grad():
        ref = bn(conv(x))
        got = conv_bn(conv, bn, x)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_cache_follows_every_change(counted_folds):
    m = fold_conv_norms(_randomized(ConvNorm(8, 12, 3, 1, 1)))
    assert type(m) is FoldingConvNorm
    x = torch.randn(2, 8, 7, 7)

    def check():
        with torch.no_grad():
            assert torch.allclose(m(x), m.bn(m.conv(x)), rtol=1e-5, atol=1e-5)

    check()
    check()
    assert len(counted_folds) == 1
    with torch.no_grad():
        m.bn.running_var.mul_(3.0)  # a buffer updated in place
    check()
    assert len(counted_folds) == 2
    m.load_state_dict(_randomized(ConvNorm(8, 12, 3, 1, 1)).state_dict())  # copy_ into the same tensors
    check()
    assert len(counted_folds) == 3
    with torch.inference_mode():
        assert torch.allclose(m(x), m.bn(m.conv(x)), rtol=1e-5, atol=1e-5)
    assert len(counted_folds) == 3, "inference mode reads the same cache"


def test_training_and_grad_paths_do_not_fold(counted_folds):
    m = fold_conv_norms(_randomized(ConvNorm(8, 12, 3, 1, 1)))
    x = torch.randn(2, 8, 7, 7)
    y = m(x)  # eval, grad enabled, parameters require grad: the two modules, so every parameter gets a gradient
    y.square().sum().backward()
    assert m.conv.weight.grad is not None and m.bn.weight.grad is not None
    m.train()
    y = m(x)
    assert torch.allclose(y, torch.nn.functional.batch_norm(
        m.conv(x), None, None, m.bn.weight, m.bn.bias, training=True, eps=m.bn.eps), atol=1e-5)
    assert counted_folds == []


def test_autocast_folds_in_the_autocast_dtype():
    m = fold_conv_norms(_randomized(ConvNorm(8, 16, 1)))
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    with torch.no_grad():
        ref = m.bn(m.conv(x))
    assert y.dtype == torch.bfloat16
    assert ((y.float() - ref).abs().max() / ref.abs().max()) < 2e-2


def test_timm_blocks_are_converted_and_stay_picklable():
    embed = fold_conv_norms(_randomized(PatchEmbedding(3, 64)))
    assert all(type(m) is not ConvNorm for m in embed.modules())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = embed(x)
        ref = x
        for m in embed:
            ref = m.bn(m.conv(ref)) if isinstance(m, ConvNorm) else m(ref)
    assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4)
    clone = pickle.loads(pickle.dumps(embed))  # nothing unpicklable (weak references) hangs on the tensors
    with torch.no_grad():
        assert torch.allclose(clone(x), y)
