"""Training configuration: a nested dict of defaults, overlaid by a YAML file and ``--set a.b=value`` overrides.

Every key that is not in the defaults is an error naming the key and the accepted keys at that level, so a typo in a
config never silently trains with a default. ``model.kwargs`` is free-form (passed to ``timm.create_model``).
"""
from __future__ import annotations

import copy
import re
from typing import Any, Dict, Iterable, Optional

import yaml

__all__ = ["DEFAULTS", "load_config", "config_from_dict", "apply_overrides", "check_values", "ConfigError"]

FREE_FORM = {("model", "kwargs")}

DEFAULTS: Dict[str, Any] = {
    "model": {
        "name": "nat_mini",  # any timm or vitzoo model name
        "kwargs": {},  # extra timm.create_model kwargs (free-form)
        "pretrained_file": None,  # local checkpoint loaded through the model's checkpoint filter
        "attn_backend": None,  # "auto" | "torch" | "triton": sets VITZOO_ATTN_BACKEND for the run
    },
    "data": {
        "dataset": "digits",  # "digits" (embedded, ships with scikit-learn) | "imagefolder"
        "root": None,  # imagefolder root with train/ and val/
        "img_size": 32,
        "in_chans": 1,
        "batch_size": 64,
        "val_batch_size": 256,
        "workers": 0,
        "val_fraction": 0.2,  # digits only: held-out share, stratified, fixed split
        "augment": True,
        # imagefolder only (timm transforms; None = the model's pretrained_cfg value)
        "auto_augment": None,  # e.g. "rand-m9-mstd0.5-inc1" (RandAugment), None = off
        "color_jitter": 0.4,  # 0 = off
        "reprob": 0.0,  # random-erasing probability
        "interpolation": None,  # eval (and default train) resize interpolation, e.g. "bicubic"
        "train_interpolation": None,  # train only, e.g. "random" (timm: bilinear or bicubic per image)
        "crop_pct": None,  # eval center-crop fraction
        "aug_repeats": 0,  # repeated augmentation (DeiT RASampler): each image N times per epoch, 0 = off
    },
    "optim": {
        "name": "adamw",  # any timm.optim.create_optimizer_v2 name
        "lr": 1e-3,
        "weight_decay": 0.05,
        "momentum": 0.9,
        "clip_grad": None,
        "clip_mode": "norm",  # "norm" | "value" | "agc" (timm.utils.dispatch_clip_grad)
    },
    "sched": {
        "name": "cosine",  # any timm.scheduler.create_scheduler_v2 name
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "min_lr": 1e-5,
        "cooldown_epochs": 0,  # epochs at min_lr after the schedule (timm); they add to train.epochs
    },
    "train": {
        "epochs": 10,
        "amp": "none",  # "none" | "bf16" | "fp16"
        "channels_last": False,
        "grad_accum": 1,
        "grad_checkpointing": False,
        "ema_decay": 0.0,  # 0 disables EMA
        "compile": False,
        "cuda_graph": False,  # capture the whole step (fwd, loss, bwd, clip, optimizer) once, replay it (CUDA only)
        "seed": 0,
        "deterministic": False,
        "loss": "ce",  # "ce" (cross-entropy; soft-target CE under mixup) | "bce" (timm BinaryCrossEntropy)
        "bce_target_thresh": None,  # bce only: binarize (mixed) targets above this value
        "label_smoothing": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "drop_path": None,  # passed as drop_path_rate when set
        "max_steps_per_epoch": None,  # cap for smoke tests
    },
    "output": {
        "dir": "runs/quickstart",
        "checkpoint_every_steps": 0,  # 0: only at epoch ends
        "progress": True,
    },
}


class ConfigError(ValueError):
    """A config key or value that vitzoo does not accept."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads YAML 1.2 floats: PyYAML (YAML 1.1) would load ``lr: 1e-3`` as the string '1e-3'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:  # one line: "<where>: invalid YAML (line L, column C): <problem>"
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML{at}: {problem}") from None


def _merge(base: Dict[str, Any], update: Dict[str, Any], path: tuple) -> None:
    for key, value in update.items():
        where = ".".join(path + (key,))
        if path in FREE_FORM:
            base[key] = value
            continue
        if key not in base:
            accepted = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key '{where}'; accepted keys here: {accepted}")
        if isinstance(base[key], dict) and (path + (key,)) not in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
            _merge(base[key], value, path + (key,))
        elif (path + (key,)) in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
            base[key] = dict(value)
        else:
            base[key] = value


def apply_overrides(cfg: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML: numbers, bools, null, lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        nested: Dict[str, Any] = _yaml(raw, f"--set {item}") if raw.strip() else None
        for key in reversed(keys):
            nested = {key: nested}
        _merge(cfg, nested, ())
    return cfg


# keys whose value must be one of a fixed set (checked after the file and every --set are applied)
CHOICES = {
    ("data", "dataset"): ("digits", "imagefolder"),
    ("optim", "clip_mode"): ("norm", "value", "agc"),
    ("train", "amp"): ("none", "bf16", "fp16"),
    ("train", "cuda_graph"): (False, True),
    ("train", "loss"): ("ce", "bce"),
}


def check_values(cfg: Dict[str, Any]) -> Dict[str, Any]:
    for (section, key), allowed in CHOICES.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"config key '{section}.{key}' must be one of {', '.join(map(str, allowed))}; "
                              f"got {cfg[section][key]!r}")
    if not isinstance(cfg["model"]["name"], str) or not cfg["model"]["name"]:
        raise ConfigError(f"config key 'model.name' must be a model name, got {cfg['model']['name']!r}")
    return cfg


def config_from_dict(data: Dict[str, Any], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """A config from a nested dict (e.g. the ``config`` stored in a training checkpoint): keys it lacks take the
    defaults, unknown keys are errors, ``--set`` overrides apply on top."""
    cfg = copy.deepcopy(DEFAULTS)
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    _merge(cfg, copy.deepcopy(data), ())
    return check_values(apply_overrides(cfg, overrides))


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    cfg = copy.deepcopy(DEFAULTS)
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
        _merge(cfg, data, ())
    return check_values(apply_overrides(cfg, overrides))
