"""vitzoo's BiFormer against the official code (Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing
Attention", CVPR 2023; https://github.com/rayleizhu/BiFormer, MIT license), on the torch backend (CPU).

The reference is ``tools/competitors/biformer_official.py`` (imported as ``official``): a literal transcription of the
release's ``models/biformer.py``, ``ops/bra_legacy.py`` (gather-based BRA) and ``models/_common.py`` with the official
module names, so that its ``state_dict()`` IS the released checkpoint layout; it goes through vitzoo's
``checkpoint_filter_fn`` exactly as a downloaded checkpoint would. The real BiFormer-T runs at 224x224 in float64
(every routed map divisible by n_win = 7, as in the release's evaluation); t / s / b are built on the meta device for
the parameter counts.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Dict

import pytest
import timm
import torch
import torch.nn as nn

import vitzoo  # noqa: F401  registers the models
from vitzoo.models import biformer as bf

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
sys.path.insert(0, TOOLS)
from competitors import COMPETITORS, create_competitor  # noqa: E402
from competitors import biformer_official as official  # noqa: E402

NAMES = ("biformer_t", "biformer_s", "biformer_b")


def _randomize_(module: nn.Module) -> nn.Module:
    """Non-trivial values for every floating tensor of the state dict (biases, BN affine and running stats too),
    variance-preserving (gain 1 per layer, norm weights around 1), so that the logits depend on the input and on the
    routing at full depth (smaller gains shrink the signal through the 4 downsamplers until the head bias dominates)."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.dim() <= 1:
                t.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            else:
                t.normal_(0, 1.0 / t[0].numel() ** 0.5)
    return module


@functools.lru_cache(maxsize=None)
def _meta(name: str, ours: bool) -> nn.Module:
    """A real variant (vitzoo's or the official one) built on the meta device, once per session."""
    with torch.device("meta"):
        return timm.create_model(name) if ours else official.create_official_biformer_model(name)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# structure
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_param_counts_equal_official(name):
    ours, ref = _meta(name, True), _meta(name, False)
    assert _count(ours) == _count(ref), (name, _count(ours), _count(ref))
    # the filter maps the official layout onto ours key for key, shape for shape (buffers included)
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    mapped = bf.checkpoint_filter_fn({"model": ref_sd}, ours)
    assert set(mapped) == set(ours_sd)
    assert all(mapped[k].shape == ours_sd[k].shape for k in ours_sd)


def test_official_release_details():
    """The transcription carries the release hyper-parameters (models/biformer.py biformer_{tiny,small,base})."""
    assert official.RELEASE_NAMES == {"biformer_t": "biformer_tiny", "biformer_s": "biformer_small",
                                      "biformer_b": "biformer_base"}
    ref = _meta("biformer_b", False)
    sd = ref.state_dict()
    for key in ("downsample_layers.0.3.weight", "downsample_layers.3.1.running_var", "stages.0.0.pos_embed.weight",
                "stages.2.17.attn.qkv.qkv.weight", "stages.1.3.attn.wo.bias", "stages.0.0.attn.lepe.weight",
                "stages.3.3.attn.qkv.weight", "stages.3.0.attn.proj.bias", "stages.3.0.attn.lepe.weight",
                "stages.0.0.mlp.0.weight", "stages.0.0.mlp.3.bias", "norm.running_mean", "head.weight"):
        assert key in sd, key
    assert "stages.3.0.attn.qkv.bias" not in sd and not any(".router." in k or ".kv_gather." in k for k in sd)
    routed = [stage[0].attn for stage in ref.stages[:3]]
    assert all(isinstance(a, official.BiLevelRoutingAttention) for a in routed)
    assert [a.topk for a in routed] == [1, 4, 16] and [a.num_heads for a in routed] == [3, 6, 12]
    assert [a.scale for a in routed] == [96 ** -0.5, 192 ** -0.5, 384 ** -0.5]  # qk_dim ** -0.5
    assert all(a.n_win == 7 and not a.auto_pad and isinstance(a.kv_down, nn.Identity) for a in routed)
    assert all(a.kv_gather.mul_weight == "none" and isinstance(a.router.emb, nn.Identity) for a in routed)
    assert all(a.lepe.kernel_size == (5, 5) for a in routed)
    last = ref.stages[3][0].attn
    assert isinstance(last, official.AttentionLePE) and last.num_heads == 8 and last.scale == 96 ** -0.5
    blk = ref.stages[0][0]
    assert blk.pos_embed.kernel_size == (3, 3) and blk.pre_norm and not blk.use_layer_scale
    assert blk.norm1.eps == 1e-6 and blk.mlp[0].out_features == 3 * 96 and isinstance(blk.mlp[1], nn.Identity)
    assert isinstance(ref.norm, nn.BatchNorm2d) and [len(s) for s in ref.stages] == [4, 4, 18, 4]


