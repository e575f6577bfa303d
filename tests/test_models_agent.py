"""Agent-Swin and Agent-PVT (Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention",
ECCV 2024) as timm models, on the torch backend (CPU) unless a test says otherwise.

The independent reference is ``tools/competitors/agent_official.py`` (imported as ``official``): a literal
transcription of the official code (LeapLabTHU/Agent-Attention) with the official module names, so that its
``state_dict()`` IS the official checkpoint key layout; the tests run it in float64 with shared weights.

Real variants are built on the meta device (parameter counts, structure); everything that runs uses narrow widths
and depths on the same code paths.
"""
from __future__ import annotations

import functools
import os
import sys

import pytest
import timm
import timm.optim
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models._manipulate import group_parameters

import vitzoo.models  # noqa: F401  registers the models
from vitzoo.models import agent_pvt as ap
from vitzoo.models import agent_swin as asw
from vitzoo.models._agent_attn import parse_attn_types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from competitors import agent_official as official  # noqa: E402

PAPER_PARAMS_M = {"agent_swin_t": 29, "agent_swin_s": 50, "agent_swin_b": 88,
                  "agent_pvt_t": 11.6, "agent_pvt_s": 20.6, "agent_pvt_m": 35.9, "agent_pvt_l": 48.7}
# narrow configs (head dim 16, the smallest the Triton kernels take; the official constructors take the same keywords);
# the Swin one has every block kind at 224: agent blocks in 3 stages, a mixed stage (M1: agent, shifted window,
# unshifted window), window blocks at 7x7
SWIN_NARROW = dict(embed_dim=16, depths=(1, 1, 3, 2), num_heads=(1, 2, 4, 8), attn_type="AAMB1")
PVT_NARROW = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1))


def _randomize_(module: nn.Module) -> nn.Module:
    """Non-trivial values for every floating parameter (the agent biases are trunc_normal(.02) at init: too small
    for the bias paths to matter numerically)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = 0.3 if p.dim() <= 1 or "bias" in name.rsplit(".", 1)[-1] else 0.8 / max(p[0].numel(), 1) ** 0.5
            p.normal_(0, std)
    return module


# ----------------------------------------------------------------------------------------------------------------
# registry, parameter counts, structure
# ----------------------------------------------------------------------------------------------------------------
def test_registered_without_collisions():
    names = timm.list_models("agent_*")
    assert names == sorted(PAPER_PARAMS_M)
    for name in names:
        module = timm.models.model_entrypoint(name).__module__
        assert module == ("vitzoo.models.agent_swin" if "swin" in name else "vitzoo.models.agent_pvt")
        cfg = timm.models.get_pretrained_cfg(f"{name}.in1k").to_dict()
        assert cfg["paper_ids"] == "arXiv:2312.08874" and cfg["paper_name"] == asw.PAPER_NAME
        assert not cfg.get("hf_hub_id") and not cfg["url"] and cfg["license"]
        assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
        assert cfg["origin_url"] == "https://github.com/LeapLabTHU/Agent-Attention"


@functools.lru_cache(maxsize=None)
def _meta_model(name: str, **kwargs) -> nn.Module:
    """A real variant built on the meta device (no memory, no init), once per session."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_param_counts_match_paper(name):
    model = _meta_model(name)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.01, (name, n)
    first = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3
    assert model.get_submodule(model.pretrained_cfg["classifier"]) is model.get_classifier()


def _kinds(model: nn.Module, stages: str) -> list:
    return ["".join("A" if isinstance(b.attn, (asw.AgentSwinAttention, ap.AgentPvtAttention)) else "B"
                    for b in stage.blocks) for stage in getattr(model, stages)]


