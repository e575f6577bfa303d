"""vitzoo.det.backbone.VitzooBackbone on CPU: shapes / strides / channels of every family at an odd input size, the
crop-back contract, frozen_stages / norm_eval, unused weights, checkpoint loading (train.py, timm, official layouts).

Narrow variants (the real code path of each family, fewer channels / blocks) keep it fast; the mmdet configs test
builds the real detection variants.
"""
import copy
import math
import pickle

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitzoo.det.backbone import ChannelLayerNorm, VitzooBackbone, load_checkpoint_file

# name -> (narrow model_kwargs, size_divisor, strides of all levels)
FAMILIES = {
    # n_win=16 (BiFormer's COCO setting): at this size the stage maps are smaller than 16 regions per side
    "biformer_t": (dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 128, 256), qk_dims=(32, 64, 128, 256), n_win=16),
                   1, (4, 8, 16, 32)),
    "nat_mini": (dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)), 1, (4, 8, 16, 32)),
    # dilations larger than the maps: NATTEN's bottom/right padding of the attention input
    "dinat_mini": (dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), dilations=((8,), (4,), (2,), (1,))),
                   1, (4, 8, 16, 32)),
    "vz_maxvit_tiny_224": (dict(embed_dim=(32, 64, 64, 64), depths=(1, 1, 1, 1), stem_width=16), 224, (4, 8, 16, 32)),
    "vz_davit_tiny": (dict(embed_dims=(32, 64, 64, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2)), 1,
                      (4, 8, 16, 32)),
    "vz_efficientvit_m0": (dict(), 1, (16, 32, 64)),
    "vz_halonet26t": (dict(), 256, (4, 8, 16, 32)),
    "agent_swin_t": (dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                          downstream_agent_shapes=((9, 9), (12, 12), (14, 14), (7, 7))), 1, (4, 8, 16, 32)),
    "agent_pvt_t": (dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
                         downstream_agent_shapes=((12, 12), (16, 16), (28, 28), (28, 28))), 1, (4, 8, 16, 32)),
}
H, W = 67, 101  # odd, not a multiple of any stride or window


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small ops: a second intra-op thread gains little here, while on a busy 2-core machine (other jobs) the
    threads' spin-waiting made these tests several times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str, **kwargs) -> VitzooBackbone:
    model_kwargs, _, strides = FAMILIES[name]
    kwargs.setdefault("out_indices", tuple(range(len(strides))))
    return VitzooBackbone(name, model_kwargs=model_kwargs, **kwargs)


def _registered(name: str) -> bool:
    import vitzoo  # noqa: F401

    return name in timm.list_models(name)


@pytest.fixture(params=list(FAMILIES))
def family(request):
    if not _registered(request.param):
        pytest.skip(f"{request.param} is not registered in this checkout")
    return request.param


