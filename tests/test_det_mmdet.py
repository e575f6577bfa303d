"""The mmdet 3 plugin (vitzoo.det.mmdet) and configs/det/mmdet on CPU with mmcv-lite (no compiled mmcv ops).

``import mmdet.models`` needs ``mmcv._ext`` (its package ``__init__`` imports every detector and head, and those import
``mmcv.ops``), so CI cannot build whole detectors. What it does build, through the real registry: the backbone
(``custom_imports`` of each config) and the neck. mmdet's ``FPN`` module (``mmdet/models/necks/fpn.py``, which needs
only ``mmcv.cnn`` and mmengine) is imported on its own: ``mmdet.models`` and ``mmdet.models.necks`` are put in
``sys.modules`` as bare packages pointing at their real directories (their ``__init__`` files are not run), so
``import mmdet.models.necks.fpn`` executes just that file, which registers ``FPN`` in ``mmdet.registry.MODELS``. The
registry's lazy ``import_module('mmdet.models')`` then finds the bare package instead of failing. The stand-ins are
removed again after the module's tests. With a full mmcv (``mmcv._ext`` present) the real ``mmdet.models`` is used.
"""
import glob
import importlib
import importlib.util
import math
import os
import pickle
import subprocess
import sys
import types

import pytest
import timm
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "det", "mmdet", "*.py")))
PKG_STANDINS = ("mmdet.models", "mmdet.models.necks")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small ops: a second intra-op thread gains little here, while on a busy 2-core machine (other jobs) the
    threads' spin-waiting made these tests several times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registry():
    """mmdet's MODELS with VitzooBackbone, EfficientViTFPN and mmdet's FPN registered, without mmcv._ext."""
    import mmdet

    import vitzoo.det.mmdet  # noqa: F401

    from mmdet.registry import MODELS

    if importlib.util.find_spec("mmcv._ext") is not None:  # full mmcv: the real package imports
        importlib.import_module("mmdet.models")
        yield MODELS
        return
    root = os.path.dirname(mmdet.__file__)
    added = []
    for name in PKG_STANDINS:
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [os.path.join(root, *name.split(".")[1:])]
            sys.modules[name] = pkg
            added.append(name)
    importlib.import_module("mmdet.models.necks.fpn")
    yield MODELS
    for name in added + ["mmdet.models.necks.fpn"]:
        sys.modules.pop(name, None)