def test_agent_swin_official_structure():
    """Official configs (cfgs/agent_swin_{t,s,b}.yaml, WINDOW_SIZE 56) through the official BasicLayer rules."""
    t, s, b = (_meta_model(f"agent_swin_{v}") for v in "tsb")
    assert _kinds(t, "layers") == ["AA", "AA", "AAAAAA", "BB"]
    assert _kinds(s, "layers") == ["AA", "AA", "B" * 18, "BB"]
    assert _kinds(b, "layers") == ["AA", "AA", "AA" + "B" * 16, "BB"]
    for model, heads in ((t, (3, 6, 12, 24)), (b, (4, 8, 16, 32))):
        for i, stage in enumerate(model.layers):
            assert isinstance(stage.downsample, nn.Identity) == (i == 0)
            for block in stage.blocks:
                attn = block.attn
                assert attn.num_heads == heads[i] and attn.head_dim == 32 and attn.qkv.bias is not None
                assert block.mlp.fc1.out_features == 4 * model.layers[i].blocks[0].norm1.normalized_shape[0]
                if isinstance(attn, asw.AgentSwinAttention):
                    grid = 56 // 2 ** i
                    assert attn.agent_num == (9, 16, 49, 49)[i] and attn.pool_size == attn.agent_shape
                    # official (1, heads, A, grid, 1) / (1, heads, 1, grid, A) minus the leading 1 (channels_last)
                    assert attn.ah_bias.shape == (heads[i], attn.agent_num, grid, 1)
                    assert attn.wa_bias.shape == (heads[i], 1, grid, attn.agent_num)
                    assert attn.an_bias.shape == (heads[i], attn.agent_num, 7, 7)
                    assert attn.dwc.kernel_size == (3, 3) and attn.dwc.groups == attn.dwc.in_channels
    # window blocks: stage 3 of B (14x14 map): window 7, odd blocks shifted by 3; stage 4 (7x7): one window, no shift
    stage3 = b.layers[2].blocks
    assert [(blk.attn.window_size, blk.attn.shift_size) for blk in stage3[2:6]] == [(7, 0), (7, 3), (7, 0), (7, 3)]
    assert stage3[2].attn.relative_position_bias_table.shape == (169, 16)
    assert [(blk.attn.window_size, blk.attn.shift_size) for blk in t.layers[3].blocks] == [(7, 0), (7, 0)]
    with torch.device("meta"):
        mmdet_like = timm.create_model("agent_swin_t", always_partition=True)
        at_384 = timm.create_model("agent_swin_b", img_size=384)  # official agent_swin_b_384: WINDOW_SIZE 96
    assert [blk.attn.shift_size for blk in mmdet_like.layers[3].blocks] == [0, 3]
    assert at_384.layers[0].blocks[0].attn.ah_bias.shape[2] == 96
    assert at_384.layers[2].blocks[2].attn.window_size == 12  # max(7, 96 // 8)
    assert isinstance(t.norm, nn.LayerNorm) and t.num_features == 768 and b.num_features == 1024


def test_agent_pvt_official_structure():
    models = {v: _meta_model(f"agent_pvt_{v}") for v in "tsml"}
    depths = {"t": (2, 2, 2, 2), "s": (3, 4, 6, 3), "m": (3, 4, 18, 3), "l": (3, 8, 27, 3)}
    for v, model in models.items():
        assert _kinds(model, "stages") == ["A" * d for d in depths[v]]
    m = models["t"]
    assert isinstance(m.norm, nn.Identity)  # the release has no final norm
    for i, stage in enumerate(m.stages):
        grid, dim = (56, 28, 14, 7)[i], (64, 128, 320, 512)[i]
        assert stage.grid == (grid, grid) and stage.pos_embed.shape == (1, grid * grid, dim)
        assert stage.patch_embed.proj.kernel_size == ((4, 4) if i == 0 else (2, 2))
        assert stage.patch_embed.norm.eps == 1e-5
        blk = stage.blocks[0]
        assert blk.norm1.eps == 1e-6 and blk.mlp.fc1.out_features == (8, 8, 4, 4)[i] * dim
        attn = blk.attn
        assert attn.sr_ratio == 1 and attn.sr is None and attn.head_dim == 64 and attn.q.bias is not None
        assert attn.agent_num == (9, 16, 49, 49)[i]
        assert attn.ah_bias.shape == (attn.num_heads, attn.agent_num, grid, 1)
        assert attn.ha_bias.shape == (attn.num_heads, grid, 1, attn.agent_num)
    with torch.device("meta"):
        sr = timm.create_model("agent_pvt_t", agent_sr_ratios="2111", attn_type="AAAB")
    assert sr.stages[0].blocks[0].attn.ah_bias.shape[2] == 28 and sr.stages[0].blocks[0].attn.ha_bias.shape[1] == 56
    assert isinstance(sr.stages[3].blocks[0].attn, ap.SpatialReductionAttention)


