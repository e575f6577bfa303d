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


def mode_pruner(interpret_config):
    """``early_config_prune`` for kernels whose configs need no shape filtering: ``interpret_config`` (a small tile)
    under the interpreter, the first config (the untuned default) with autotuning off, all of them otherwise."""

    def prune(configs, named_args, **kwargs):
        if interpreting():
            return [interpret_config]
        return configs if autotune_enabled() else configs[:1]

    return prune
