"""Training configuration: a nested dict of defaults, overlaid by a YAML file and ``--set a.b=value`` overrides.

Every key that is not in the defaults is an error naming the key and the accepted keys at that level, so a typo in a
config never silently trains with a default. ``model.kwargs`` is free-form (passed to ``timm.create_model``).
"""
from __future__ import annotations

import copy
import re
from typing import Any, Dict, Iterable, Optional

import yaml

__all__ = ["DEFAULTS", "load_config", "apply_overrides", "ConfigError"]

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
    },
    "optim": {
        "name": "adamw",  # any timm.optim.create_optimizer_v2 name
        "lr": 1e-3,
        "weight_decay": 0.05,
        "momentum": 0.9,
        "clip_grad": None,
    },
    "sched": {
        "name": "cosine",  # any timm.scheduler.create_scheduler_v2 name
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "min_lr": 1e-5,
    },
    "train": {
        "epochs": 10,
        "amp": "none",  # "none" | "bf16" | "fp16"
        "channels_last": False,
        "grad_accum": 1,
        "grad_checkpointing": False,
        "ema_decay": 0.0,  # 0 disables EMA
        "compile": False,
        "seed": 0,
        "deterministic": False,
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


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads YAML 1.2 floats: PyYAML (YAML 1.1) would load ``lr: 1e-3`` as the string '1e-3'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A config key or value that vitzoo does not accept."""


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
        nested: Dict[str, Any] = _yaml(raw) if raw.strip() else None
        for key in reversed(keys):
            nested = {key: nested}
        _merge(cfg, nested, ())
    return cfg


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        with open(path) as f:
            data = _yaml(f.read()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _merge(cfg, data, ())
    return apply_overrides(cfg, overrides)