@pytest.mark.parametrize("name,img_size", [*((n, 224) for n in sorted(PAPER_PARAMS_M)), ("agent_swin_b", 384),
                                           ("agent_pvt_m", 256)])
def test_official_factory_builds_the_vitzoo_variant(name, img_size):
    """``create_official_agent_model`` (the benchmark competitor) is the official structure of each variant: its
    official-layout state dict maps key for key, shape for shape, onto vitzoo's model of the same name and size."""
    with torch.device("meta"):
        ref = official.create_official_agent_model(name, img_size=img_size)
    ours = _meta_model(name, img_size=img_size)
    filter_fn = asw.checkpoint_filter_fn if name.startswith("agent_swin") else ap.checkpoint_filter_fn
    mapped = filter_fn(ref.state_dict(), ours)
    expected = ours.state_dict()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    assert ref.num_classes == 1000
    with pytest.raises(ValueError, match="agent_swin_t"):
        official.create_official_agent_model("agent_swin_x")


def test_attn_type_strings_and_bad_arguments():
    assert parse_attn_types("AAMB2", (2, 2, 4, 2)) == [["A"] * 2, ["A"] * 2, ["A", "A", "B", "B"], ["B"] * 2]
    for bad in ("AAB", "AAXB", "AAMB", "AAAB2", 5):
        with pytest.raises(ValueError, match="attn_type"):
            parse_attn_types(bad, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="perfect square"):
        asw.AgentSwinTransformer(depths=(1, 1, 1, 1), agent_num=(9, 12, 49, 49))
    with pytest.raises(ValueError, match="attn_drop"):
        asw.AgentSwinTransformer(depths=(1, 1, 1, 1), attn_drop_rate=0.1)
    with pytest.raises(ValueError, match="global_pool"):
        ap.AgentPvt(depths=(1, 1, 1, 1), global_pool="max")
    with pytest.raises(ValueError, match="too small"):
        asw.AgentSwinTransformer(img_size=16, depths=(1, 1, 1, 1))
    model = timm.create_model("agent_pvt_t", **PVT_NARROW, agent_sr_ratios="4111", attn_backend="torch")
    with pytest.raises(ValueError, match="spatial-reduction"):  # a 2x2 stage-1 map cannot be reduced by 4
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="backend"):
        timm.create_model("agent_swin_t", **SWIN_NARROW, attn_backend="cuda")


# ----------------------------------------------------------------------------------------------------------------
# the attention modules against the official forward (float64, identical parameters)
# ----------------------------------------------------------------------------------------------------------------
_PER_AXIS = ("ah_bias", "aw_bias", "ha_bias", "wa_bias")


def _official_sd(module: nn.Module) -> dict:
    """Our state dict in the official shapes: the per-axis agent biases get back their leading singleton axis (vitzoo
    drops it so that ``Module.to(memory_format=torch.channels_last)`` works)."""
    return {k: (v[None] if k.endswith(_PER_AXIS) else v) for k, v in module.state_dict().items()}


def _compare_module(ours, ref, x_ours, x_ref, to_ref, atol=1e-10, ref_params=None):
    """Forward and backward (input and every parameter gradient) of two float64 modules with shared weights."""
    x_ours, x_ref = x_ours.clone().requires_grad_(), x_ref.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), ref(x_ref)
    torch.testing.assert_close(to_ref(y_ours), y_ref, rtol=1e-10, atol=atol)
    g = torch.randn_like(y_ref)
    to_ref(y_ours).backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(to_ref(x_ours.grad), x_ref.grad, rtol=1e-9, atol=1e-9)
    ref_params = dict((ref_params or ref).named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad.reshape(p.shape), rtol=1e-8, atol=1e-9, msg=name)