def test_factory_arguments():
    assert set(official.CONFIGS) == set(NAMES)
    with torch.device("meta"):
        model = official.create_official_biformer_model("biformer_t", num_classes=10, img_size=224)
        assert model.head.out_features == 10 and model.num_classes == 10
        assert official.create_official_biformer_model("biformer_t", img_size=448) is not None
        assert official.create_official_biformer_model("biformer_t", img_size=256, auto_pad=True) is not None
    with pytest.raises(ValueError, match=r"n_win=7.*64x64, 32x32, 16x16"):
        official.create_official_biformer_model("biformer_t", img_size=256)  # the release would assert at runtime
    with pytest.raises(ValueError, match="no official BiFormer model"):
        official.create_official_biformer_model("biformer_x")
    assert next(create_competitor("official:biformer_t", num_classes=3).parameters()).device.type == "cpu"


def test_benchmark_pairs_with_official_code():
    import benchmark

    benchmark._register_suites()
    for name in NAMES:
        assert f"official:{name}" in COMPETITORS
        assert benchmark.PAIRS[name] == f"official:{name}"
        assert [m for m in benchmark.SUITES["issue6"] if m.endswith(name)] == [name, f"official:{name}"]
    with pytest.raises(ValueError, match="n_win"):  # bench_model turns it into a one-line UserError
        benchmark.create("official:biformer_s", 256)


# ----------------------------------------------------------------------------------------------------------------
# numerical equivalence: the real BiFormer-T at 224x224, float64
# ----------------------------------------------------------------------------------------------------------------
def test_biformer_t_matches_official_float64():
    torch.manual_seed(0)
    ref = _randomize_(official.create_official_biformer_model("biformer_t")).double().eval()
    ours = timm.create_model("biformer_t", attn_backend="torch").double().eval()
    ours.load_state_dict(bf.checkpoint_filter_fn({"model": ref.state_dict()}, ours), strict=True)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    assert y_ours.shape == y_ref.shape == (1, 1000)
    scale = y_ref.abs().max().item()
    diff = (y_ours - y_ref).abs().max().item()
    assert diff <= 1e-8 * scale, (diff, scale)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_ours.backward(g)
    gscale = x_ref.grad.abs().max().item()
    assert gscale > 0 and (x_ours.grad - x_ref.grad).abs().max().item() <= 1e-8 * gscale
    # parameter gradients, through the same key mapping
    ref_params = dict(ref.named_parameters())
    names: Dict[str, str] = bf.checkpoint_filter_fn({k: k for k in ref_params}, None)
    assert set(names) == {n for n, _ in ours.named_parameters()}
    for our_key, ref_key in names.items():
        g_ref, g_ours = ref_params[ref_key].grad, ours.get_parameter(our_key).grad
        tol = 1e-8 * max(g_ref.abs().max().item(), 1e-30)
        assert (g_ours - g_ref).abs().max().item() <= tol, our_key
    # the check has teeth: the logits depend on the input, and one routed region fewer in stage 3 is visible
    with torch.no_grad():
        assert (ref(torch.randn_like(x)) - y_ref).abs().max().item() > 0.1 * scale
        for blk in ref.stages[2]:
            blk.attn.router.topk = 15
        assert (ref(x) - y_ref).abs().max().item() > 1e-4 * scale


def test_official_auto_pad_runs_any_size():
    """The transcription's auto_pad path (the release's segmentation setting) runs on maps n_win does not divide."""
    model = official.create_official_biformer_model("biformer_t", depth=[1, 1, 1, 1], auto_pad=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 100, 136))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
