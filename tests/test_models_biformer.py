"""Tests of the BiFormer family ("BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023).

The independent reference is ``_Release*`` below: a literal float64 re-implementation of the released code
(rayleizhu/BiFormer ``models/biformer.py``, ``ops/bra_legacy.py``, ``models/_common.py``; einops spelled out as
reshape/permute) with the release's module names, so its ``state_dict()`` IS the official checkpoint key layout:

    downsample_layers.0.{0,1,3,4}.*          stem: conv, BN, (GELU), conv, BN
    downsample_layers.{1,2,3}.{0,1}.*        conv3x3/s2, BN
    stages.{i}.{j}.pos_embed.*               3x3 depthwise conv
    stages.{i}.{j}.norm1.* / norm2.*         LayerNorm(eps=1e-6)
    stages.{0,1,2}.{j}.attn.qkv.qkv.*        BRA's QKVLinear wrapper (biased)
    stages.{0,1,2}.{j}.attn.lepe.* / attn.wo.*
    stages.3.{j}.attn.qkv.weight             AttentionLePE (bias-free qkv), attn.lepe.*, attn.proj.*
    stages.{i}.{j}.mlp.0.* / mlp.3.*         Linear, (Identity), (GELU), Linear
    norm.*  head.*                           BatchNorm2d, Linear
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import timm
import timm.optim
import vitzoo  # noqa: F401  (registers the models)
from vitzoo.models import biformer as bf

VARIANT_PARAMS_M = {"biformer_t": 13.1, "biformer_s": 25.5, "biformer_b": 56.8}
TINY = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512), qk_dims=(64, 128, 256, 512))


# ----------------------------------------------------------------------------------------------------------------
# literal re-implementation of the release (float64 reference; names = official checkpoint keys)
# ----------------------------------------------------------------------------------------------------------------
class _ReleaseQKVLinear(nn.Module):
    def __init__(self, dim, qk_dim):
        super().__init__()
        self.dim, self.qk_dim = dim, qk_dim
        self.qkv = nn.Linear(dim, qk_dim + qk_dim + dim, bias=True)

    def forward(self, x):
        return self.qkv(x).split([self.qk_dim, self.qk_dim + self.dim], dim=-1)


class _ReleaseBRA(nn.Module):
    """ops/bra_legacy.py BiLevelRoutingAttention with kv_downsample_mode='identity', param_attention='qkvo',
    no param/diff/soft routing, auto_pad=False: gather-based, as released."""

    def __init__(self, dim, num_heads, n_win, qk_dim, topk, side_dwconv=5):
        super().__init__()
        self.dim, self.n_win, self.num_heads, self.qk_dim, self.topk = dim, n_win, num_heads, qk_dim, topk
        self.scale = qk_dim ** -0.5
        self.lepe = nn.Conv2d(dim, dim, kernel_size=side_dwconv, stride=1, padding=side_dwconv // 2, groups=dim)
        self.qkv = _ReleaseQKVLinear(dim, qk_dim)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x):
        N, H, W, C = x.shape
        p = self.n_win
        assert H % p == 0 and W % p == 0
        h, w = H // p, W // p
        # "n (j h) (i w) c -> n (j i) h w c"
        x = x.reshape(N, p, h, p, w, C).permute(0, 1, 3, 2, 4, 5).reshape(N, p * p, h, w, C)
        q, kv = self.qkv(x)
        q_pix = q.reshape(N, p * p, h * w, self.qk_dim)
        kv_pix = kv.reshape(N, p * p, h * w, self.qk_dim + self.dim)  # kv_down = Identity
        q_win, k_win = q.mean([2, 3]), kv[..., 0:self.qk_dim].mean([2, 3])
        v_sp = kv[..., self.qk_dim:].reshape(N, p, p, h, w, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, H, W)
        lepe = self.lepe(v_sp.contiguous()).permute(0, 2, 3, 1)
        # TopkRouting (diff_routing=False -> detached), r_weight unused for mul_weight='none'
        logit = (q_win.detach() * self.scale) @ k_win.detach().transpose(-2, -1)
        _, r_idx = torch.topk(logit, k=self.topk, dim=-1)
        # KVGather
        n, p2, w2, c_kv = kv_pix.shape
        kv_sel = torch.gather(kv_pix.view(n, 1, p2, w2, c_kv).expand(-1, p2, -1, -1, -1), dim=2,
                              index=r_idx.view(n, p2, self.topk, 1, 1).expand(-1, -1, -1, w2, c_kv))
        k_sel, v_sel = kv_sel.split([self.qk_dim, self.dim], dim=-1)
        m = self.num_heads
        # 'n p2 k w2 (m c) -> (n p2) m c (k w2)'
        k_sel = k_sel.reshape(n, p2, self.topk, w2, m, -1).permute(0, 1, 4, 5, 2, 3).reshape(n * p2, m, -1,
                                                                                              self.topk * w2)
        # 'n p2 k w2 (m c) -> (n p2) m (k w2) c'
        v_sel = v_sel.reshape(n, p2, self.topk, w2, m, -1).permute(0, 1, 4, 2, 3, 5).reshape(n * p2, m,
                                                                                              self.topk * w2, -1)
        # 'n p2 w2 (m c) -> (n p2) m w2 c'
        q_pix = q_pix.reshape(n, p2, w2, m, -1).permute(0, 1, 3, 2, 4).reshape(n * p2, m, w2, -1)
        attn = torch.softmax((q_pix * self.scale) @ k_sel, dim=-1)
        out = attn @ v_sel  # (n p2, m, w2, c)
        # '(n j i) m (h w) c -> n (j h) (i w) (m c)'
        out = out.reshape(N, p, p, m, h, w, -1).permute(0, 1, 4, 2, 5, 3, 6).reshape(N, H, W, C)
        return self.wo(out + lepe)


class _ReleaseAttentionLePE(nn.Module):
    """models/_common.py AttentionLePE (num_heads=8 default, qkv_bias=False, LePE of the input x)."""

    def __init__(self, dim, num_heads=8, side_dwconv=5):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, kernel_size=side_dwconv, stride=1, padding=side_dwconv // 2, groups=dim)

    def forward(self, x):
        _, H, W, _ = x.shape
        x = x.reshape(x.shape[0], H * W, -1)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        lepe = self.lepe(x.transpose(1, 2).reshape(B, C, H, W)).reshape(B, C, N).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C) + lepe
        return self.proj(x).reshape(B, H, W, C)


class _ReleaseBlock(nn.Module):
    def __init__(self, dim, num_heads, n_win, qk_dim, topk, mlp_ratio=3):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk > 0:
            self.attn = _ReleaseBRA(dim, num_heads, n_win, qk_dim, topk)
        else:
            self.attn = _ReleaseAttentionLePE(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(mlp_ratio * dim)), nn.Identity(), nn.GELU(),
                                 nn.Linear(int(mlp_ratio * dim), dim))

    def forward(self, x):  # NCHW
        x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


class _ReleaseBiFormer(nn.Module):
    def __init__(self, depth, embed_dim, qk_dims, topks=(1, 4, 16, -2), head_dim=32, n_win=7, num_classes=1000):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3, embed_dim[0] // 2, 3, 2, 1), nn.BatchNorm2d(embed_dim[0] // 2), nn.GELU(),
            nn.Conv2d(embed_dim[0] // 2, embed_dim[0], 3, 2, 1), nn.BatchNorm2d(embed_dim[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(nn.Conv2d(embed_dim[i], embed_dim[i + 1], 3, 2, 1),
                                                        nn.BatchNorm2d(embed_dim[i + 1])))
        self.stages = nn.ModuleList([
            nn.Sequential(*[_ReleaseBlock(embed_dim[i], qk_dims[i] // head_dim, n_win, qk_dims[i], topks[i])
                            for _ in range(depth[i])]) for i in range(4)])
        self.norm = nn.BatchNorm2d(embed_dim[-1])
        self.head = nn.Linear(embed_dim[-1], num_classes)

    def forward(self, x):
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x).flatten(2).mean(-1))


def _randomize_(module: nn.Module) -> nn.Module:
    """Non-trivial weights everywhere (biases, BN affine and running stats included)."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.uniform_(0.5, 2.0)
                else:
                    t.normal_(0, 0.3 if t.dim() <= 1 else 0.6 / max(t[0].numel(), 1) ** 0.5)
    return module