@pytest.mark.parametrize("agents,grid,heads", [(9, 8, 2), (16, 6, 1), (49, 7, 4)])
def test_agent_swin_attention_matches_official(agents, grid, heads):
    dim = 16 * heads
    ours = _randomize_(asw.AgentSwinAttention(dim, heads, agents, (grid, grid), attn_backend="torch")).double()
    ref = official.AgentAttention(dim, (grid, grid), heads, agents).double()
    ref.load_state_dict(_official_sd(ours), strict=True)  # same names and (official) shapes
    x = torch.randn(2, grid, grid, dim, dtype=torch.float64)
    _compare_module(ours, ref, x, x.reshape(2, grid * grid, dim), lambda t: t.reshape(2, grid * grid, dim))


@pytest.mark.parametrize("sr_ratio", [1, 2])
def test_agent_pvt_attention_matches_official(sr_ratio):
    dim, heads, grid, agents = 32, 2, 8, 16
    ours = _randomize_(ap.AgentPvtAttention(dim, heads, agents, (grid, grid), sr_ratio=sr_ratio,
                                            attn_backend="torch")).double()
    ref = official.PvtAgentAttention(dim, grid * grid, heads, sr_ratio, agents).double()
    ref.load_state_dict(_official_sd(ours), strict=True)
    x = torch.randn(2, grid, grid, dim, dtype=torch.float64)

    class _Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = ref

        def forward(self, t):
            return self.m(t, grid, grid)

    _compare_module(ours, _Ref(), x, x.reshape(2, -1, dim), lambda t: t.reshape(2, -1, dim), ref_params=ref)


def test_spatial_reduction_attention_matches_official():
    dim, heads = 32, 2
    ours = _randomize_(ap.SpatialReductionAttention(dim, heads, sr_ratio=2, attn_backend="torch")).double()
    ref = official.PvtAttention(dim, heads, 2).double()
    ref.load_state_dict(_official_sd(ours), strict=True)
    x = torch.randn(2, 6, 8, dim, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).reshape(2, 48, dim), ref(x.reshape(2, 48, dim), 6, 8), rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("hw,agent_shape", [((10, 12), (3, 3)), ((8, 8), (4, 5)), ((5, 9), (2, 2))])
