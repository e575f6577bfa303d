"""Backend selection shared by every attention op.

Each public op takes ``backend="auto" | "torch" | "triton"``:

* ``"torch"``: the pure-torch reference (runs everywhere, float64 included);
* ``"triton"``: the Triton kernel; on CPU tensors it only runs under ``TRITON_INTERPRET=1`` (how CI tests kernels);
* ``"auto"``: Triton when the tensors live on a CUDA device and the op says the shape is supported, else torch.

The environment variable ``VITZOO_ATTN_BACKEND`` (same three values) overrides the ``backend`` argument of every
call, so a whole model can be pinned to one path without touching its code.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "VITZOO_ATTN_BACKEND"

__all__ = ["BACKENDS", "ENV_VAR", "resolve_backend", "triton_available", "interpreter_enabled", "needs_grad"]


def interpreter_enabled() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton is a Linux-only dependency
        return False
    return True


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd would record through any of ``tensors`` (None entries allowed): what inference-only kernels
    must refuse."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check_name(value: str, where: str) -> str:
    if value not in BACKENDS:
        raise ValueError(f"{where} must be one of {BACKENDS}, got {value!r}")
    return value


def resolve_backend(
    backend: str,
    *tensors: torch.Tensor,
    op: str,
    unsupported_reason: Optional[Callable[[], Optional[str]]] = None,
) -> str:
    """Return ``"torch"`` or ``"triton"`` for one call of op ``op``.

    ``unsupported_reason`` returns ``None`` when the Triton kernel handles the call, else a sentence saying why not
    (dtype, head_dim, ...). ``"auto"`` falls back to torch on such a call; an explicit ``"triton"`` raises a
    ``ValueError`` with that sentence, so a forced backend never silently runs something else.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        backend = _check_name(env, f"environment variable {ENV_VAR}")
    else:
        backend = _check_name(backend, f"{op}(backend=...)")
    if backend == "torch":
        return "torch"

    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    runnable = triton_available() and (on_cuda or interpreter_enabled())
    if backend == "auto":
        if not (runnable and on_cuda):
            return "torch"
        if unsupported_reason is not None and unsupported_reason() is not None:
            return "torch"
        return "triton"

    # backend == "triton"
    if not triton_available():
        raise ValueError(f"{op}: backend='triton' requested but triton is not installed")
    if not runnable:
        raise ValueError(
            f"{op}: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); "
            f"got tensors on {tensors[0].device}"
        )
    if unsupported_reason is not None:
        reason = unsupported_reason()
        if reason is not None:
            raise ValueError(f"{op}: backend='triton' cannot run this call: {reason}")
    return "triton"