# ----------------------------------------------------------------------------------------------------------------
# registry / construction
# ----------------------------------------------------------------------------------------------------------------
def test_registered_without_collisions():
    names = timm.list_models("biformer*")
    assert names == ["biformer_b", "biformer_s", "biformer_t"]
    for name in names:
        assert timm.models.model_entrypoint(name).__module__ == "vitzoo.models.biformer"


@pytest.mark.parametrize("name", sorted(VARIANT_PARAMS_M))
def test_param_counts_match_paper(name):
    with torch.device("meta"):  # construction only, no init cost
        model = timm.create_model(name)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - VARIANT_PARAMS_M[name]) / VARIANT_PARAMS_M[name] < 0.01, (name, n)


def test_release_architecture_details():
    with torch.device("meta"):
        m = timm.create_model("biformer_b")
    routed = [s.blocks[0].attn for s in m.stages[:3]]
    assert [a.num_heads for a in routed] == [3, 6, 12]  # qk_dim // 32
    assert [a.topk for a in routed] == [1, 4, 16] and all(a.n_win == 7 for a in routed)
    assert [a.scale for a in routed] == [96 ** -0.5, 192 ** -0.5, 384 ** -0.5]  # full qk width
    last = m.stages[3].blocks[0].attn
    assert isinstance(last, bf.AttentionLePE) and last.num_heads == 8 and last.qkv.bias is None
    assert last.scale == 96 ** -0.5
    assert isinstance(m.stages[0].blocks[0].ls1, nn.Identity)  # layer scale off (release -1)
    assert m.stages[0].blocks[0].norm1.eps == 1e-6 and m.stages[0].blocks[0].mlp.fc1.out_features == 3 * 96
    assert isinstance(m.norm, nn.BatchNorm2d)
    with torch.device("meta"):
        assert timm.create_model("biformer_t", n_win=16).stages[0].blocks[0].attn.n_win == 16


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="topk"):
        bf.BiFormer(topks=(1, 0, 16, -2))
    with pytest.raises(ValueError, match="global_pool"):
        bf.BiFormer(depths=(1, 1, 1, 1), global_pool="max")
    with pytest.raises(ValueError, match="qk_dims"):
        bf.BiFormer(depths=(1, 1, 1, 1), qk_dims=(64, 128))
    with pytest.raises(ValueError, match="n_win"):
        bf.BiLevelRoutingAttention(64, 2, n_win=0)
    with pytest.raises(ValueError, match="topk"):
        timm.create_model("biformer_t", n_win=3)  # stage 3 routes 16 of only 9 regions
    model = timm.create_model("biformer_t", depths=(1, 1, 1, 1), attn_backend="bogus")
    with pytest.raises(ValueError, match="backend"):
        model(torch.randn(1, 3, 64, 64))