def test_agent_attention_other_sizes_match_downstream_backbone(hw, agent_shape):
    """Runtime maps != the learned 8x8 grid, optional downstream agent grid: the mmdet backbone's bilinear resizes."""
    dim, heads, agents, grid = 32, 2, 9, (8, 8)
    ours = _randomize_(asw.AgentSwinAttention(dim, heads, agents, grid, agent_shape=agent_shape,
                                              attn_backend="torch")).double()
    ref = official.DownstreamAgentAttention(dim, grid, heads, agents, agent_shape).double()
    ref.load_state_dict(_official_sd(ours), strict=True)
    x = torch.randn(2, *hw, dim, dtype=torch.float64)
    n = hw[0] * hw[1]
    with torch.no_grad():
        torch.testing.assert_close(ours(x).reshape(2, n, dim), ref(x.reshape(2, n, dim), hw_shape=hw), rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("hw,shift", [((14, 14), 0), ((14, 21), 3), ((10, 12), 0), ((10, 12), 3), ((4, 5), 3)])
def test_window_attention_matches_official_flow(hw, shift):
    """(14, 14) unshifted: the neighborhood-op path; the rest: rolled / padded windows through biased_attention,
    against the official window path with padded keys masked."""
    dim, heads, ws = 32, 2, 7
    ours = _randomize_(asw.WindowAttention(dim, heads, ws, shift, attn_backend="torch")).double()
    ref = official.WindowAttention(dim, (ws, ws), heads).double()
    ref.load_state_dict(_official_sd(ours), strict=False)  # the official index is a persistent buffer
    torch.testing.assert_close(ref.relative_position_index, ours.relative_position_index)
    x = torch.randn(2, *hw, dim, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = ours(x1), official.downstream_window_flow(ref, x2, ws, shift)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours.relative_position_bias_table.grad, ref.relative_position_bias_table.grad,
                               rtol=1e-8, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# whole models against the official classification code, through official-layout checkpoint files
# ----------------------------------------------------------------------------------------------------------------
def test_agent_swin_official_checkpoint_end_to_end(tmp_path):
    """An official-layout .pth ({'model': state_dict, ...}) loads through timm's pretrained path and reproduces the
    official forward at 224 (narrow widths; every block kind of the family present)."""
    ref = _randomize_(official.AgentSwinTransformer(**SWIN_NARROW)).double().eval()
    sd = ref.state_dict()
    for key in ("patch_embed.proj.weight", "layers.0.blocks.0.attn.an_bias", "layers.1.blocks.0.attn.wa_bias",
                "layers.2.blocks.1.attn.relative_position_bias_table", "layers.2.blocks.1.attn.relative_position_index",
                "layers.2.blocks.1.attn_mask", "layers.0.downsample.reduction.weight", "layers.2.downsample.norm.bias",
                "layers.3.blocks.1.attn.qkv.bias", "norm.weight", "head.weight"):
        assert key in sd, key  # the official key layout the filter has to understand
    assert "layers.3.blocks.1.attn_mask" not in sd  # 7x7 map: one window, no shift
    path = tmp_path / "agent_swin_release.pth"
    torch.save({"model": sd, "max_accuracy": 0.0, "epoch": 299}, path)
    model = timm.create_model("agent_swin_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              attn_backend="torch", **SWIN_NARROW).double().eval()
    assert [(b.attn.window_size, b.attn.shift_size) for b in model.layers[2].blocks[1:]] == [(7, 3), (7, 0)]
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-9, atol=1e-9)
    # a new head: everything else loads
    other = timm.create_model("agent_swin_t", pretrained=True, num_classes=7,
                              pretrained_cfg_overlay=dict(file=str(path)), **SWIN_NARROW)
    assert other.head.weight.shape == (7, 128)
    torch.testing.assert_close(other.layers[1].downsample.reduction.weight.double(),
                               sd["layers.0.downsample.reduction.weight"])


@pytest.mark.parametrize("attn_type,agent_sr", [("AAAA", "1111"), ("AABA", "2211")])
def test_agent_pvt_official_checkpoint_end_to_end(tmp_path, attn_type, agent_sr):
    """Release config (AAAA, no reduction) and a variant with agent spatial reduction and a plain PVT stage."""
    ref = _randomize_(official.AgentPvt(attn_type=attn_type, agent_sr_ratios=agent_sr, **PVT_NARROW)).double().eval()
    sd = ref.state_dict()
    for key in ("patch_embed1.proj.weight", "patch_embed4.norm.bias", "pos_embed1", "pos_embed4",
                "block1.0.attn.an_bias", "block2.0.attn.kv.weight", "block4.0.mlp.fc2.bias", "head.weight"):
        assert key in sd, key
    assert ("block1.0.attn.sr.weight" in sd) == (agent_sr[0] == "2")
    path = tmp_path / "agent_pvt_release.pth"
    torch.save({"model": sd, "epoch": 299}, path)
    model = timm.create_model("agent_pvt_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              attn_backend="torch", attn_type=attn_type, agent_sr_ratios=agent_sr,
                              **PVT_NARROW).double().eval()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-9, atol=1e-9)


def test_checkpoint_filters_pass_ours_through_and_unwrap():
    swin = timm.create_model("agent_swin_t", **SWIN_NARROW)
    ours = swin.state_dict()
    mapped = asw.checkpoint_filter_fn({"state_dict": {f"module.{k}": v for k, v in ours.items()}}, swin)
    assert set(mapped) == set(ours) and all(mapped[k] is ours[k] for k in ours)
    pvt = timm.create_model("agent_pvt_t", **PVT_NARROW)
    assert set(ap.checkpoint_filter_fn(pvt.state_dict(), pvt)) == set(pvt.state_dict())



def test_checkpoint_filter_resizes_like_official_load_pretrained():
    """224-trained weights into models built for 288 (official agent_swin_s_288 / fine-tuning recipe)."""
    src = _randomize_(official.AgentSwinTransformer(**SWIN_NARROW))
    dst_off = official.AgentSwinTransformer(img_size=288, window_size=72, **SWIN_NARROW)
    expected = official.load_pretrained_resize(src.state_dict(), dst_off.state_dict())
    model = timm.create_model("agent_swin_t", img_size=288, **SWIN_NARROW)
    assert model.layers[2].blocks[1].attn.window_size == 9  # max(7, 72 // 8), table 17x17
    mapped = asw.checkpoint_filter_fn({"model": src.state_dict()}, model)
    model.load_state_dict(mapped, strict=True)
    for key in ("layers.0.blocks.0.attn.ah_bias", "layers.1.blocks.0.attn.aw_bias", "layers.2.blocks.0.attn.ha_bias",
                "layers.0.blocks.0.attn.wa_bias", "layers.2.blocks.1.attn.relative_position_bias_table",
                "layers.3.blocks.0.attn.relative_position_bias_table", "layers.1.blocks.0.attn.an_bias"):
        torch.testing.assert_close(mapped[key], expected[key].reshape(mapped[key].shape), msg=key)
    assert mapped["layers.0.blocks.0.attn.ah_bias"].shape == (1, 9, 72, 1)

    src_pvt = _randomize_(official.AgentPvt(**PVT_NARROW))
    dst_pvt = official.AgentPvt(img_size=256, **PVT_NARROW)
    expected = official.load_pretrained_resize(src_pvt.state_dict(), dst_pvt.state_dict())
    pvt = timm.create_model("agent_pvt_t", img_size=256, **PVT_NARROW)  # official agent_pvt_m_256 recipe
    mapped = ap.checkpoint_filter_fn(src_pvt.state_dict(), pvt)
    pvt.load_state_dict(mapped, strict=True)
    torch.testing.assert_close(mapped["stages.0.pos_embed"], expected["pos_embed1"])
    torch.testing.assert_close(mapped["stages.2.blocks.0.attn.ha_bias"], expected["block3.0.attn.ha_bias"][0])
    assert mapped["stages.3.pos_embed"].shape == (1, 64, 64)
    with pytest.raises(ValueError, match="heads"):
        asw.checkpoint_filter_fn(src.state_dict(), timm.create_model("agent_swin_t", **dict(SWIN_NARROW,
                                                                                          num_heads=(2, 2, 4, 8))))


# ----------------------------------------------------------------------------------------------------------------
# forward / backward, sizes, dtypes, backends
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [("agent_swin_t", SWIN_NARROW), ("agent_pvt_t", PVT_NARROW)])
def test_forward_backward_224(name, kwargs):
    model = timm.create_model(name, attn_backend="torch", drop_path_rate=0.1, **kwargs).train()
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


