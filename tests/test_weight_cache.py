"""vitzoo.ops._weight_cache: writers that do not bump version counters must still invalidate the cached tensors
(a stale folded conv-BN weight or logit block gives silently wrong eval outputs)."""
import pytest
import torch
from torch import nn

from vitzoo.models._conv_bn import conv_bn
from vitzoo.ops._weight_cache import cached_from_weights, weight_cache_enabled


def _cached_double(w, built):
    with torch.no_grad():
        return cached_from_weights((w,), "double", lambda: built.append(1) or w.detach() * 2)


@pytest.mark.parametrize("kwargs", [dict(fused=True), dict(foreach=True), dict(foreach=False)],
                         ids=["fused", "foreach", "for-loop"])
def test_optimizer_steps_invalidate_the_cache(kwargs):
    """torch's fused AdamW writes the parameters without bumping their versions; the step post-hook does."""
    w = nn.Parameter(torch.randn(8))
    opt = torch.optim.AdamW([w], lr=0.1, **kwargs)
    built = []
    first = _cached_double(w, built)
    assert _cached_double(w, built) is first and len(built) == 1
    w.grad = torch.randn(8)
    opt.step()
    second = _cached_double(w, built)
    assert len(built) == 2
    torch.testing.assert_close(second, w.detach() * 2)
    assert not torch.allclose(first, second)


def test_batchnorm_training_forward_invalidates_the_folded_weights():
    """A training forward moves the running statistics without bumping their versions (it bumps
    num_batches_tracked's), and no parameter changes: the eval output must follow the new statistics."""
    conv, bn = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
    x = torch.randn(2, 3, 6, 6)
    bn.eval()
    with torch.no_grad():
        before = conv_bn(conv, bn, x)
        bn.train()
        bn(conv(torch.randn(4, 3, 6, 6) * 3 + 1))  # e.g. a fine-tuning step with frozen weights
        bn.eval()
        after = conv_bn(conv, bn, x)
        torch.testing.assert_close(after, bn(conv(x)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_the_cache_can_be_switched_off():
    w = torch.randn(4)
    built = []
    with weight_cache_enabled(False):
        assert _cached_double(w, built) is None
    assert _cached_double(w, built) is not None and built == [1]


def test_values_cached_under_inference_mode_can_key_another_cache():
    """A value built under inference_mode is still a normal tensor without autograd history (it has a version
    counter), so a cache keyed on it (an op's kernel layout of a model's folded weights) hits on the next call."""
    w = nn.Parameter(torch.randn(8))
    built = []
    with torch.inference_mode():
        first = _cached_double(w, built)
        assert not first.is_inference() and not first.requires_grad
        layout = cached_from_weights((first,), "layout", lambda: built.append(2) or first + 1)
        assert layout is not None
        assert cached_from_weights((_cached_double(w, built),), "layout", lambda: built.append(3)) is layout
    assert built == [1, 2]
