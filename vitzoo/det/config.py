"""Detection training configuration (``tools/train_det.py``): the schema and defaults, loaded with vitzoo.config's
machinery (YAML 1.2 floats, unknown keys -> :class:`vitzoo.config.ConfigError` naming the key, ``--set a.b=value``).

vitzoo.config's loader is written for the classification schema (module-level DEFAULTS / FREE_FORM / check_values),
so this module re-uses its YAML reader and merge function directly; if ``load_config`` grows ``defaults`` /
``free_form`` / ``check`` parameters, :func:`load_det_config` becomes a one-line call to it.

``model.kwargs`` is free-form (``timm.create_model`` kwargs of the backbone, as in the classification config). Every
other key is checked; see the comments below for what each does.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, Optional

from vitzoo.config import ConfigError, _merge, _yaml, apply_overrides  # noqa: F401  (ConfigError re-exported)

__all__ = ["DET_DEFAULTS", "load_det_config", "ConfigError"]

DET_DEFAULTS: Dict[str, Any] = {
    "model": {
        "arch": "fasterrcnn",  # "retinanet" | "fasterrcnn" | "maskrcnn" (torchvision's, with an FPN)
        "backbone": "nat_mini",  # any vitzoo (or timm features_only-capable) model name
        "kwargs": {},  # backbone timm.create_model kwargs (free-form)
        "checkpoint": None,  # classification checkpoint for the backbone (head dropped by the adapter)
        "out_indices": None,  # backbone levels fed to the FPN; None: all (R-CNN), all but stride 4 (RetinaNet)
        "frozen_stages": -1,
        "norm_eval": False,
        "out_norm": True,
        "drop_path": None,  # backbone drop_path_rate when set
        "attn_backend": None,  # "auto" | "torch" | "triton": sets VITZOO_ATTN_BACKEND for the run
        "fpn_channels": 256,
        "anchor_sizes": None,  # one list per FPN level; None: 8*stride (R-CNN), 4*stride*2^(i/3) (RetinaNet)
        "aspect_ratios": [0.5, 1.0, 2.0],
        "min_size": 800,  # shorter image side after torchvision's resize (a list: one at random while training)
        "max_size": 1333,
        "representation_size": 1024,  # R-CNN box head FC width
        "mask_head_dim": 256,  # Mask R-CNN mask head conv width
        "head_norm": None,  # RetinaNet head: "gn" (GroupNorm, torchvision's v2 head) or None
        "score_thresh": 0.05,  # detections kept for evaluation
        "nms_thresh": 0.5,
        "detections_per_img": 100,
        "rpn_batch_size_per_image": 256,  # R-CNN sampling
        "box_batch_size_per_image": 512,
    },
    "data": {
        "dataset": "coins",  # "coins" (built at run time from skimage.data.coins()) | "coco"
        "root": "runs/data/coins",  # coins: where the set is built (reused when already there)
        "coins_train_images": 32,  # coins: number of train crops
        "train_ann": None,  # coco: annotation JSON + image folder of each split
        "train_images": None,
        "val_ann": None,
        "val_images": None,
        "batch_size": 2,  # images per step and process
        "val_batch_size": 4,
        "workers": 0,  # DataLoader worker processes (0: load in the training process)
        "hflip": 0.5,  # training horizontal-flip probability
        "skip_empty": False,  # drop training images without (non-crowd) boxes; default: keep them as negatives
        "verify_images": True,  # open every image header at load time (size check, truncation)
        "min_box_size": 1.0,  # boxes narrower/shorter than this after clipping are skipped (counted warning)
    },
    "optim": {
        "name": "adamw",  # any timm.optim.create_optimizer_v2 name
        "lr": 1e-4,
        "weight_decay": 0.05,
        "momentum": 0.9,
        "clip_grad": None,
    },
    "sched": {
        "name": "cosine",  # any timm.scheduler.create_scheduler_v2 name
        "warmup_epochs": 1,
        "warmup_lr": 1e-6,
        "min_lr": 1e-6,
        "decay_milestones": [8, 11],  # "multistep": epochs where the lr is multiplied by decay_rate (the 1x recipe)
        "decay_rate": 0.1,
    },
    "train": {
        "epochs": 12,
        "amp": "none",  # "none" | "bf16" | "fp16"
        "seed": 0,
        "deterministic": False,
        "max_steps_per_epoch": None,  # cap for smoke tests
        "eval_every": 1,  # evaluate every N epochs (and always after the last one)
        "find_unused_parameters": False,  # DDP: set when frozen / unused branches exist
    },
    "output": {
        "dir": "runs/det",
        "checkpoint_every_steps": 0,  # 0: only at epoch ends
        "progress": True,
    },
}


def load_det_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """DET_DEFAULTS, overlaid by the YAML file at ``path`` and ``key=value`` overrides; unknown keys are errors."""
    cfg = copy.deepcopy(DET_DEFAULTS)
    if path is not None:
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        data = _yaml(text, path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        # vitzoo.config's merge: its free-form set is {model.kwargs}, which is also this schema's only free-form key
        _merge(cfg, data, ())
    cfg = apply_overrides(cfg, overrides)
    _check(cfg)
    return cfg


def _check(cfg: Dict[str, Any]) -> None:
    """Value checks that would otherwise fail deep inside torchvision or half-way through a run."""
    from vitzoo.det.torchvision_det import ARCHS

    m, d = cfg["model"], cfg["data"]
    if m["arch"] not in ARCHS:
        raise ConfigError(f"model.arch must be one of {', '.join(ARCHS)}; got {m['arch']!r}")
    if d["dataset"] not in ("coins", "coco"):
        raise ConfigError(f"data.dataset must be 'coins' or 'coco', got {d['dataset']!r}")
    if d["dataset"] == "coco":
        missing = [k for k in ("train_ann", "train_images", "val_ann", "val_images") if not d[k]]
        if missing:
            raise ConfigError(f"data.dataset=coco needs {', '.join('data.' + k for k in missing)}")
    if cfg["train"]["amp"] not in ("none", "bf16", "fp16"):
        raise ConfigError(f"train.amp must be 'none', 'bf16' or 'fp16', got {cfg['train']['amp']!r}")
    for key in ("batch_size", "val_batch_size"):
        if not isinstance(d[key], int) or d[key] < 1:
            raise ConfigError(f"data.{key} must be a positive int, got {d[key]!r}")