@pytest.mark.parametrize("name,kwargs", [("agent_swin_t", SWIN_NARROW), ("agent_pvt_t", PVT_NARROW)])
@pytest.mark.parametrize("hw", [(99, 77), (40, 130)])
def test_odd_input_sizes_pad_resize_and_never_crop(name, kwargs, hw):
    """Non-multiple sizes: padded patch embeddings / merging / windows, resized biases and position embeddings."""
    model = timm.create_model(name, attn_backend="torch", **kwargs)
    x = torch.randn(2, 3, *hw, requires_grad=True)
    final, feats = model.forward_intermediates(x)
    sizes = [(-(-hw[0] // 4), -(-hw[1] // 4))]
    for _ in range(3):
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    assert [tuple(f.shape[-2:]) for f in feats] == sizes
    out = model.forward_head(final)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, :, -1, -1].abs().sum() > 0  # the last pixel counts
    model.eval()
    with torch.no_grad():  # images are independent of each other (no padding leak across the batch)
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kwargs", [("agent_swin_t", dict(SWIN_NARROW, depths=(1, 1, 2, 1))),
                                         ("agent_pvt_t", PVT_NARROW)])
def test_bf16_autocast_channels_last(name, kwargs):
    """The repo's train / benchmark setting: channels_last (needs no 5-D parameter) and bf16 autocast."""
    model = timm.create_model(name, attn_backend="auto", **kwargs).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.to(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max() <= 0.1 * ref.abs().max()


def test_torch_compile_smoke():
    """The smallest narrow Agent-Swin (one block per stage: agent blocks, then a padded window block) under
    torch.compile(fullgraph=True). backend "aot_eager" (dynamo trace + AOT autograd, no inductor codegen): inductor's
    C++ compilation is too slow for the CPU CI."""
    model = timm.create_model("agent_swin_t", img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                              attn_type="AAAB", always_partition=True, attn_backend="torch").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_triton_backend_matches_torch(monkeypatch):
    """attn_backend='triton' (the Triton interpreter on CPU, see conftest) through every op the models use: agent
    attention (biased kernels), padded/shifted windows (biased kernel) and plain windows (neighborhood kernel)."""
    import vitzoo.ops._agent_triton as agent_triton
    import vitzoo.ops._biased_triton as biased_triton
    import vitzoo.ops._neighborhood_triton as na_triton

    calls = {"biased": 0, "na": 0, "agent": 0, "agent_packed": 0}
    real_b, real_na = biased_triton.biased_attention_triton, na_triton.neighborhood_attention_2d_triton
    for name, key in (("_OP", "agent"), ("_PACKED_OP", "agent_packed")):
        real = getattr(agent_triton, name)
        monkeypatch.setattr(agent_triton, name, lambda *a, _real=real, _key=key: calls.update(
            {_key: calls[_key] + 1}) or _real(*a))

    def count_b(*a, **k):
        calls["biased"] += 1
        return real_b(*a, **k)

    def count_na(*a, **k):
        calls["na"] += 1
        return real_na(*a, **k)

    monkeypatch.setattr(biased_triton, "biased_attention_triton", count_b)
    monkeypatch.setattr(na_triton, "neighborhood_attention_2d_triton", count_na)
    # Agent-Swin built for 64 (grids 16/8/4/2) run at 56 (maps 14/7/4/2): agent biases resized, window blocks
    # (4x4 and 2x2, one window each) read in place by the neighborhood kernel. Agent-PVT built for 64, run at 48: agent
    # blocks with and without spatial reduction and a plain PVT (B) stage. The shifted window module: rolled, padded
    # (6x7 -> 8x8), masked windows through the biased kernel. Head dims 16 / 32 / 64 (the kernels' sizes); few heads
    # and tokens keep the interpreter fast.
    swin = timm.create_model("agent_swin_t", img_size=64, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2),
                             attn_type="AAMB1", attn_backend="torch")
    pvt = timm.create_model("agent_pvt_t", img_size=64, embed_dims=(16, 32, 32, 64), num_heads=(1, 2, 1, 2),
                            depths=(1, 1, 1, 1), attn_type="AABA", agent_sr_ratios="2211", attn_backend="torch")
    shifted = asw.WindowAttention(16, 1, 4, 2, attn_backend="torch")
    for model, x in ((swin, torch.randn(1, 3, 56, 56)), (pvt, torch.randn(1, 3, 48, 48)),
                     (shifted, torch.randn(1, 6, 7, 16))):
        _randomize_(model)
        results = []
        for backend in ("torch", "triton"):
            if isinstance(model, asw.WindowAttention):
                model.attn_backend = backend
            else:
                model.set_attn_backend(backend)
            model.zero_grad()
            out = model(x)
            out.square().mean().backward()
            results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        (ref, ref_grads), (out, grads) = results
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=2e-3, atol=2e-5, msg=name)
    # swin: 3 agent blocks on the fused op, unpacked (v feeds the dwc) (+ 2 window blocks on the neighborhood kernel);
    # pvt: 3 agent blocks on the fused op + 1 plain biased call; the shifted module: 1
    assert calls == {"na": 2, "biased": 1 + 1, "agent": 3 + 3, "agent_packed": 0}