# ----------------------------------------------------------------------------------------------------------------
# numerical equivalence with the release
# ----------------------------------------------------------------------------------------------------------------
def _load_block(ours: nn.Module, ref: nn.Module) -> None:
    """Carry a release block's weights through checkpoint_filter_fn (as stage 0, block 0 of a checkpoint)."""
    sd = {f"stages.0.0.{k}": v for k, v in ref.state_dict().items()}
    mapped = bf.checkpoint_filter_fn({"model": sd}, None)
    prefix = "stages.0.blocks.0."
    assert all(k.startswith(prefix) for k in mapped)
    ours.load_state_dict({k[len(prefix):]: v for k, v in mapped.items()}, strict=True)


# the four block kinds of biformer_t at 224x224: (dim, map size, topk)
@pytest.mark.parametrize("dim,size,topk", [(64, 56, 1), (128, 28, 4), (256, 14, 16), (512, 7, -2)])
def test_block_matches_release_at_224(dim, size, topk):
    ref = _randomize_(_ReleaseBlock(dim, dim // 32, 7, dim, topk)).double()
    ours = bf.BiFormerBlock(dim, num_heads=dim // 32, topk=topk, n_win=7, qk_dim=dim, attn_backend="torch").double()
    _load_block(ours, ref)
    x = torch.randn(1, dim, size, size, dtype=torch.float64)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref = ref(x_ref)
    y_ours = ours(x_ours.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_ours.backward(g)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    ref_grads = dict(ref.named_parameters())
    mapped = bf.checkpoint_filter_fn({f"stages.0.0.{k}": k for k in ref_grads}, None)
    for our_key, ref_key in mapped.items():
        ours_p = ours.get_parameter(our_key[len("stages.0.blocks.0."):])
        torch.testing.assert_close(ours_p.grad, ref_grads[ref_key].grad, rtol=1e-9, atol=1e-9, msg=our_key)


def test_pretrained_release_checkpoint_end_to_end(tmp_path):
    """A release-layout .pth ({'model': state_dict}) loads via pretrained_cfg_overlay(file=...) and reproduces the
    release forward. Reduced depth and a 112x112 input keep CI fast while every module kind is present and every
    routed map (28, 14, 7) stays divisible by n_win=7, as at 224."""
    depths = (1, 1, 2, 1)
    ref = _randomize_(_ReleaseBiFormer(depths, TINY["embed_dims"], TINY["qk_dims"])).double().eval()
    sd = ref.state_dict()
    for key in ("downsample_layers.0.3.weight", "downsample_layers.2.1.running_var", "stages.0.0.pos_embed.bias",
                "stages.1.0.attn.qkv.qkv.weight", "stages.2.1.attn.wo.bias", "stages.2.1.attn.lepe.weight",
                "stages.3.0.attn.qkv.weight", "stages.3.0.attn.proj.bias", "stages.3.0.attn.lepe.weight",
                "stages.0.0.mlp.3.weight", "norm.running_mean", "head.weight"):
        assert key in sd, key  # the official key layout the filter has to understand
    assert "stages.3.0.attn.qkv.bias" not in sd
    path = tmp_path / "biformer_tiny_release.pth"
    torch.save({"model": sd, "epoch": 299}, path)

    model = timm.create_model("biformer_t", depths=depths, pretrained=True, attn_backend="torch",
                              pretrained_cfg_overlay=dict(file=str(path))).double().eval()
    x = torch.randn(1, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-9, atol=1e-9)
    # a new head: everything but the classifier still loads
    headless = timm.create_model("biformer_t", depths=depths, pretrained=True, num_classes=7,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    loaded, new = headless.state_dict(), model.state_dict()
    assert loaded["head.weight"].shape == (7, 512)
    for key, value in loaded.items():
        if not key.startswith("head."):
            torch.testing.assert_close(value.double(), new[key].double(), rtol=1e-6, atol=1e-7, msg=key)


def test_checkpoint_filter_passthrough_and_wrappers():
    model = timm.create_model("biformer_t", depths=(1, 1, 1, 1))
    ours = model.state_dict()
    assert bf.checkpoint_filter_fn(ours, model) is ours
    ref = _ReleaseBiFormer((1, 1, 1, 1), TINY["embed_dims"], TINY["qk_dims"])
    for wrap in (lambda s: {"model": s}, lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}}):
        mapped = bf.checkpoint_filter_fn(wrap(ref.state_dict()), model)
        assert set(mapped) == set(ours)
        assert all(mapped[k].shape == ours[k].shape for k in ours)


# ----------------------------------------------------------------------------------------------------------------
# forward / backward, sizes, dtypes
# ----------------------------------------------------------------------------------------------------------------
def test_forward_backward_224_biformer_t():
    model = timm.create_model("biformer_t", attn_backend="torch", drop_path_rate=0.1).train()
    x = torch.randn(1, 3, 224, 224)
    out = model(x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


@pytest.mark.parametrize("hw,n_win", [((100, 136), 7), ((72, 88), 4)])
def test_odd_input_sizes_pad_and_mask(hw, n_win):
    """Maps not divisible by n_win (25x34, 13x17, 7x9 at 100x136) run un-cropped, forward and backward."""
    model = timm.create_model("biformer_t", depths=(1, 1, 2, 1), n_win=n_win, attn_backend="torch")
    x = torch.randn(2, 3, *hw, requires_grad=True)
    final, feats = model.forward_intermediates(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [tuple(-(-s // r) for s in hw) for r in (4, 8, 16, 32)]
    out = model.forward_head(final)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # each image is processed independently of the other images of the batch (no cross-batch padding leak)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-4, atol=1e-4)


def test_bf16_autocast_channels_last():
    model = timm.create_model("biformer_t", depths=(1, 1, 1, 1), attn_backend="auto").eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 96, 96).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).abs().max() <= 0.1 * ref.abs().max()


# ----------------------------------------------------------------------------------------------------------------
# timm contract
# ----------------------------------------------------------------------------------------------------------------
def test_features_only():
    model = timm.create_model("biformer_t", depths=(1, 1, 1, 1), features_only=True, attn_backend="torch")
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [64, 128, 256, 512]
    feats = model(torch.randn(1, 3, 96, 128))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 24, 32), (1, 128, 12, 16), (1, 256, 6, 8), (1, 512, 3, 4)]
    sub = timm.create_model("biformer_t", depths=(1, 1, 1, 1), features_only=True, out_indices=(1, 3))
    assert sub.feature_info.reduction() == [8, 32]
    assert [f.shape[1] for f in sub(torch.randn(1, 3, 64, 64))] == [128, 512]


def test_forward_intermediates_and_prune():
    model = timm.create_model("biformer_t", depths=(1, 1, 1, 1), attn_backend="torch").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last2[0], feats[2])
        torch.testing.assert_close(last2[1], feats[3])
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], final)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], feats[1])
        kept = model.prune_intermediate_layers(indices=[0, 1])
        assert kept == [0, 1] and len(model.stages) == 2 and isinstance(model.head, nn.Identity)
        pruned = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        torch.testing.assert_close(pruned[1], feats[1])