def test_shapes_strides_channels_and_every_weight_trains(family):
    torch.manual_seed(0)
    _, divisor, strides = FAMILIES[family]
    b = _build(family).train()
    assert b.strides == list(strides) and b.size_divisor == divisor
    assert b.out_channels == [b.model.feature_info[j]["num_chs"] for j in b.feature_indices]
    x = torch.randn(2, 3, H, W)
    outs = b(x)
    assert len(outs) == len(strides)
    for out, s, ch in zip(outs, b.strides, b.out_channels):
        assert out.shape == (2, ch, math.ceil(H / s), math.ceil(W / s))
        assert out.is_contiguous() and torch.isfinite(out).all()
    sum(o.square().mean() for o in outs).backward()
    # no unused weights (DDP without find_unused_parameters): head, final norm and unused stages are gone
    unused = [n for n, p in b.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_crop_back_matches_the_model_on_the_padded_image(family):
    """outputs = the model's own features on the image zero-padded (bottom/right) to size_divisor, cropped to
    ceil(H / s). Families with size_divisor 1 are not padded at all: image-level zero padding would change their
    outputs (the stem convs turn the zeros into tokens no family masks), which is checked too."""
    torch.manual_seed(0)
    b = _build(family, out_norm=False).eval()
    x = torch.randn(1, 3, H, W)

    def model_on(padded_to: int):
        xp = F.pad(x, (0, (-W) % padded_to, 0, (-H) % padded_to))
        feats = b.model.forward_intermediates(xp, indices=b.feature_indices, intermediates_only=True)
        return [f[:, :, :math.ceil(H / s), :math.ceil(W / s)] for f, s in zip(feats, b.strides)]

    with torch.no_grad():
        outs = b(x)
        for out, ref in zip(outs, model_on(b.size_divisor)):
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
        if b.size_divisor == 1:
            padded = model_on(64)
            assert any(not torch.allclose(o, p, atol=1e-4) for o, p in zip(outs, padded))


def test_padding_families_run_unpadded_at_multiples():
    """MaxViT at a size that already is a multiple of size_divisor: exactly the model's features, no padding."""
    b = _build("vz_maxvit_tiny_224", out_norm=False).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        outs = b(x)
        feats = b.model.forward_intermediates(x, indices=b.feature_indices, intermediates_only=True)
    for o, f in zip(outs, feats):
        torch.testing.assert_close(o, f, rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple"):  # the bare model refuses the odd size the adapter pads
        b.model.forward_intermediates(torch.randn(1, 3, H, W), indices=b.feature_indices)


def test_out_norm_is_a_channel_layernorm_per_output():
    b = _build("nat_mini", out_indices=(1, 3))
    assert [n for n, m in b.named_children() if n.startswith("norm")] == ["norm1", "norm3"]
    assert all(isinstance(getattr(b, f"norm{i}"), ChannelLayerNorm) for i in (1, 3))
    norm, ch = b.norm1, b.out_channels[0]
    x = torch.randn(2, ch, 5, 7)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (ch,), norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), ref)
    assert _build("nat_mini", out_norm=False).norm0.__class__ is nn.Identity


def test_out_indices_levels_and_pruning():
    b = _build("vz_maxvit_tiny_224", out_indices=(0, 1))  # the stride-2 stem feature is no level
    assert b.strides == [4, 8] and b.out_channels == [32, 64]
    assert len(b.model.stages) == 2  # later stages pruned
    e = VitzooBackbone("vz_efficientvit_m0", out_indices=(1, -1))
    assert e.out_indices == (1, 2) and e.strides == [32, 64] and e.out_channels == [128, 192]
    with pytest.raises(ValueError, match=r"3 levels .*stride 16.*stride 64"):
        VitzooBackbone("vz_efficientvit_m0")  # the default (0, 1, 2, 3)
    with pytest.raises(ValueError, match="increasing"):
        _build("nat_mini", out_indices=(2, 1))
    with pytest.raises(ValueError, match="must not set"):
        VitzooBackbone("nat_mini", model_kwargs=dict(num_classes=10))


def test_drop_path_rate_reaches_the_model():
    from timm.layers import DropPath

    rates = [m.drop_prob for m in _build("nat_mini", drop_path_rate=0.3).modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.3)
    assert not any(isinstance(m, DropPath) for m in _build("nat_mini", drop_path_rate=0.0).modules())