# ----------------------------------------------------------------------------------------------------------------
# timm contract
# ----------------------------------------------------------------------------------------------------------------
def test_features_only():
    swin = timm.create_model("agent_swin_t", features_only=True, attn_backend="torch", **SWIN_NARROW).eval()
    assert swin.feature_info.reduction() == [4, 8, 16, 32] and swin.feature_info.channels() == [16, 32, 64, 128]
    pvt = timm.create_model("agent_pvt_t", features_only=True, attn_backend="torch", **PVT_NARROW).eval()
    assert pvt.feature_info.reduction() == [4, 8, 16, 32] and pvt.feature_info.channels() == [16, 32, 48, 64]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert [tuple(f.shape) for f in swin(x)] == [(1, 16, 24, 16), (1, 8, 12, 32), (1, 4, 6, 64), (1, 2, 3, 128)]
        assert [tuple(f.shape) for f in pvt(x)] == [(1, 16, 16, 24), (1, 32, 8, 12), (1, 48, 4, 6), (1, 64, 2, 3)]
    assert swin.output_fmt.name == "NHWC"  # like timm's Swin; feature_cls="getter" gives NCHW
    sub = timm.create_model("agent_pvt_t", features_only=True, out_indices=(1, 3), **PVT_NARROW)
    assert sub.feature_info.reduction() == [8, 32]
    getter = timm.create_model("agent_swin_t", features_only=True, feature_cls="getter", out_indices=(0, 2),
                               **SWIN_NARROW).eval()
    with torch.no_grad():
        assert [tuple(f.shape) for f in getter(x)] == [(1, 16, 16, 24), (1, 64, 4, 6)]


