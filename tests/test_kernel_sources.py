"""Static checks of every Triton kernel, for what the CPU interpreter and triton 3.8 accept but a real GPU with the
GPU machine's triton 3.6 rejects."""
import importlib
import os
import pkgutil

import pytest
import triton
import triton.language as tl

KERNELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
MODULES = sorted(m.name for m in pkgutil.iter_modules([KERNELS_DIR])
                 if not m.name.startswith(("bench", "gpu_check", "_bench", "_driver")))


def _jit_functions(module):
    for value in vars(module).values():
        fn = value
        while hasattr(fn, "fn") and not isinstance(fn, triton.runtime.jit.JITFunction):
            fn = fn.fn  # unwrap Autotuner / Heuristics
        if isinstance(fn, triton.runtime.jit.JITFunction):
            yield fn


@pytest.mark.parametrize("name", MODULES)
def test_jit_functions_only_read_constexpr_globals(name):
    """triton 3.6 raises 'Cannot access global variable X from within @jit'ed function' for plain Python numbers."""
    module = importlib.import_module(f"vitzoo.kernels.{name}")
    for fn in _jit_functions(module):
        for global_name in fn.fn.__code__.co_names:
            value = fn.fn.__globals__.get(global_name)
            if isinstance(value, (bool, int, float)) and not isinstance(value, tl.constexpr):
                raise AssertionError(f"{name}.{fn.fn.__name__} reads the plain global {global_name} = {value!r}; "
                                     f"declare it as tl.constexpr({value!r})")
