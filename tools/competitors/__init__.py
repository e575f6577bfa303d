"""Implementations vitzoo models are benchmarked against that are not timm models (official code, transcribed).

``tools/benchmark.py`` names them ``official:<vitzoo name>``; :data:`COMPETITORS` maps each name to its factory.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict

import torch.nn as nn

from .agent_official import CONFIGS as _AGENT_CONFIGS
from .agent_official import create_official_agent_model
from .biformer_official import CONFIGS as _BIFORMER_CONFIGS
from .biformer_official import create_official_biformer_model

PREFIX = "official:"
# benchmark name -> factory(**constructor kwargs)
COMPETITORS: Dict[str, Callable[..., nn.Module]] = {
    **{f"{PREFIX}{name}": functools.partial(create_official_agent_model, name) for name in _AGENT_CONFIGS},
    **{f"{PREFIX}{name}": functools.partial(create_official_biformer_model, name) for name in _BIFORMER_CONFIGS},
}


def is_competitor(name: str) -> bool:
    """Whether ``name`` is in the competitor namespace (known or not), as opposed to a timm model name."""
    return name.startswith(PREFIX)


def create_competitor(name: str, **kwargs: Any) -> nn.Module:
    if name not in COMPETITORS:
        raise KeyError(f"unknown competitor {name!r}; known: {', '.join(COMPETITORS)}")
    return COMPETITORS[name](**kwargs)