def _bn(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_stages():
    b = _build("biformer_t", frozen_stages=1).train()
    frozen = {n for n, p in b.named_parameters() if not p.requires_grad}
    expect = {n for n, _ in b.named_parameters()
              if n.startswith(("model.stem.", "model.stages.0.", "norm0."))}
    assert frozen == expect and frozen
    assert not b.model.stem.training and not b.model.stages[0].training and not b.norm0.training
    assert b.model.stages[1].training and b.norm1.training
    stem_bn, stage1_bn = _bn(b.model.stem)[0], _bn(b.model.stages[1])[0]
    before = stem_bn.running_mean.clone(), stage1_bn.running_mean.clone()
    outs = b(torch.randn(2, 3, H, W))
    sum(o.mean() for o in outs).backward()
    assert torch.equal(stem_bn.running_mean, before[0])  # frozen BN statistics stay
    assert not torch.equal(stage1_bn.running_mean, before[1])
    assert all(p.grad is None for n, p in b.named_parameters() if n in frozen)
    b.train()  # a later train() (every epoch) keeps them frozen
    assert not b.model.stem.training and not any(p.requires_grad for p in b.model.stem.parameters())

    only_stem = _build("biformer_t", frozen_stages=0)
    assert {n for n, p in only_stem.named_parameters() if not p.requires_grad} == {
        n for n, _ in only_stem.named_parameters() if n.startswith("model.stem.")}
    h = VitzooBackbone("vz_halonet26t", frozen_stages=1, out_norm=False)
    assert {n.split(".")[1] + "." + n.split(".")[2] for n, p in h.named_parameters() if not p.requires_grad} == {
        "stem.conv1", "stem.conv2", "stem.conv3", "stages.0"}
    if _registered("agent_pvt_t"):  # a parameter held by a partly frozen module: stage 0's position embedding
        p = _build("agent_pvt_t", frozen_stages=0)
        assert {n for n, q in p.named_parameters() if not q.requires_grad} == {
            n for n, _ in p.named_parameters() if n.startswith(("model.stages.0.patch_embed.", "model.stages.0.pos"))}
    e = VitzooBackbone("vz_efficientvit_m0", out_indices=(0, 1, 2), frozen_stages=3)  # everything, norms included
    assert not any(p.requires_grad for p in e.parameters())
    with pytest.raises(ValueError, match="frozen_stages"):
        VitzooBackbone("vz_efficientvit_m0", out_indices=(0, 1, 2), frozen_stages=4)


def test_norm_eval():
    b = _build("biformer_t", norm_eval=True).train()
    assert all(not m.training for m in _bn(b)) and b.norm0.training and b.model.stages[0].training
    stats = [m.running_mean.clone() for m in _bn(b)]
    b(torch.randn(2, 3, H, W))
    assert all(torch.equal(m.running_mean, s) for m, s in zip(_bn(b), stats))
    assert all(p.requires_grad for p in b.parameters())  # norm_eval freezes statistics, not weights
    assert all(m.training for m in _bn(_build("biformer_t").train()))


def _classifier(name: str, **extra) -> nn.Module:
    torch.manual_seed(1)
    model = timm.create_model(name, num_classes=10, **dict(FAMILIES[name][0], **extra))
    with torch.no_grad():  # distinct values everywhere (BN statistics too), so a missed key cannot pass by chance
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.uniform_(0.5, 1.5)
    return model


def _assert_loaded(b: VitzooBackbone, sd: dict) -> None:
    own = b.model.state_dict()
    for k, v in own.items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0, msg=k)


