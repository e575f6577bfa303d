"""One switch for every kernel family's autotuning.

Autotuning compiles and times each config on the first call of every new shape (seconds per shape). It is off under
the CPU interpreter (timing there is meaningless) and when ``VITZOO_AUTOTUNE=0`` (correctness runs such as
``kernels/gpu_check.py``, which visit many shapes once); the launchers then use their first (heuristic) config.
Read at import time, because ``@triton.autotune`` lists are built when the kernel modules load.
"""
import os

__all__ = ["interpreting", "autotune_enabled", "mode_pruner"]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def autotune_enabled() -> bool:
    return not interpreting() and os.environ.get("VITZOO_AUTOTUNE", "1") not in ("0", "false", "False")


def mode_pruner(interpret_config, untuned=None):
    """``early_config_prune`` for kernels whose configs need no shape filtering: ``interpret_config`` (a small tile)
    under the interpreter, all configs when autotuning, else the untuned default: ``untuned(configs, named_args)``
    when given (a shape-dependent pick), the first config otherwise."""

    def prune(configs, named_args, **kwargs):
        if interpreting():
            return [interpret_config]
        if autotune_enabled():
            return configs
        return [untuned(configs, {**named_args, **kwargs})] if untuned is not None else configs[:1]

    return prune
