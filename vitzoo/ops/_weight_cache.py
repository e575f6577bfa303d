"""Cache of tensors derived from fixed weights (the neighborhood forward's dense logit block built from an rpb / a
dense bias, a convolution with its BatchNorm folded in).

In inference every call of an attention layer rebuilds the same derived tensor from the same weights: for the
neighborhood op a pad and a gather, three launches and about 0.1 ms of host time per call, which is most of a small
model's step on a host-bound GPU. This cache keeps the derived tensor until any weight it came from changes.

Validity rests on three checks, all cheap:
- the weights' version counters. Every in-place torch op, ``load_state_dict`` and the foreach / for-loop optimizer
  steps bump them. Some writers do not: torch's fused optimizers (``fused=True``), BatchNorm's running statistics in a
  training forward, CUDA graph replays, writes through ``.data``. So this module registers a global optimizer
  step post-hook that bumps the versions of every parameter an optimizer holds, :func:`vitzoo.models._conv_bn.conv_bn`
  keys on ``num_batches_tracked`` too (a training forward bumps it), and ``vitzoo.cuda_graph`` bumps after replays;
  writes through ``.data`` stay invisible (as they are to autograd);
- the identity of every weight's base tensor, held by weak reference, so a new tensor at a recycled address never
  hits an old entry; entries are dropped when the first weight's base tensor is freed;
- each weight's view geometry (offset, shape, strides, dtype), so per-head slices of one tensor get their own entries.

Nothing is cached while autograd records through a weight (training), under ``torch.compile`` tracing, while a CUDA
graph is being captured (the graph would keep reading the tensor cached at capture time after the weights change), or
for inference-mode tensors (they have no version counter). Nothing is stored on the tensors themselves, so models stay
picklable.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, ContextManager, Dict, Hashable, Optional, Sequence, Tuple

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._switch import Switch

__all__ = ["cached_from_weights", "cached_or_built", "clear_weight_cache", "weight_cache_enabled"]

_Entry = Tuple[tuple, Tuple[weakref.ref, ...], Any]
_CACHE: Dict[int, Dict[Hashable, _Entry]] = {}  # id(first weight's base) -> {key: (versions, base refs, value)}
_SWITCH = Switch(True)


def _base(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


def _cacheable(weights: Sequence[torch.Tensor]) -> bool:
    if not _SWITCH.enabled or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing():
        return False
    grad = torch.is_grad_enabled()
    return not any(t.is_inference() or (grad and t.requires_grad) for t in weights)


def _forget(owner_id: int) -> None:
    _CACHE.pop(owner_id, None)


def cached_from_weights(weights: Sequence[Optional[torch.Tensor]], key: Hashable,
                        build: Callable[[], Any]) -> Optional[Any]:
    """``build()``, cached while ``weights`` (None entries allowed, at least one tensor) are unchanged; None when
    these weights may not be cached (see the module docstring): the caller builds its own then. ``key`` names what
    is built and every non-tensor argument it depends on (kernel size, geometry, ...). The result is shared: the
    caller must not modify it, nor return it from a custom op."""
    present = [t for t in weights if t is not None]
    if not present or not _cacheable(present):
        return None
    bases = [_base(t) for t in present]
    owner = bases[0]
    full_key = (key, tuple(t is None for t in weights),
                tuple((t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device) for t in present))
    versions = tuple(t._version for t in present)
    entries = _CACHE.get(id(owner))
    if entries is not None:
        hit = entries.get(full_key)
        if hit is not None and hit[0] == versions and all(ref() is b for ref, b in zip(hit[1], bases)):
            return hit[2]
    # Normal tensors even under inference mode, without autograd history: a cached value can then key another
    # cache built from it (a model's folded weights -> an op's kernel layout of them), which needs version counters.
    with torch.inference_mode(False), torch.no_grad():
        value = build()
    if entries is None:
        entries = _CACHE[id(owner)] = {}
        weakref.finalize(owner, _forget, id(owner))
    entries[full_key] = (versions, tuple(weakref.ref(b) for b in bases), value)
    return value


def cached_or_built(weights: Sequence[Optional[torch.Tensor]], key: Hashable, build: Callable[[], Any]) -> Any:
    """:func:`cached_from_weights`, or ``build()`` afresh where nothing may be cached (a CUDA graph capture,
    inference-mode weights, the cache switched off): the same value either way."""
    value = cached_from_weights(weights, key, build)
    return value if value is not None else build()


def _bump_optimizer_params(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Optimizer step post-hook: the step wrote every parameter it holds in place, maybe without bumping versions
    (fused kernels), so bump them here (one C++ call per param group). Not while dynamo traces a compiled step:
    the cache is never used under compilation anyway."""
    if torch.compiler.is_compiling():
        return
    for group in optimizer.param_groups:
        torch.autograd.graph.increment_version([p for p in group["params"] if not p.is_inference()])


_OPTIMIZER_HOOK = register_optimizer_step_post_hook(_bump_optimizer_params)


def weight_cache_enabled(enabled: bool) -> ContextManager[None]:
    """Switch the cache on or off inside the block (off: every call builds its own derived tensor, as under
    training; e.g. to compare cached and uncached results)."""
    return _SWITCH.set(enabled)


def clear_weight_cache() -> None:
    """Drop every cached tensor (frees their memory; the next calls rebuild them)."""
    _CACHE.clear()
