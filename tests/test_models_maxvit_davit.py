"""vitzoo MaxViT / DaViT against timm's own models (the independent reference): timm's state_dict loads unchanged
and forward outputs, input gradients and parameter gradients match in fp32; plus the timm model contract
(features_only, forward_intermediates, pruning, classifier reset, grad checkpointing), size validation, bf16 autocast
with channels_last input, and the official DaViT checkpoint key layout."""
import re

import pytest
import timm
import torch

import vitzoo.models  # noqa: F401  registers vz_* models
from vitzoo.models.davit import checkpoint_filter_fn as davit_filter
from vitzoo.models._partition_attn import PartitionAttention2d
from vitzoo.models.maxvit import checkpoint_filter_fn as maxvit_filter

MAXVIT = ["maxvit_tiny_tf_224", "maxvit_small_tf_224", "maxvit_base_tf_224"]
DAVIT = ["davit_tiny", "davit_small", "davit_base"]
# timm name -> vitzoo name (the README's table)
VZ = {
    "maxvit_tiny_tf_224": "vz_maxvit_tiny_224", "maxvit_small_tf_224": "vz_maxvit_small_224",
    "maxvit_base_tf_224": "vz_maxvit_base_224",
    "davit_tiny": "vz_davit_tiny", "davit_small": "vz_davit_small", "davit_base": "vz_davit_base",
}


