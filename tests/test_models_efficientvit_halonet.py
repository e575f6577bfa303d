"""vitzoo EfficientViT-MSRA and HaloNet against timm's own models (the independent reference): timm's state_dict loads
unchanged, fp32 outputs match, and float64 input gradients match (fp32 input gradients of these randomly initialised
deep nets are ill-conditioned: timm's own fp32 gradient is up to ~1e-2 away from its float64 one). Plus the timm
model contract (features_only, forward_intermediates, pruning, classifier reset, grad checkpointing), input-size
validation, bf16 autocast with channels_last input, and the official microsoft/Cream EfficientViT key layout."""
import re

import pytest
import timm
import torch

import vitzoo.models  # noqa: F401  registers vz_* models
from vitzoo.models.efficientvit_msra import LocalWindowAttentionVz
from vitzoo.models.efficientvit_msra import checkpoint_filter_fn as evit_filter

EVIT = [f"efficientvit_m{i}" for i in range(6)]
HALO = ["halonet26t", "halonet50ts", "halonet_h1"]


@pytest.fixture(autouse=True)
def _one_thread():
    """CPU CI boxes are small and shared: one intra-op thread avoids oversubscription (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics/affines (zero-init BN weights become small, not zero, so every residual branch and
    thus every attention layer reaches the output) and unit-scale attention biases (timm inits them to zero, which
    would hide a wrong bias index)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.normal_()
            elif name.endswith("bn.weight"):
                p.copy_(torch.where(p == 0, torch.rand_like(p) * 0.2 + 0.1, torch.rand_like(p) + 0.5))
            elif name.endswith("bn.bias"):
                p.normal_(0, 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def _pair(name: str, **kwargs):
    ref = timm.create_model(name, **kwargs).eval()
    _randomize(ref)
    ours = timm.create_model("vz_" + name, **kwargs).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _check_equivalent(ref, ours, x: torch.Tensor, grads: bool = True) -> None:
    """fp32 outputs within 1e-4 of timm's relative to the output scale; float64 outputs and input gradients equal to
    rounding (batch >= 2: timm's EfficientViT has a wrong CPU autograd input gradient at batch 1, see the report)."""
    with torch.no_grad():
        y_ref, y = ref(x), ours(x)
    assert y.shape == y_ref.shape and torch.isfinite(y).all()
    assert _rel(y, y_ref) <= 1e-4
    if not grads:
        return
    ref64, ours64 = ref.double().train().eval(), ours.double()  # train() drops timm's eval-mode bias cache
    x64 = x.double()
    xr, xo = x64.clone().requires_grad_(), x64.clone().requires_grad_()
    yr, yo = ref64(xr), ours64(xo)
    g = torch.randn_like(yr)
    (yr * g).sum().backward()
    (yo * g).sum().backward()
    assert _rel(yo, yr) <= 1e-9
    assert _rel(xo.grad, xr.grad) <= 1e-6
    for (name, p_ref), p in zip(ref64.named_parameters(), ours64.parameters()):
        if "attention_biases" in name or "rel" in name:
            assert _rel(p.grad, p_ref.grad) <= 1e-6, name
    ref.float()
    ours.float()


# --------------------------------------------------------------------------------------------------------- EfficientViT


@pytest.mark.parametrize("name", EVIT)
def test_efficientvit_matches_timm(name):
    # img_size 160: stage maps 10 (zero-padded to 14, two 7x7 windows per axis), 5 and 3 (global attention)
    ref, ours = _pair(name, img_size=160)
    _check_equivalent(ref, ours, torch.randn(2, 3, 160, 160))


def test_efficientvit_inference_caches_follow_new_weights():
    """Inference caches the dense attention bias, the attention op's logit tables and the folded conv+BN weights;
    loading other weights, or changing a running statistic or the attention biases in place, must never serve the
    old ones. Compared on stage 0's output, which both edits change visibly (the logits barely move)."""
    _, ours = _pair("efficientvit_m0", img_size=160)
    x = torch.randn(2, 3, 160, 160)

    def stage0(m):
        return m.stages[0](m.patch_embed(x))

    with torch.inference_mode():
        stage0(ours)  # fills every cache
    ref2, _ = _pair("efficientvit_m0", img_size=160)  # other random weights
    ours.load_state_dict(ref2.state_dict())
    with torch.inference_mode():
        before = stage0(ours)
        assert _rel(before, stage0(ref2)) <= 1e-4
    with torch.no_grad():
        for m in (ours, ref2):
            m.patch_embed.conv1.bn.running_var.mul_(2.0)
            m.stages[0].blocks[0].mixer.m.attn.attention_biases.mul_(3.0)
        ref2.train().eval()  # timm caches its own eval-mode attention biases; train() drops them
        after = stage0(ours)
        assert _rel(after, before) > 1e-2  # the edits matter, so a stale cache would fail below
        assert _rel(after, stage0(ref2)) <= 1e-4


@pytest.mark.parametrize("img_size", [224, 288])
def test_efficientvit_default_and_large_sizes(img_size):
    # 224: maps 14 (2x2 windows), 7, 4; 288: maps 18 (padded to 21), 9 (padded to 14), 5
    ref, ours = _pair("efficientvit_m0", img_size=img_size)
    _check_equivalent(ref, ours, torch.randn(2, 3, img_size, img_size), grads=img_size == 288)


def test_efficientvit_attention_gradcheck():
    """Independent of timm: the cascaded attention's float64 gradients (input and bias table) against finite
    differences, in both window mode (with padding) and global mode, batch 1."""
    for res, window in ((9, 7), (5, 7)):
        lwa = LocalWindowAttentionVz(12, 4, 2, attn_ratio=1.5, resolution=res, window_resolution=window,
                                     kernels=(3, 5)).double().eval()
        with torch.no_grad():
            lwa.attn.attention_biases.normal_()
        x = torch.randn(1, 12, res, res, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lwa, (x,), eps=1e-6, atol=1e-6, fast_mode=True)
        table = lwa.attn.attention_biases
        assert torch.autograd.gradcheck(lambda t: torch.func.functional_call(
            lwa, {"attn.attention_biases": t}, (x.detach(),)), (table.detach().clone().requires_grad_(),),
            fast_mode=True)


def test_efficientvit_smaller_runtime_input_uses_table_subset():
    """A 224-built model runs 192 inputs (stage-3 map 3 <= its 4x4 table): same as a 192-built timm model whose 3x3
    table is the |dy|, |dx| < 3 corner of ours."""
    ref192 = timm.create_model("efficientvit_m0", img_size=192).eval()
    _randomize(ref192)
    ours = timm.create_model("vz_efficientvit_m0", img_size=224).eval()
    sd = ref192.state_dict()
    target = ours.state_dict()
    for k, v in list(sd.items()):
        if k.endswith("attention_biases") and v.shape != target[k].shape:  # 6x6 -> 7x7 (stage 2), 3x3 -> 4x4
            r, r_big = int(v.shape[1] ** 0.5), int(target[k].shape[1] ** 0.5)
            big = torch.randn(v.shape[0], r_big, r_big)
            big[:, :r, :r] = v.view(-1, r, r)
            sd[k] = big.flatten(1)
    ours.load_state_dict(sd)
    x = torch.randn(2, 3, 192, 192)
    with torch.no_grad():
        assert _rel(ours(x), ref192(x)) <= 1e-4


def test_efficientvit_contract():
    ref, ours = _pair("efficientvit_m1", img_size=160)
    x = torch.randn(2, 3, 160, 160)
    assert ours.pretrained_cfg["classifier"] == "head.linear" and ours.pretrained_cfg["input_size"] == (3, 224, 224)
    assert ours.get_classifier() is ours.head.linear
    assert ours.no_weight_decay() == ref.no_weight_decay() and len(ours.no_weight_decay()) == 6
    assert ours.group_matcher() == ref.group_matcher() and ours.group_matcher(True) == ref.group_matcher(True)
    assert ours.feature_info == ref.feature_info
    with torch.no_grad():
        feats = ours.forward_features(x)
        assert _rel(ours.forward_head(feats, pre_logits=True), ref.forward_head(ref.forward_features(x), True)) < 1e-4
        out, inter = ours.forward_intermediates(x)
        out_r, inter_r = ref.forward_intermediates(x)
        assert len(inter) == 3 and all(_rel(a, b) <= 1e-4 for a, b in zip(inter, inter_r))
        only = ours.forward_intermediates(x, indices=[0, 1], intermediates_only=True, stop_early=True)
        assert len(only) == 2 and _rel(only[1], inter_r[1]) <= 1e-4
        ours.set_grad_checkpointing(True)
        assert _rel(ours(x), ref(x)) <= 1e-4
        ours.set_grad_checkpointing(False)
    with pytest.raises(ValueError, match="output_fmt"):
        ours.forward_intermediates(x, output_fmt="NHWC")
    ours.reset_classifier(7)
    assert ours(x).shape == (2, 7) and ours.get_classifier().out_features == 7
    ours.reset_classifier(0, "")
    assert ours(x).shape == (2, 192, 3, 3)
    pruned = timm.create_model("vz_efficientvit_m1", img_size=160)
    assert pruned.prune_intermediate_layers(indices=[1]) == [1] and len(pruned.stages) == 2
    assert pruned.num_classes == 0


def test_efficientvit_features_only():
    ref = timm.create_model("efficientvit_m2", img_size=160, features_only=True, out_indices=(1, 2)).eval()
    _randomize(ref)
    ours = timm.create_model("vz_efficientvit_m2", img_size=160, features_only=True, out_indices=(1, 2)).eval()
    ours.load_state_dict(ref.state_dict())
    assert ours.feature_info.channels() == [192, 224] and ours.feature_info.reduction() == [32, 64]
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            assert a.shape == b.shape and _rel(a, b) <= 1e-4


def _to_official(sd: dict) -> dict:
    """timm layout -> microsoft/Cream EfficientViT layout, written independently of the filter under test."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"stages\.(\d)\.downsample\.(res1|patchmerge|res2)\.(.*)", k)
        if m:
            k = f"blocks{int(m[1]) + 1}.{['res1', 'patchmerge', 'res2'].index(m[2])}.{m[3]}"
        m = re.match(r"stages\.(\d)\.blocks\.(\d+)\.(.*)", k)
        if m:
            k = f"blocks{int(m[1]) + 1}.{int(m[2]) + (3 if int(m[1]) else 0)}.{m[3]}"
        m = re.match(r"patch_embed\.conv(\d)\.(.*)", k)
        if m:
            k = f"patch_embed.{2 * (int(m[1]) - 1)}.{m[2]}"
        k = re.sub(r"\.conv\.(weight)$", r".c.\1", k).replace("head.linear.", "head.l.")
        out[k] = v
        if k.endswith("attention_biases"):
            out[k.replace("attention_biases", "attention_bias_idxs")] = torch.zeros(1, dtype=torch.long)
    out["head_dist.l.weight"] = torch.zeros(1)
    return {"model": out}


def test_efficientvit_official_checkpoint_layout():
    ref, ours = _pair("efficientvit_m3", img_size=160)
    official = _to_official(ref.state_dict())
    assert "blocks2.1.conv1.c.weight" in official["model"] and "patch_embed.6.bn.weight" in official["model"]
    assert "blocks3.4.mixer.m.attn.qkvs.0.c.weight" in official["model"]
    fresh = timm.create_model("vz_efficientvit_m3", img_size=160).eval()
    fresh.load_state_dict(evit_filter(official, fresh), strict=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(fresh(x), ours(x))
    # a checkpoint for another img_size: stage-3 tables (3x3 at 160) are resized to the model's (5x5 at 288)
    big = timm.create_model("vz_efficientvit_m3", img_size=288)
    filtered = evit_filter(ref.state_dict(), big)
    big.load_state_dict(filtered, strict=True)
    assert filtered["stages.2.blocks.0.mixer.m.attn.attention_biases"].shape == (4, 25)


def test_efficientvit_size_and_arg_errors():
    model = timm.create_model("vz_efficientvit_m0").eval()
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 288, 288))  # stage-3 map 5 > the 4x4 bias table built for 224
    with pytest.raises(ValueError, match="attn_backend"):
        timm.create_model("vz_efficientvit_m0", attn_backend="cuda")
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("vz_efficientvit_m0", global_pool="max")


def test_efficientvit_bf16_channels_last():
    ref, ours = _pair("efficientvit_m0", img_size=160)
    ours = ours.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 160, 160).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    with torch.no_grad():
        y_ref = ref(x)
    assert torch.isfinite(y).all() and _rel(y.float(), y_ref) < 5e-2


def test_names_do_not_collide_with_timm():
    ours = [f"vz_{n}" for n in EVIT + HALO]
    assert set(ours) <= set(timm.list_models("vz_*"))
    assert not set(EVIT + HALO) & set(ours)


# -------------------------------------------------------------------------------------------------------------- HaloNet


@pytest.mark.parametrize("name", HALO)
def test_halonet_matches_timm(name):
    ref, ours = _pair(name)
    _check_equivalent(ref, ours, torch.randn(2, 3, 256, 256))


def test_halonet_non_square_size_and_contract():
    ref, ours = _pair("halonet26t")
    x = torch.randn(1, 3, 256, 512)
    with torch.no_grad():
        assert _rel(ours(x), ref(x)) <= 1e-4
        out, inter = ours.forward_intermediates(x)
        _, inter_r = ref.forward_intermediates(x)
        assert len(inter) == len(inter_r) and all(_rel(a, b) <= 1e-4 for a, b in zip(inter, inter_r))
        assert _rel(ours.forward_head(out, pre_logits=True), ref.forward_head(out, pre_logits=True)) == 0
    assert ours.input_multiple == 256
    assert ours.pretrained_cfg["input_size"] == (3, 256, 256) and ours.pretrained_cfg["classifier"] == "head.fc"
    assert ours.group_matcher() == ref.group_matcher()
    ours.reset_classifier(5)
    assert ours.get_classifier().out_features == 5
    ours.set_grad_checkpointing(True)
    assert ours(torch.randn(1, 3, 256, 256)).shape == (1, 5)
    assert ours.prune_intermediate_layers(indices=2) == ref.prune_intermediate_layers(indices=2)


@pytest.mark.parametrize("name", ["halonet26t", "halonet_h1"])
def test_halonet_fused_inference_matches_timm(name, monkeypatch):
    """The inference path the GPU takes (BatchNorms folded, conv + bias (+ residual) + ReLU in one call; on CPU the op
    is F.conv2d + add + relu), forced on CPU: every conv-BN-ReLU layer and block tail fused, timm's outputs.
    (halonet50ts's SiLU layers are not fusable: see test_halonet_silu_layers_stay_timms.)"""
    import vitzoo.models._conv_norm_act as cna
    from timm.layers import ConvNormAct
    from timm.models.byobnet import BottleneckBlock, SelfAttnBlock

    ref, ours = _pair(name)
    fused = [m for m in ours.modules() if isinstance(m, (cna.FusedConvNormAct, cna.FusedBottleneckBlock,
                                                         cna.FusedSelfAttnBlock))]
    blocks = [m for m in ref.modules() if isinstance(m, (BottleneckBlock, SelfAttnBlock))]
    relu_convs = [m for m in ref.modules() if isinstance(m, ConvNormAct) and isinstance(m.bn.act, torch.nn.ReLU)]
    assert len(fused) == len(blocks) + len(relu_convs) and len(blocks) > 0
    for m in fused:
        m.fused = True
    calls = []
    real = cna.conv2d_bias_relu
    monkeypatch.setattr(cna, "conv2d_bias_relu", lambda *a, **kw: calls.append(a[-1] is not None) or real(*a, **kw))
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    # every block tail with a shortcut adds it in the fused call; the ReLU convs inside blocks and the stem have none
    assert sum(calls) == sum(b.shortcut is not None for b in blocks) and len(calls) == len(fused)
    assert _rel(got, want) <= 1e-4
    ours(x)  # autograd on: timm's forward
    assert len(calls) == len(fused)


def test_halonet_silu_layers_stay_timms():
    import vitzoo.models._conv_norm_act as cna

    model = timm.create_model("vz_halonet50ts")
    # no SiLU conv is folded into a ReLU call; the stem's training BN + SiLU + max pool op takes any activation
    assert not any(type(m).__module__ == cna.__name__ for m in model.modules() if m is not model.stem)
    assert type(model.stem) is cna.FusedPoolStem


def test_halonet_features_only():
    ref = timm.create_model("halonet50ts", features_only=True, out_indices=(2, 3, 4)).eval()
    _randomize(ref)
    ours = timm.create_model("vz_halonet50ts", features_only=True, out_indices=(2, 3, 4)).eval()
    ours.load_state_dict(ref.state_dict())
    assert ours.feature_info.reduction() == [8, 16, 32]
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            assert a.shape == b.shape and _rel(a, b) <= 1e-4


def test_halonet_size_and_arg_errors():
    model = timm.create_model("vz_halonet26t").eval()
    with pytest.raises(ValueError, match="multiples of 256"):
        model(torch.randn(1, 3, 224, 224))
    feats = timm.create_model("vz_halonet26t", features_only=True).eval()
    with pytest.raises(ValueError, match="block_size=8.*multiples of 128"):
        feats(torch.randn(1, 3, 192, 192))  # features_only bypasses the model check: the layer names the multiple
    with pytest.raises(ValueError, match="attn_backend"):
        timm.create_model("vz_halonet26t", attn_backend="flash")


def test_halonet_bf16_channels_last():
    ref, ours = _pair("halonet26t")
    ours = ours.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 256, 256).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    with torch.no_grad():
        y_ref = ref(x)
    assert torch.isfinite(y).all() and _rel(y.float(), y_ref) < 5e-2


def test_layers_triton_backend_matches_torch():
    """attn_backend='triton' (the Triton interpreter on CPU, see conftest) reaches the kernels through both model
    layers with their real strided views and gives the torch path's outputs and gradients."""
    from vitzoo.models.halonet import HaloAttnVz

    cases = [
        (lambda be: LocalWindowAttentionVz(32, 16, 2, attn_ratio=1, resolution=9, window_resolution=7,
                                           kernels=(3, 3), attn_backend=be).eval(), (1, 32, 9, 9), "attention_biases"),
        (lambda be: HaloAttnVz(16, 16, stride=2, num_heads=1, block_size=8, halo_size=2, attn_backend=be),
         (1, 16, 16, 16), "height_rel"),
    ]
    for build, shape, table in cases:
        x = torch.randn(shape)
        results = []
        for backend in ("torch", "triton"):
            torch.manual_seed(1)
            layer = build(backend)
            _randomize(layer)
            xx = x.clone().requires_grad_()
            y = layer(xx)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            results.append((y, xx.grad, dict(layer.named_parameters())[
                next(n for n, _ in layer.named_parameters() if n.endswith(table))].grad))
        for a, b in zip(*results):
            assert _rel(b, a) <= 1e-4