def test_classifier_and_head_contract():
    model = timm.create_model("biformer_t", depths=(1, 1, 1, 1), num_classes=10).eval()
    cfg = model.pretrained_cfg
    assert cfg["paper_name"] == bf.PAPER_NAME and cfg["first_conv"] == "stem.0" and cfg["classifier"] == "head"
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert model.get_parameter(cfg["first_conv"] + ".weight").shape[1] == 3
    assert model.get_classifier() is model.head and model.head.out_features == 10
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 512, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), feats.mean((2, 3)))
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == feats.shape
    assert model.no_weight_decay() == set()


def test_group_matcher_covers_all_params():
    model = timm.create_model("biformer_t", depths=(1, 1, 2, 1))
    for coarse in (True, False):
        groups = timm.models.group_parameters(model, model.group_matcher(coarse=coarse))
        names = [n for g in groups.values() for n in g]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())
        assert len(groups) > 3
    opt_groups = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    assert len(opt_groups.param_groups) > 2


def test_grad_checkpointing_same_grads():
    model = timm.create_model("biformer_t", depths=(1, 1, 1, 1), attn_backend="torch").eval()
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.stages)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_prune_norm_and_head_together():
    """prune_intermediate_layers(prune_norm=True) turns the final norm into Identity; resetting the head after that
    must not read the pruned norm's parameters."""
    model = timm.create_model("biformer_t", num_classes=5)
    model.prune_intermediate_layers(indices=[1, 2], prune_norm=True, prune_head=True)
    assert isinstance(model.head, torch.nn.Identity)