def test_load_train_py_checkpoint(tmp_path):
    """vitzoo tools/train.py last.pth: {'model', 'ema' (ModelEmaV3: 'module.' keys), optimizer, RNG states, ...};
    the numpy RNG state makes torch.load(weights_only=True) refuse it, so the trusted fallback loads it."""
    cls = _classifier("nat_mini")
    sd = cls.state_dict()
    ema = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path / "last.pth"
    torch.save({"version": 1, "model": sd, "ema": ema, "optimizer": {"state": {}, "param_groups": []},
                "epoch": 3, "rng": {"numpy": np.random.get_state(), "python": (3, (1, 2), None)},
                "config": {"model": {"name": "nat_mini"}}}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    b = _build("nat_mini", checkpoint=str(path))
    _assert_loaded(b, sd)
    rep = b.last_load_report
    assert rep.missing == [] and rep.unexpected == []
    assert set(rep.dropped) == {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    assert rep.new == [f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]

    rep = b.load_checkpoint(path, key="ema")
    _assert_loaded(b, {k[len("module."):]: v for k, v in ema.items()})
    assert rep.missing == [] and rep.unexpected == []


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_load_timm_state_dict_head_dropped(tmp_path, fmt):
    cls = _classifier("vz_maxvit_tiny_224")  # NormMlpClassifierHead: head.norm, head.pre_logits.fc, head.fc
    path = tmp_path / f"maxvit.{fmt}"
    if fmt == "pth":
        torch.save(cls.state_dict(), path)
    else:  # timm's hub files (model.safetensors)
        from safetensors.torch import save_file

        save_file(cls.state_dict(), str(path))
    b = _build("vz_maxvit_tiny_224", checkpoint=str(path))
    _assert_loaded(b, cls.state_dict())
    rep = b.last_load_report
    assert rep.missing == [] and rep.unexpected == []
    assert {k.rsplit(".", 1)[0] for k in rep.dropped} == {"head.norm", "head.pre_logits.fc", "head.fc"}


def test_load_efficientvit_224_tables_into_detection_build(tmp_path):
    """224-trained EfficientViT: stage 3's 4x4 attention-bias tables are resized to the detection build's 7x7."""
    cls = timm.create_model("vz_efficientvit_m0", num_classes=10)  # img_size 224
    b = VitzooBackbone("vz_efficientvit_m0", out_indices=(0, 1, 2), checkpoint=None)  # img_size 512
    key = "stages.2.blocks.0.mixer.m.attn.attention_biases"
    assert cls.state_dict()[key].shape[1] == 16 and b.model.state_dict()[key].shape[1] == 49
    rep = b.load_checkpoint(cls.state_dict())
    assert rep.missing == [] and rep.unexpected == [] and "head.linear.weight" in rep.dropped
    torch.testing.assert_close(b.model.stages[0].blocks[0].dw0.m.conv.weight,
                               cls.stages[0].blocks[0].dw0.m.conv.weight)


def test_load_official_layout_and_pruned_levels():
    """An official NAT release layout ({'model': ...}, downsamplers closing a level) goes through the family's
    checkpoint_filter_fn; with out_indices (0, 1) the pruned levels' weights are dropped, not unexpected."""
    cls = _classifier("nat_mini")
    official = {}
    for k, v in cls.state_dict().items():
        if k.startswith("levels.") and ".downsample." in k:
            i = int(k.split(".")[1])
            k = f"levels.{i - 1}." + k.split(".", 2)[2]
        official[k] = v
    assert "levels.0.downsample.reduction.weight" in official
    b = _build("nat_mini")
    rep = b.load_checkpoint({"model": official})
    _assert_loaded(b, cls.state_dict())
    assert rep.missing == [] and rep.unexpected == []

    pruned = _build("nat_mini", out_indices=(0, 1))
    rep = pruned.load_checkpoint({"model": official})
    _assert_loaded(pruned, cls.state_dict())
    assert rep.missing == [] and rep.unexpected == []
    assert any(k.startswith("levels.3.") for k in rep.dropped) and len(pruned.model.levels) == 2


def test_load_errors_and_strict():
    b = _build("nat_mini")
    with pytest.raises(ValueError, match="no key matches"):
        b.load_checkpoint(_classifier("biformer_t").state_dict())
    wider = timm.create_model("nat_mini", embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
    with pytest.raises(ValueError, match="shape mismatches"):
        b.load_checkpoint(wider.state_dict())
    partial = {k: v for k, v in _classifier("nat_mini").state_dict().items() if not k.startswith("levels.3.")}
    rep = b.load_checkpoint(partial)
    assert rep.missing and all(k.startswith("model.levels.3.") for k in rep.missing)
    with pytest.raises(RuntimeError, match="missing"):
        b.load_checkpoint(partial, strict=True)
    with pytest.raises(ValueError, match="'ema' is not a state dict"):  # train.py without EMA saves ema=None
        b.load_checkpoint({"model": partial, "ema": None}, key="ema")


def test_load_detector_checkpoint_backbone_prefix(tmp_path):
    """A detector's state dict (backbone.model.*, backbone.norm*, neck.*) restores the adapter, output norms too."""
    src = _build("nat_mini")
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(-1, 1)
    sd = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    path = tmp_path / "det.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 12, "seed": 0}}, path)
    assert isinstance(load_checkpoint_file(path), dict)  # plain entries only: loads with weights_only=True
    b = _build("nat_mini")
    rep = b.load_checkpoint(str(path))
    for (k, v), (k2, v2) in zip(b.state_dict().items(), src.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert rep.missing == [] and rep.unexpected == [] and rep.new == []


def test_copy_keeps_working():
    b = _build("biformer_t", frozen_stages=0, norm_eval=True)
    c = copy.deepcopy(b).train()
    assert not c.model.stem.training and all(not m.training for m in _bn(c))


def test_checkpoint_urls_are_refused_nothing_is_downloaded():
    from vitzoo.det.backbone import load_checkpoint_file

    with pytest.raises(ValueError, match="local file"):
        load_checkpoint_file("https://example.com/model.safetensors")
