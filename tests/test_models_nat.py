"""NAT / DiNAT timm models (vitzoo.models.nat) on the torch backend, CPU.

Independent references: the attention layer is checked against a float64 port of NATTEN's own index arithmetic
(``get_window_start`` / ``get_pb_start`` of NATTEN's CPU kernels, i.e. the official models' semantics, including
NATTEN's bottom/right zero padding of maps smaller than kernel * dilation); the full model's weight layout against
the official ``classification/nat.py`` key names. Most contract tests use a narrow model (same code path, fewer
channels / blocks) to stay fast; the real variants are built on the meta device for parameter counts and structure.
"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models._manipulate import group_parameters

import vitzoo.models  # noqa: F401  registers the models
from vitzoo.models.nat import Nat, NeighborhoodAttention2d, checkpoint_filter_fn

# Parameter counts (millions) from the NAT and DiNAT papers / official READMEs.
PAPER_PARAMS_M = {
    "nat_mini": 20, "nat_tiny": 28, "nat_small": 51, "nat_base": 90,
    "dinat_mini": 20, "dinat_tiny": 28, "dinat_small": 51, "dinat_base": 90,
}
# (embed_dim, depths, heads, mlp_ratio, layer_scale) of the official configs.
OFFICIAL_ARCH = {
    "nat_mini": (64, (3, 4, 6, 5), (2, 4, 8, 16), 3, False),
    "nat_tiny": (64, (3, 4, 18, 5), (2, 4, 8, 16), 3, False),
    "nat_small": (96, (3, 4, 18, 5), (3, 6, 12, 24), 2, True),
    "nat_base": (128, (3, 4, 18, 5), (4, 8, 16, 32), 2, True),
    "dinat_mini": (64, (3, 4, 6, 5), (2, 4, 8, 16), 3, False),
    "dinat_tiny": (64, (3, 4, 18, 5), (2, 4, 8, 16), 3, False),
    "dinat_small": (96, (3, 4, 18, 5), (3, 6, 12, 24), 2, False),
    "dinat_base": (128, (3, 4, 18, 5), (4, 8, 16, 32), 2, True),
}
DINAT_DILATIONS = {
    "dinat_mini": [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5],
    "dinat_tiny": [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5],
}
DINAT_DILATIONS["dinat_small"] = DINAT_DILATIONS["dinat_base"] = DINAT_DILATIONS["dinat_tiny"]

# Narrow model for the contract tests: real code path, 4 levels, dilations that force NATTEN padding at small sizes.
TINY = dict(embed_dim=16, depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4), layer_scale=0.5,
            dilations=((2,), (1, 2), (2, 1), (1,)))


def tiny(name: str = "dinat_mini", **kwargs) -> Nat:
    return timm.create_model(name, **dict(TINY, **kwargs))


# ---------------------------------------------------------------------------------------------------------------
# registry, parameter counts, structure


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_variant_params_and_structure_match_official(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e6 - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.01, params
    dim, depths, heads, mlp_ratio, layer_scale = OFFICIAL_ARCH[name]
    assert [len(level.blocks) for level in model.levels] == list(depths)
    assert model.num_features == dim * 8
    dilations = DINAT_DILATIONS.get(name, [[1] * d for d in depths])
    for i, level in enumerate(model.levels):
        assert isinstance(level.downsample, torch.nn.Identity) == (i == 0)
        for j, block in enumerate(level.blocks):
            assert block.attn.num_heads == heads[i] and block.attn.head_dim == 32
            assert block.attn.kernel_size == 7 and block.attn.dilation == dilations[i][j]
            assert block.attn.qkv.bias is not None and block.attn.rpb.shape == (heads[i], 13, 13)
            assert block.mlp.fc1.out_features == mlp_ratio * dim * 2 ** i
            assert (block.gamma1 is not None) == layer_scale
    cfg = model.pretrained_cfg
    assert cfg["paper_ids"] == ("arXiv:2209.15001" if name.startswith("dinat") else "arXiv:2204.07143")
    assert cfg["license"] == "mit" and cfg["origin_url"].startswith("https://github.com/SHI-Labs/")
    assert cfg["first_conv"] == "patch_embed.proj.0" and cfg["classifier"] == "head"
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


def test_registered_names():
    names = set(timm.list_models(["nat_*", "dinat_*"]))
    assert names == set(PAPER_PARAMS_M)
    for name in PAPER_PARAMS_M:  # tags exist; no url: official weights load via pretrained_cfg_overlay=dict(file=...)
        cfg = timm.models.get_pretrained_cfg(f"{name}.in1k")
        assert cfg is not None and not cfg.url and cfg.notes[0].startswith("official checkpoint: https://")


# ---------------------------------------------------------------------------------------------------------------
# attention layer vs a float64 port of NATTEN's index arithmetic


def _natten_window_start(index: int, length: int, kernel: int, dilation: int) -> int:
    half = kernel // 2
    if dilation <= 1:
        return max(index - half, 0) + (index + half >= length) * (length - index - half - 1)
    if index - half * dilation < 0:
        return index % dilation
    if index + half * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * half * dilation
        return a + imodd - kernel * dilation
    return index - half * dilation


def _natten_pb_start(index: int, length: int, kernel: int, dilation: int) -> int:
    half = kernel // 2
    if dilation <= 1:
        return half + (index < half) * (half - index) + (index + half >= length) * (length - index - 1 - half)
    if index - half * dilation < 0:
        return kernel - 1 - index // dilation
    if index + half * dilation >= length:
        return (length - index - 1) // dilation
    return half


def natten_module_reference(module: NeighborhoodAttention2d, x: torch.Tensor) -> torch.Tensor:
    """NATTEN NeighborhoodAttention2D.forward: pad to kernel*dilation, qkv, q*scale, qk+rpb, softmax, av, crop, proj."""
    b, h, w, c = x.shape
    k, d, heads = module.kernel_size, module.dilation, module.num_heads
    window = k * d
    pad_r, pad_b = max(0, window - w), max(0, window - h)
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = h + pad_b, w + pad_r
    q, key, v = module.qkv(x).reshape(b, hp, wp, 3, heads, c // heads).permute(3, 0, 4, 1, 2, 5)
    q = q * module.scale
    out = torch.empty_like(q)
    for i in range(hp):
        ni, pi = _natten_window_start(i, hp, k, d), _natten_pb_start(i, hp, k, d)
        for j in range(wp):
            nj, pj = _natten_window_start(j, wp, k, d), _natten_pb_start(j, wp, k, d)
            rows = [ni + a * d for a in range(k)]
            cols = [nj + bb * d for bb in range(k)]
            keys = key[:, :, rows][:, :, :, cols].reshape(b, heads, k * k, -1)
            vals = v[:, :, rows][:, :, :, cols].reshape(b, heads, k * k, -1)
            logits = torch.einsum("bhd,bhnd->bhn", q[:, :, i, j], keys)
            logits = logits + module.rpb[:, pi:pi + k, pj:pj + k].reshape(heads, k * k)
            out[:, :, i, j] = torch.einsum("bhn,bhnd->bhd", logits.softmax(-1), vals)
    out = out.permute(0, 2, 3, 1, 4).reshape(b, hp, wp, c)[:, :h, :w]
    return module.proj(out)


@pytest.mark.parametrize("size, kernel, dilation", [
    ((9, 11), 3, 1),  # plain NA with borders
    ((11, 13), 3, 2),  # dilated, uneven dilation groups
    ((10, 9), 3, 3),  # dilation 3
    ((5, 4), 3, 2),  # map smaller than kernel*dilation: NATTEN pads to 6x6 and crops
    ((2, 7), 5, 1),  # padding along one axis only
])
def test_attention_layer_matches_natten_reference(size, kernel, dilation):
    module = NeighborhoodAttention2d(8, 2, kernel_size=kernel, dilation=dilation, backend="torch").double()
    with torch.no_grad():
        module.rpb.normal_()  # large bias so an index / flip error cannot hide
        module.qkv.bias.normal_()  # padded tokens are keys with k = v = qkv bias
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    torch.testing.assert_close(module(x), natten_module_reference(module, x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# forward / backward


def _check_backward(model, out):
    out.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    rpb = [p for n, p in model.named_parameters() if n.endswith(".rpb")]
    assert rpb and all(p.grad.abs().sum() > 0 for p in rpb)


def test_nat_mini_forward_backward_224():
    model = timm.create_model("nat_mini", attn_backend="torch", drop_path_rate=0.0)  # no dropped (zero-grad) blocks
    out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    _check_backward(model, out)


@pytest.mark.parametrize("size, backward", [((200, 264), False), ((67, 45), True)])
def test_odd_non_square_sizes(size, backward):
    # 67x45 -> level maps 17x12, 9x6, 5x3, 3x2: every level is below its kernel*dilation window (NATTEN padding).
    model = tiny(drop_path_rate=0.0)
    x = torch.randn(2, 3, *size)
    with torch.set_grad_enabled(backward):
        feats = model.forward_features(x)
        out = model.forward_head(feats)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    expect = [math.ceil(s / 4) for s in size]  # stem: two stride-2 convs with padding 1
    for _ in range(3):
        expect = [math.ceil(e / 2) for e in expect]
    assert feats.shape == (2, *expect, 128)
    if backward:
        _check_backward(model, out)


def test_bf16_autocast_channels_last():
    model = tiny().eval()
    x = torch.randn(2, 3, 72, 56).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x.contiguous())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    model = tiny(drop_path_rate=0.0)
    x = torch.randn(1, 3, 48, 40)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(level.grad_checkpointing for level in model.levels)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6)


def test_torch_compile_smoke():
    # The torch reference op is traced op by op (its kernel-size loops unroll), so compile time grows with
    # kernel_size**2 and depth: one block per level and a 3x3 neighborhood keep this a smoke test of the full graph.
    model = tiny("nat_mini", depths=(1, 1, 1, 1), dilations=None, kernel_size=3, attn_backend="torch").eval()
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# timm contract


def test_features_only_shapes_and_strides():
    model = tiny(features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [16, 32, 64, 128]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 24, 16), (2, 8, 12, 32), (2, 4, 6, 64), (2, 2, 3, 128)]
    assert model.output_fmt.name == "NHWC"  # like timm's Swin; feature_cls="getter" gives NCHW

    sub = tiny(features_only=True, out_indices=(1, 3)).eval()
    assert sub.feature_info.reduction() == [8, 32]
    getter = tiny(features_only=True, feature_cls="getter", out_indices=(0, 2)).eval()
    with torch.no_grad():
        assert [tuple(f.shape) for f in getter(torch.randn(1, 3, 64, 96))] == [(1, 16, 16, 24), (1, 64, 4, 6)]


def test_features_only_matches_forward_intermediates():
    model = tiny().eval()
    feats = tiny(features_only=True).eval()
    feats.load_state_dict({k.replace("levels.", "levels_", 1): v for k, v in model.state_dict().items()
                           if not k.startswith(("norm.", "head."))})
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        inter = model.forward_intermediates(x, intermediates_only=True, output_fmt="NHWC")
        for a, b in zip(feats(x), inter):
            torch.testing.assert_close(a, b)


def test_forward_intermediates_and_prune():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [tuple(t.shape) for t in inter] == [(2, 16, 16, 12), (2, 32, 8, 6), (2, 64, 4, 3), (2, 128, 2, 2)]
        assert all(t.is_contiguous() for t in inter)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last2[0], inter[2])
        picked = model.forward_intermediates(x, indices=[0, -1], norm=True, intermediates_only=True)
        torch.testing.assert_close(picked[0], inter[0])
        torch.testing.assert_close(picked[1], final.permute(0, 3, 1, 2))  # norm applied to the last level only
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], inter[1])
        nhwc = model.forward_intermediates(x, indices=[1], output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(nhwc[0], inter[1].permute(0, 2, 3, 1))
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NLC")

        kept = model.prune_intermediate_layers(indices=[1], prune_norm=True)
        assert kept == [1] and len(model.levels) == 2
        assert isinstance(model.norm, torch.nn.Identity) and model.num_classes == 0
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], inter[1])


def test_contract_methods():
    model = tiny(num_classes=7).eval()
    x = torch.randn(2, 3, 48, 64)
    assert model.get_classifier() is model.head and model.head.out_features == 7
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 2, 2, 128)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats.mean((1, 2)))
        torch.testing.assert_close(model.forward_head(feats), model.head(pre))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0, "")
        assert isinstance(model.get_classifier(), torch.nn.Identity)
        torch.testing.assert_close(model(x), feats)  # unpooled NHWC map

    nwd = model.no_weight_decay()
    rpb_names = {n for n, _ in model.named_parameters() if n.endswith("attn.rpb")}
    assert nwd == rpb_names and len(rpb_names) == sum(TINY["depths"])

    groups = group_parameters(model, model.group_matcher())
    grouped = {n for names in groups.values() for n in names}
    assert grouped == {n for n, _ in model.named_parameters()}
    assert group_parameters(model, model.group_matcher(coarse=True))


def test_attn_backend_passes_through(monkeypatch):
    import vitzoo.models.nat as nat_module

    seen = []

    def spy(*args, backend, **kwargs):
        seen.append(backend)
        return real(*args, backend=backend, **kwargs)

    real = nat_module.neighborhood_attention_2d
    monkeypatch.setattr(nat_module, "neighborhood_attention_2d", spy)
    model = tiny(attn_backend="torch")
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == ["torch"] * sum(TINY["depths"])
    model.set_attn_backend("auto")
    assert {m.backend for m in model.modules() if isinstance(m, NeighborhoodAttention2d)} == {"auto"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(attn_backend="cuda"), "backend"),
    (dict(attn_drop_rate=0.1), "attn_drop"),
    (dict(global_pool="max"), "global_pool"),
    (dict(dilations=((1,), (1, 1))), "dilations"),
    (dict(dilations=((1, 1), (1, 1), (1, 1), (1,))), "dilations"),
    (dict(kernel_size=4), "kernel_size"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)
    model = tiny()
    with pytest.raises(ValueError, match="backend"):
        model.set_attn_backend("cuda")


# ---------------------------------------------------------------------------------------------------------------
# weights: official checkpoint layout


def official_layout(state_dict):
    """Our state dict renamed to the official classification/nat.py + NATTEN layout: NATBlock ``levels.i`` holds
    ``blocks`` then closes with ``downsample`` (ConvDownsampler ``reduction`` + ``norm``), so our opening
    downsampler of level i+1 is their ``levels.i.downsample``; every other name is shared."""
    out = {}
    for key, value in state_dict.items():
        if ".downsample." in key:
            level = int(key.split(".")[1])
            key = key.replace(f"levels.{level}.downsample.", f"levels.{level - 1}.downsample.")
        out[key] = value
    return out


def test_official_layout_key_names():
    with torch.device("meta"):
        model = timm.create_model("nat_small")
    keys = set(official_layout(model.state_dict()))
    for key in ["patch_embed.proj.0.weight", "patch_embed.proj.1.bias", "patch_embed.norm.weight",
                "levels.0.blocks.0.norm1.weight", "levels.0.blocks.0.attn.qkv.weight", "levels.0.blocks.0.attn.rpb",
                "levels.0.blocks.0.attn.proj.bias", "levels.0.blocks.0.mlp.fc1.weight", "levels.0.blocks.0.gamma1",
                "levels.0.downsample.reduction.weight", "levels.2.downsample.norm.bias",
                "levels.3.blocks.4.mlp.fc2.weight", "norm.weight", "head.weight"]:
        assert key in keys, key
    assert not any(k.startswith("levels.3.downsample") for k in keys)
    assert "levels.0.downsample.reduction.bias" not in keys  # official reduction conv has bias=False


def test_checkpoint_filter_loads_official_layout(tmp_path):
    src = tiny().eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.1 * torch.randn_like(p))  # move off the init so a missed key shows in the output
    path = tmp_path / "official.pth"
    torch.save({"model": official_layout(src.state_dict()), "epoch": 300}, path)

    filtered = checkpoint_filter_fn(torch.load(path), src)
    assert filtered.keys() == src.state_dict().keys()

    dst = tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 64, 56)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_checkpoint_filter_own_layout_and_rpb_resize(tmp_path):
    src = tiny(kernel_size=5).eval()
    path = tmp_path / "own.pth"
    torch.save(src.state_dict(), path)
    same = tiny(kernel_size=5, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(same(x), src(x), rtol=0, atol=0)

    bigger = tiny(kernel_size=7)
    out = checkpoint_filter_fn({"state_dict": src.state_dict()}, bigger)
    table = out["levels.1.blocks.0.attn.rpb"]
    assert table.shape == (2, 13, 13)
    expect = F.interpolate(src.levels[1].blocks[0].attn.rpb.detach()[None], size=(13, 13), mode="bicubic",
                           align_corners=False)[0]
    torch.testing.assert_close(table, expect)
    with pytest.raises(ValueError, match="heads"):
        checkpoint_filter_fn(src.state_dict(), tiny(num_heads=(2, 2, 2, 4)))


# ---------------------------------------------------------------------------------------------------------------
# backends: the Triton kernels (TRITON_INTERPRET=1 on CPU, set by conftest.py) against the torch reference


def test_triton_backend_matches_torch(monkeypatch):
    import vitzoo.ops._neighborhood_triton as triton_op

    calls = []
    real = triton_op.neighborhood_attention_2d_triton
    monkeypatch.setattr(triton_op, "neighborhood_attention_2d_triton", lambda *a: calls.append(1) or real(*a))
    # head_dim 16 everywhere (the smallest tl.dot-friendly size), 3x3 neighborhoods to keep the interpreter fast;
    # level maps 9x8 / 5x4 / 3x2 / 2x1: dilation 2 at levels 0 and 2, levels 2 and 3 go through the NATTEN padding.
    model = tiny(num_heads=(1, 2, 4, 8), depths=(1, 1, 1, 1), dilations=((2,), (1,), (2,), (1,)), kernel_size=3,
                 drop_path_rate=0.0, attn_backend="torch")
    x = torch.randn(1, 3, 36, 30)
    results = []
    for backend in ("torch", "triton"):
        model.set_attn_backend(backend)
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert len(calls) == 4  # every attention layer ran the Triton kernels on the second pass
    (ref, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-6, msg=lambda m: f"{name}: {m}")
