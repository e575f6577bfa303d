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
    """Every kernel / jit helper of a module, as the wrapper holding the Python function (``.fn``): a JITFunction on
    GPUs, an InterpretedFunction under TRITON_INTERPRET=1 (how CI imports them), under any autotune / heuristics."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.interpreter import InterpretedFunction

    for value in vars(module).values():
        fn = value
        while isinstance(fn, (Autotuner, Heuristics)):
            fn = fn.fn
        if isinstance(fn, (triton.runtime.jit.JITFunction, InterpretedFunction)):
            yield fn


def test_jit_functions_are_found():
    """The checks below see the kernels whether or not the interpreter is on (they once saw none under it)."""
    found = [fn.fn.__name__ for fn in _jit_functions(importlib.import_module("vitzoo.kernels.neighborhood_bwd_dq"))]
    assert "_neighborhood_bwd_dq_kernel" in found


@pytest.mark.parametrize("name", MODULES)
def test_jit_functions_only_read_constexpr_globals(name):
    """triton 3.6 raises "Cannot access global variable X from within @jit'ed function" for plain Python numbers and
    strings (the interpreter reads them)."""
    module = importlib.import_module(f"vitzoo.kernels.{name}")
    for fn in _jit_functions(module):
        for global_name in fn.fn.__code__.co_names:
            value = fn.fn.__globals__.get(global_name)
            if isinstance(value, (bool, int, float, str)) and not isinstance(value, tl.constexpr):
                raise AssertionError(f"{name}.{fn.fn.__name__} reads the plain global {global_name} = {value!r}; "
                                     f"declare it as tl.constexpr({value!r})")


def test_kernels_lower_for_gpu():
    """The GPU compiler's front end accepts every neighborhood kernel for every autotune config and geometry class
    (sliding, windows, dilation, dense bias, thin windows, padded value dims; bf16 / fp16 / fp32) and every routed
    kernel (packed, big and padded regions; int32 / int64 index): lowered to Triton IR for sm_90 on the CPU, through
    the real launchers, in a process without the interpreter (which accepts code GPUs reject). See
    tests/_lower_kernels.py."""
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lower_kernels.py")
    done = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("lowered") >= 5 * 4 * 3  # five geometries without a dense bias x four configs x three
    for kernel in ("_routed_fwd_kernel", "_routed_bwd_dq_kernel", "_routed_bwd_dkdv_kernel",
                   "_routed_inverse_index_kernel", "_layer_norm_fwd_kernel", "_layer_norm_bwd_kernel",
                   "_cascaded_attention_fwd_kernel"):
        assert f"lowered {kernel}" in done.stdout, kernel