@pytest.fixture(autouse=True)
def _one_thread():
    """CPU CI boxes are small and shared: one intra-op thread avoids oversubscription (restored afterwards). Seeded:
    the fp32 bounds below are rounding bounds on random models, which must not change from run to run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def _pair(name: str, randomize_tables: bool = True, **kwargs):
    """(timm model, vitzoo model with timm's state_dict loaded strictly), both in eval mode."""
    ref = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if randomize_tables and n.endswith("relative_position_bias_table"):
                p.normal_()  # timm's std=0.02 init would make a wrong bias index nearly invisible
    ours = timm.create_model(VZ[name], **kwargs).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _check_fwd_bwd(ref, ours, x: torch.Tensor, param_grads: bool = False, grads: bool = True):
    """fp32 outputs within 1e-4 of timm's (relative to the output scale), then float64 forward + backward: outputs,
    input gradients and (optionally) every parameter gradient equal to rounding. Gradients are compared in float64
    because timm's own fp32 input gradient of the deep variants is ~1e-3 away from its float64 one; likewise the fp32
    output bound is relaxed to 3x timm's own fp32 error where that exceeds 1e-4 (randomly initialised maxvit_base
    amplifies rounding to ~1e-4: one CI machine saw ours at 1.2e-4 from float64; equality is the float64 check)."""
    with torch.no_grad():
        y_ref, y = ref(x), ours(x)
    assert y.shape == y_ref.shape and y.dtype == torch.float32
    if not grads:
        assert _rel(y, y_ref) <= 1e-4, f"fp32 output rel err {_rel(y, y_ref):.2e}"
        return
    ref, ours = ref.double(), ours.double()
    xs = [x.double().requires_grad_(True) for _ in range(2)]
    outs = [m(xi) for m, xi in zip((ref, ours), xs)]
    assert _rel(outs[1], outs[0]) <= 1e-10, f"fp64 output rel err {_rel(outs[1], outs[0]):.2e}"
    bound = max(1e-4, 3 * _rel(y_ref.double(), outs[0]))
    assert _rel(y, y_ref) <= bound or _rel(y.double(), outs[0]) <= bound, f"fp32 rel err {_rel(y, y_ref):.2e}"
    w = torch.randn_like(outs[0])
    for o in outs:
        (o * w).sum().backward()
    assert _rel(xs[1].grad, xs[0].grad) <= 1e-9, f"input grad rel err {_rel(xs[1].grad, xs[0].grad):.2e}"
    if param_grads:
        ref_grads = dict(ref.named_parameters())
        for n, p in ours.named_parameters():
            assert p.grad is not None, n
            assert _rel(p.grad, ref_grads[n].grad) <= 1e-8, f"{n}: {_rel(p.grad, ref_grads[n].grad):.2e}"
    ref.float(), ours.float()


# ----------------------------------------------------------------------------------------------------------- MaxViT

@pytest.mark.parametrize("name,img,param_grads", [
    (MAXVIT[0], 224, False), (MAXVIT[0], 64, True), (MAXVIT[1], 64, True), (MAXVIT[2], 64, False)])
def test_maxvit_matches_timm(name, img, param_grads):
    """224: the real window/grid 7 (grid dilations 8, 4, 2, 1); 64: window/grid 2, same modules, CPU-cheap."""
    ref, ours = _pair(name, img_size=img)
    assert ours.window_size == ours.grid_size == (img // 32,) * 2
    _check_fwd_bwd(ref, ours, torch.randn(1, 3, img, img), param_grads=param_grads)


def test_maxvit_rectangular_and_larger_input():
    """Non-square img_size (window (2, 3)); a model built at 64 also runs 128 inputs like timm (grid dilation 2x)."""
    ref, ours = _pair(MAXVIT[0], img_size=(64, 96))
    assert ours.window_size == (2, 3)
    _check_fwd_bwd(ref, ours, torch.randn(1, 3, 64, 96))
    ref, ours = _pair(MAXVIT[0], img_size=64)
    with torch.no_grad():
        x = torch.randn(1, 3, 128, 128)
        assert _rel(ours(x), ref(x)) <= 1e-4


def test_maxvit_size_errors():
    with pytest.raises(ValueError, match=r"img_size \(100, 100\).*multiple of \(96, 96\)"):
        timm.create_model("vz_maxvit_tiny_224", img_size=100)  # window 3: 100 -> 50, 25, 13, 7, 4
    with pytest.raises(ValueError, match="img_size .* too small"):
        timm.create_model("vz_maxvit_tiny_224", img_size=16)
    model = timm.create_model("vz_maxvit_tiny_224", img_size=64).eval()
    with pytest.raises(ValueError, match=r"input size \(96, 96\).*multiple of \(64, 64\)"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="input size"):
        model.forward_intermediates(torch.randn(1, 3, 96, 64))
    with pytest.raises(ValueError, match="attn_backend"):
        timm.create_model("vz_maxvit_tiny_224", img_size=64, attn_backend="cuda")
    with pytest.raises(ValueError, match="attn_drop"):
        timm.create_model("vz_maxvit_tiny_224", img_size=64, transformer_attn_drop=0.1)


def test_maxvit_features_and_intermediates():
    ref = timm.create_model(MAXVIT[0], img_size=64, features_only=True).eval()
    ours = timm.create_model(VZ[MAXVIT[0]], img_size=64, features_only=True).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ours.feature_info.reduction() == ref.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert ours.feature_info.channels() == ref.feature_info.channels()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            assert a.shape == b.shape and _rel(a, b) <= 1e-4

    ref, ours = _pair(MAXVIT[0], img_size=64)
    with torch.no_grad():
        for kw in (dict(), dict(indices=2, norm=True), dict(indices=[0, 3], stop_early=True)):
            out_r, int_r = ref.forward_intermediates(x, **kw)
            out_o, int_o = ours.forward_intermediates(x, **kw)
            assert len(int_o) == len(int_r) and _rel(out_o, out_r) <= 1e-4
            assert all(_rel(a, b) <= 1e-4 for a, b in zip(int_o, int_r))
        only = ours.forward_intermediates(x, indices=[1], intermediates_only=True)
        assert len(only) == 1 and only[0].shape[-1] == 16
        assert ours.prune_intermediate_layers([1, 2]) == [1, 2]
        assert len(ours.stages) == 2 and ours.num_classes == 0
        assert ours.forward_intermediates(x, intermediates_only=True)[-1].shape == (1, 128, 8, 8)


def test_maxvit_contract_and_checkpoint_filter():
    ref, ours = _pair(MAXVIT[0], img_size=64)
    assert ours.pretrained_cfg["hf_hub_id"] == "timm/maxvit_tiny_tf_224.in1k"
    assert ours.no_weight_decay() == ref.no_weight_decay() and len(ours.no_weight_decay()) == 2 * sum((2, 2, 5, 2))
    assert ours.group_matcher() == ref.group_matcher()
    assert ours.get_classifier() is ours.head.fc
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = ours.forward_features(x)
        assert ours.forward_head(feats, pre_logits=True).shape == (1, 512)
        ours.reset_classifier(7)
        assert ours(x).shape == (1, 7) and ours.num_classes == 7
    # grad checkpointing: same values and gradients
    ours.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in ours.stages)
    ref.reset_classifier(7)
    ref.head.fc.load_state_dict(ours.head.fc.state_dict())
    _check_fwd_bwd(ref, ours, x)
    # timm's filter (reused) resizes the 224-model tables (13x13) to a 64-model's window 2 (3x3)
    sd = timm.create_model(MAXVIT[0]).state_dict()
    ours = timm.create_model(VZ[MAXVIT[0]], img_size=64)
    ours.load_state_dict(maxvit_filter({"state_dict": sd}, ours), strict=True)


def test_maxvit_bf16_autocast_channels_last():
    ref, ours = _pair(MAXVIT[0], img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y32 = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = ours.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert _rel(y.float(), y32) < 0.1


# ------------------------------------------------------------------------------------------------------------ DaViT

@pytest.mark.parametrize("name,hw,grads", [
    (DAVIT[0], (224, 224), False),  # window multiples at every stage, no padding (fp32 forward only: CPU time)
    (DAVIT[0], (100, 75), True),  # odd: stem pad; stage maps 25x19, 13x10, 7x5, 4x3 all window-padded, unmasked
    (DAVIT[1], (62, 45), True),
    (DAVIT[2], (33, 40), True),
])
def test_davit_matches_timm(name, hw, grads):
    ref, ours = _pair(name)
    _check_fwd_bwd(ref, ours, torch.randn(2, 3, *hw), param_grads=hw == (100, 75), grads=grads)


def test_davit_features_intermediates_contract():
    ref = timm.create_model(DAVIT[0], features_only=True).eval()
    ours = timm.create_model(VZ[DAVIT[0]], features_only=True).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ours.feature_info.reduction() == ref.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            assert a.shape == b.shape and _rel(a, b) <= 1e-4

    ref, ours = _pair(DAVIT[0])
    with torch.no_grad():
        for kw in (dict(), dict(indices=1, norm=True), dict(indices=[0, 2], stop_early=True)):
            out_r, int_r = ref.forward_intermediates(x, **kw)
            out_o, int_o = ours.forward_intermediates(x, **kw)
            assert len(int_o) == len(int_r) and _rel(out_o, out_r) <= 1e-4
            assert all(_rel(a, b) <= 1e-4 for a, b in zip(int_o, int_r))
        assert ours.group_matcher() == ref.group_matcher() and ours.group_matcher(True) == ref.group_matcher(True)
        assert ours.pretrained_cfg["hf_hub_id"] == "timm/davit_tiny.msft_in1k"
        assert ours.forward_head(ours.forward_features(x), pre_logits=True).shape == (1, 768)
        assert ours.get_classifier() is ours.head.fc
        assert ours.prune_intermediate_layers(2) == [2, 3] and ours.num_classes == 0
    ref, ours = _pair(DAVIT[0])
    ours.set_grad_checkpointing(True)
    ref.set_grad_checkpointing(True)
    _check_fwd_bwd(ref, ours, torch.randn(1, 3, 64, 48))
    with pytest.raises(ValueError, match="attn_backend"):
        timm.create_model("vz_davit_tiny", attn_backend="flash")


def _to_official(key: str) -> str:
    """timm/vitzoo key -> dingmyu/davit key, written from the official module tree (PatchEmbed list, main_blocks
    ModuleList of MySequential(spatial, channel), cpe ModuleList, final ``norms`` LayerNorm and ``head`` Linear)."""
    key = re.sub(r"^stem\.conv\.", "patch_embeds.0.proj.", key)
    key = re.sub(r"^stem\.norm\.", "patch_embeds.0.norm.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"patch_embeds.\1.proj.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"patch_embeds.\1.norm.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.", r"main_blocks.\1.", key)
    key = key.replace(".cpe1.", ".cpe.0.").replace(".cpe2.", ".cpe.1.")
    return key.replace("head.norm.", "norms.").replace("head.fc.", "head.")


def test_davit_official_checkpoint_layout():
    ref, ours = _pair(DAVIT[0])
    official = {_to_official(k): v for k, v in ref.state_dict().items()}
    assert "main_blocks.2.1.0.cpe.1.proj.weight" in official and "norms.weight" in official
    fresh = timm.create_model("vz_davit_tiny").eval()
    fresh.load_state_dict(davit_filter({"model": official}, fresh), strict=True)
    fresh2 = timm.create_model("vz_davit_tiny").eval()
    fresh2.load_state_dict(davit_filter(ref.state_dict(), fresh2), strict=True)  # timm layout passes through
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert _rel(fresh(x), ref(x)) <= 1e-4 and _rel(fresh2(x), ref(x)) <= 1e-4


def test_davit_bf16_autocast_channels_last():
    ref, ours = _pair(DAVIT[0])
    x = torch.randn(2, 3, 60, 52)
    with torch.no_grad():
        y32 = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = ours.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert _rel(y.float(), y32) < 0.1


# ------------------------------------------------------------------------- Triton path (interpreter, conftest.py)

@pytest.mark.parametrize("kernel,dilation,rpb", [
    ((2, 2), (1, 1), True), ((2, 3), (4, 2), True), ((4, 3), (1, 1), False)])  # MaxViT block / grid, DaViT window
def test_partition_attention_triton_matches_torch(kernel, dilation, rpb):
    """The Triton kernels on the strided q/k/v views of the qkv projection (with the TF table as rpb for MaxViT):
    outputs and gradients of the input, the qkv weight and the table equal the torch path's."""
    attn = PartitionAttention2d(64, 2, rel_pos_size=kernel if rpb else None, attn_backend="torch")
    wrt = [attn.qkv.weight]
    if rpb:
        with torch.no_grad():
            attn.rel_pos.relative_position_bias_table.normal_()
        wrt.append(attn.rel_pos.relative_position_bias_table)
    x = torch.randn(1, 8, 6, 64, requires_grad=True)
    wrt.append(x)
    results = []
    for backend in ("torch", "triton"):
        attn.attn_backend = backend
        y = attn(x, kernel, dilation)
        results.append([y] + list(torch.autograd.grad(y.square().sum(), wrt)))
    for a, b in zip(*results):
        assert _rel(b, a) <= 1e-5


def test_names_do_not_collide_with_timm():
    ours = timm.list_models("vz_maxvit*") + timm.list_models("vz_davit*")
    assert sorted(ours) == sorted(VZ.values())
    timm_models = set(timm.list_models())
    assert all(n in timm_models for n in VZ)


@pytest.mark.parametrize("name", ["vz_maxvit_tiny_224", "vz_davit_tiny"])
def test_builds_on_the_meta_device(name):
    """Detection and card tooling build models on the meta device (no memory): the drop-path schedule must not be
    computed on that device."""
    with torch.device("meta"):
        model = timm.create_model(name)
    assert next(model.parameters()).is_meta
