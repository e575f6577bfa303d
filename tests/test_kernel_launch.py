"""kernels/_launch.py: the cached launch path every kernel launcher uses on the GPU.

CI has no GPU, so these tests drive the cache logic with a real ``@triton.jit`` / ``@triton.autotune`` kernel whose
``run`` is replaced by a recorder that returns a stand-in CompiledKernel (the GPU path itself is exercised by every
launch in ``kernels/gpu_check.py`` and the benches). What must hold: a repeated call replays the compiled kernel with
the positional args followed by the constexprs in signature order; anything Triton specializes on (dtype, pointer
alignment, scalar values, constexprs) gives a new entry; the grid always comes from the current call.
"""
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from vitzoo.kernels import _launch


# JITFunction directly: the test session runs under TRITON_INTERPRET=1, where @triton.jit makes interpreter objects.
def _toy(X, n, scale, BLOCK: tl.constexpr, FLAG: tl.constexpr):
    pass


def _toy_tuned(X, n, scale, FLAG: tl.constexpr, BLOCK: tl.constexpr):
    pass


_toy_kernel = JITFunction(_toy)
_toy_autotuned = triton.autotune(configs=[triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})],
                                 key=["n"])(JITFunction(_toy_tuned))


def _toy_derived(X, n, scale, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    pass


# autotune over BLOCK, then a heuristic derives ROWS from the chosen BLOCK and a runtime argument (as the NA forward
# derives KEY_ROWS from BLOCK_N and KEY_W)
_toy_derived_kernel = triton.autotune(configs=[triton.Config({"BLOCK": 64})], key=["n"])(
    triton.heuristics({"ROWS": lambda a: a["BLOCK"] // a["n"]})(JITFunction(_toy_derived)))


class _Compiled:
    """Stand-in for triton.compiler.CompiledKernel: ``compiled[grid](*args)`` records the replay."""
    function = object()

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("replay", grid, args))


@pytest.fixture
def recorder(monkeypatch):
    """Triton's slow path records ("triton", grid, args, meta) and returns a _Compiled; the cache is switched on and
    the GPU checks are off."""
    log = []
    compiled = _Compiled(log)

    def fake_run(self, *args, grid, warmup, **kwargs):
        log.append(("triton", grid, args, kwargs))
        return compiled

    monkeypatch.setattr(triton.runtime.jit.JITFunction, "run", fake_run)
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setattr(_launch, "ENABLED", True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    _launch.clear_launch_cache()
    yield log
    _launch.clear_launch_cache()


def test_second_call_replays_with_constexprs_in_signature_order(recorder):
    x = torch.zeros(64)
    _launch.launch(_toy_kernel, (4,), x, 7, 0.5, FLAG=True, BLOCK=16)
    _launch.launch(_toy_kernel, (5,), x, 7, 0.5, FLAG=True, BLOCK=16)
    assert [entry[0] for entry in recorder] == ["triton", "replay"]
    assert recorder[1] == ("replay", (5, 1, 1), (x, 7, 0.5, 16, True))  # BLOCK before FLAG, as declared


@pytest.mark.parametrize("change", ["dtype", "misaligned", "int_value", "int_to_float", "constexpr"])
def test_anything_triton_specializes_on_takes_triton_path(recorder, change):
    x = torch.zeros(64)
    args, meta = [x, 16, 0.5], dict(BLOCK=16, FLAG=False)
    _launch.launch(_toy_kernel, (1,), *args, **meta)
    if change == "dtype":
        args[0] = torch.zeros(64, dtype=torch.float16)
    elif change == "misaligned":
        args[0] = x[1:]  # 4-byte offset: Triton compiles without the 16-byte alignment assumption
    elif change == "int_value":
        args[1] = 17  # 16 is divisible by 16, 17 is not; exact values also carry the autotune keys
    elif change == "int_to_float":
        args[1] = 16.0
    else:
        meta["FLAG"] = True
    _launch.launch(_toy_kernel, (1,), *args, **meta)
    assert [entry[0] for entry in recorder] == ["triton", "triton"]
    _launch.launch(_toy_kernel, (1,), *args, **meta)
    assert recorder[-1][0] == "replay"


def test_autotuned_kernel_replays_chosen_config_and_callable_grid(recorder, monkeypatch):
    chosen = triton.Config({"BLOCK": 32})

    def fake_autotune_run(self, *args, **kwargs):  # the autotuner "picks" BLOCK=32
        self.best_config = chosen
        return self.fn.run(*args, **kwargs, **chosen.all_kwargs())

    monkeypatch.setattr(triton.runtime.autotuner.Autotuner, "run", fake_autotune_run)
    x = torch.zeros(64)
    batch = 3  # closed over by the grid, as in the launchers: must be re-read on every call

    def grid(meta):
        return (triton.cdiv(100, meta["BLOCK"]), batch)

    _launch.launch(_toy_autotuned, grid, x, 100, 1.0, FLAG=False)
    batch = 5
    _launch.launch(_toy_autotuned, grid, x, 100, 1.0, FLAG=False)
    assert recorder[-1] == ("replay", (4, 5, 1), (x, 100, 1.0, False, 32))


def test_heuristic_constexprs_are_replayed(recorder, monkeypatch):
    chosen = triton.Config({"BLOCK": 64})

    def fake_autotune_run(self, *args, **kwargs):
        self.best_config = chosen
        return self.fn.run(*args, **kwargs, **chosen.all_kwargs())

    monkeypatch.setattr(triton.runtime.autotuner.Autotuner, "run", fake_autotune_run)
    x = torch.zeros(64)
    for n in (8, 8, 16, 16):
        _launch.launch(_toy_derived_kernel, (1,), x, n, 1.0)
    assert [entry[0] for entry in recorder] == ["triton", "replay", "triton", "replay"]
    assert recorder[0][3]["ROWS"] == 8 and recorder[2][3]["ROWS"] == 4  # what Triton's path derived
    assert recorder[1][2] == (x, 8, 1.0, 64, 8) and recorder[3][2] == (x, 16, 1.0, 64, 4)


def test_grid_reading_argument_names_is_not_cached(recorder):
    x = torch.zeros(64)

    def grid(meta):  # reads a runtime argument by name: only Triton's path has those in its dict
        return (meta["n"],)

    for _ in range(2):
        _launch.launch(_toy_kernel, grid, x, 8, 1.0, BLOCK=16, FLAG=False)
    assert [entry[0] for entry in recorder] == ["triton", "triton"]


def test_interpreter_always_takes_triton_path(recorder, monkeypatch):
    monkeypatch.setattr(_launch, "interpreting", lambda: True)
    x = torch.zeros(64)
    for _ in range(2):
        _launch.launch(_toy_kernel, (1,), x, 8, 1.0, BLOCK=16, FLAG=False)
    assert [entry[0] for entry in recorder] == ["triton", "triton"]


def test_switched_off_always_takes_triton_path(recorder, monkeypatch):
    monkeypatch.setattr(_launch, "ENABLED", False)
    x = torch.zeros(64)
    for _ in range(2):
        _launch.launch(_toy_kernel, (1,), x, 8, 1.0, BLOCK=16, FLAG=False)
    assert [entry[0] for entry in recorder] == ["triton", "triton"]


@pytest.mark.parametrize("value, enabled", [(None, True), ("1", True), ("0", False), ("false", False)])
def test_on_by_default_and_env_switches_off(monkeypatch, value, enabled):
    import importlib

    if value is None:
        monkeypatch.delenv("VITZOO_FAST_LAUNCH", raising=False)
    else:
        monkeypatch.setenv("VITZOO_FAST_LAUNCH", value)
    try:
        assert importlib.reload(_launch).ENABLED is enabled
    finally:
        monkeypatch.undo()
        importlib.reload(_launch)