def test_plugin_import_needs_no_compiled_ops():
    code = ("import sys, vitzoo.det.mmdet\n"
            "from mmdet.registry import MODELS\n"
            "assert {'VitzooBackbone', 'EfficientViTFPN'} <= set(MODELS.module_dict), MODELS.module_dict.keys()\n"
            "bad = [m for m in sys.modules if m.startswith(('mmcv.ops', 'mmcv._ext', 'mmdet.models'))]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_configs_exist_for_every_family():
    names = {os.path.basename(p) for p in CONFIGS}
    for model in ("biformer_s", "nat_tiny", "dinat_tiny", "vz_maxvit_tiny_224", "vz_davit_tiny", "vz_efficientvit_m4",
                  "vz_halonet26t", "agent_swin_t", "agent_pvt_s"):
        assert {f"retinanet_{model}_fpn_1x_coco.py", f"mask-rcnn_{model}_fpn_1x_coco.py"} <= names, model


def _config(path):
    from mmengine import Config

    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=["vitzoo.det.mmdet"], allow_failed_imports=False)
    with open(path) as f:
        assert f.readline().startswith("# "), "each config opens with a comment citing its source"
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p)[:-3] for p in CONFIGS])
def test_config_backbone_and_neck_build_and_run(path, registry):
    """Each config loads; its backbone (through custom_imports) and neck build through mmdet's registry and run at a
    COCO-like size scaled down for CPU; the neck's levels are the strides the config's anchor generator expects; the
    optimizer settings build against those parameters."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.utils import import_modules_from_strings

    cfg = _config(path)
    import_modules_from_strings(**cfg.custom_imports)
    bb_cfg = cfg.model.backbone.copy()
    assert bb_cfg.type == "VitzooBackbone"
    import vitzoo  # noqa: F401

    assert bb_cfg.model_name in timm.list_models(bb_cfg.model_name), f"{bb_cfg.model_name} is not registered"
    assert bb_cfg.pop("init_cfg")["type"] == "Pretrained"  # not downloaded here (see test_init_cfg_pretrained_*)
    torch.manual_seed(0)
    backbone = registry.build(bb_cfg).eval()
    neck = registry.build(cfg.model.neck).eval()
    assert list(cfg.model.neck.in_channels) == backbone.out_channels

    # a COCO-shaped image (800 x 1216 after the 1333 x 800 resize) scaled by 1/4 for the CPU, padded to the config's
    # pad_size_divisor as DetDataPreprocessor does before the backbone
    pad = cfg.model.data_preprocessor.pad_size_divisor
    h, w = math.ceil(200 / pad) * pad, math.ceil(304 / pad) * pad
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, h, w))
        outs = neck(feats)
    for f, s, ch in zip(feats, backbone.strides, backbone.out_channels):
        assert f.shape == (1, ch, math.ceil(h / s), math.ceil(w / s)) and torch.isfinite(f).all()
    head = cfg.model.get("bbox_head") or cfg.model.rpn_head
    strides = head.anchor_generator.strides
    assert [tuple(o.shape[-2:]) for o in outs] == [(math.ceil(h / s), math.ceil(w / s)) for s in strides]
    assert all(o.shape[:2] == (1, 256) and torch.isfinite(o).all() for o in outs)

    # mmengine's builder, not mmdet's scope (mmdet's OPTIM_WRAPPERS lazily imports mmdet.engine -> mmcv.ops); the
    # classes are mmengine's / torch's either way
    optim_cfg = cfg.optim_wrapper.copy()
    optim_cfg.pop("_scope_", None)
    optim = build_optim_wrapper(torch.nn.ModuleDict(dict(backbone=backbone, neck=neck)), optim_cfg)
    assert type(optim.optimizer).__name__ == "AdamW"


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


NARROW = dict(model_name="nat_mini", model_kwargs=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)))


def test_init_cfg_pretrained_plain_dict_with_non_tensor_entries(tmp_path, registry):
    cls = timm.create_model("nat_mini", num_classes=5, **NARROW["model_kwargs"])
    path = _save(tmp_path, "cls.pth", {"model": cls.state_dict(), "epoch": 3, "arch": "nat_mini",
                                       "args": {"lr": 0.1, "tags": ["a", "b"], "betas": (0.9, 0.999)}})
    backbone = registry.build(dict(type="VitzooBackbone", **NARROW, init_cfg=dict(type="Pretrained",
                                                                                  checkpoint=path)))
    assert not backbone.is_init
    backbone.init_weights()
    assert backbone.is_init
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, cls.state_dict()[k]), k
    rep = backbone.last_load_report
    assert rep.missing == [] and rep.unexpected == [] and "head.weight" in rep.dropped


def test_init_cfg_pretrained_runner_checkpoint(tmp_path, registry):
    """An mmengine runner-style checkpoint (meta with a ConfigDict, message_hub with a HistoryBuffer) of a detector:
    torch >= 2.6's weights_only unpickler refuses it (mmengine 0.10.7's load_checkpoint fails the same way); the
    adapter loads it (trusted fallback) and takes the keys under prefix 'backbone.'."""
    from mmengine.config import ConfigDict
    from mmengine.logging import HistoryBuffer

    src = registry.build(dict(type="VitzooBackbone", **NARROW))
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(-1, 1)
    sd = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    sd["neck.fpn_convs.0.conv.weight"] = torch.ones(2, 2, 3, 3)
    path = _save(tmp_path, "epoch_12.pth", {
        "meta": {"epoch": 12, "cfg": ConfigDict(model=dict(type="RetinaNet"))},
        "state_dict": sd,
        "message_hub": {"log_scalars": {"loss": HistoryBuffer([1.0, 0.5], [1, 1])}},
    })
    with pytest.raises(pickle.UnpicklingError):  # what mmengine's own Pretrained init would run into on this torch
        torch.load(path, weights_only=True)
    backbone = registry.build(dict(type="VitzooBackbone", **NARROW, init_cfg=dict(
        type="Pretrained", checkpoint=path, prefix="backbone.")))
    backbone.init_weights()
    for (k, v), (k2, v2) in zip(backbone.state_dict().items(), src.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert backbone.last_load_report.unexpected == []


def test_no_init_cfg_keeps_the_model_init(registry):
    backbone = registry.build(dict(type="VitzooBackbone", **NARROW))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.init_weights()
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())


def test_efficientvit_fpn_levels(registry):
    """EfficientViTFPN (official downstream neck): strides 16/32/64 in; RetinaNet form gives 8..128, Mask R-CNN
    form 4..64, finest first."""
    feats = [torch.randn(1, c, 256 // s, 384 // s) for c, s in ((8, 16), (12, 32), (16, 64))]
    retina = registry.build(dict(type="EfficientViTFPN", in_channels=[8, 12, 16], out_channels=4, num_outs=5,
                                 add_extra_convs="on_input", num_extra_trans_convs=1))
    mask = registry.build(dict(type="EfficientViTFPN", in_channels=[8, 12, 16], out_channels=4, num_outs=5,
                               num_extra_trans_convs=2))
    retina.init_weights()
    assert [tuple(o.shape[-2:]) for o in retina(feats)] == [(256 // s, 384 // s) for s in (8, 16, 32, 64, 128)]
    assert [tuple(o.shape[-2:]) for o in mask(feats)] == [(256 // s, 384 // s) for s in (4, 8, 16, 32, 64)]
    assert type(retina.extra_trans_convs[0].conv).__name__ == "ConvTranspose2d"
