"""The one mechanism behind the zoo's drop-in timm modules: a subclass that only overrides ``forward`` takes the place
of timm's class on an existing instance (``m.__class__ = ...``). The subclass adds no parameters or buffers, so the
instance keeps its weights, hooks and flags and the state dict is unchanged."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch.nn as nn

__all__ = ["swap_classes"]


def swap_classes(module: nn.Module, pick: Callable[[nn.Module], Optional[type]], **attributes: Any) -> nn.Module:
    """Give every submodule of ``module`` (itself included) the class ``pick(m)`` names (None: left alone), then set
    ``attributes`` on it (class-level defaults of the subclass, per instance). Returns ``module``."""
    for m in module.modules():
        cls = pick(m)
        if cls is not None:
            m.__class__ = cls
            for name, value in attributes.items():
                setattr(m, name, value)
    return module