@pytest.mark.parametrize("name,kwargs,stages", [("agent_swin_t", SWIN_NARROW, "layers"),
                                                ("agent_pvt_t", PVT_NARROW, "stages")])
def test_forward_intermediates_and_prune(name, kwargs, stages):
    model = timm.create_model(name, attn_backend="torch", **kwargs).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [f.shape[1] for f in feats] == [model.feature_info[i]["num_chs"] for i in range(4)]  # NCHW
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last2[0], feats[2])
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
        expected = final.permute(0, 3, 1, 2) if name.startswith("agent_swin") else final
        torch.testing.assert_close(normed[0], expected)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], feats[1])
        kept = model.prune_intermediate_layers(indices=[0, 1])
        assert kept == [0, 1] and len(getattr(model, stages)) == 2 and isinstance(model.head, nn.Identity)
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], feats[1])


@pytest.mark.parametrize("name,kwargs", [("agent_swin_t", SWIN_NARROW), ("agent_pvt_t", PVT_NARROW)])
def test_classifier_and_head_contract(name, kwargs):
    model = timm.create_model(name, num_classes=10, attn_backend="torch", **kwargs).eval()
    assert model.get_classifier() is model.head and model.head.out_features == 10
    x = torch.randn(2, 3, 64, 64)
    spatial = (1, 2) if name.startswith("agent_swin") else (2, 3)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats.mean(spatial))
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), feats.mean(spatial))
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == feats.shape


@pytest.mark.parametrize("name,kwargs", [("agent_swin_t", SWIN_NARROW), ("agent_pvt_t", PVT_NARROW)])
def test_group_matcher_no_weight_decay_and_optimizer(name, kwargs):
    model = timm.create_model(name, **kwargs)
    for coarse in (True, False):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sorted(n for g in groups.values() for n in g) == sorted(n for n, _ in model.named_parameters())
        assert len(groups) > 3
    nwd = model.no_weight_decay()
    if name.startswith("agent_swin"):  # the official keyword: relative_position_bias_table (4 window blocks)
        assert len(nwd) == 4 and all(n.endswith("attn.relative_position_bias_table") for n in nwd)
    else:
        assert nwd == set()
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    assert len(opt.param_groups) > 2


@pytest.mark.parametrize("name,kwargs,stages", [("agent_swin_t", SWIN_NARROW, "layers"),
                                                ("agent_pvt_t", PVT_NARROW, "stages")])
def test_grad_checkpointing_same_grads(name, kwargs, stages):
    model = timm.create_model(name, attn_backend="torch", **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in getattr(model, stages))
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-6, msg=n)
