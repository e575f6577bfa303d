"""Test-session setup. CI has no GPU: Triton kernels are tested on CPU tensors through the Triton interpreter, which
must be switched on before triton is first imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def nan_poisoned_empty():
    """Every torch.empty (kernel outputs, partial-sum buffers) starts as NaN (torch's deterministic mode), so an
    element a kernel fails to write fails the test. Opt in with ``pytest.mark.usefixtures("nan_poisoned_empty")``."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(prev_det)
    torch.utils.deterministic.fill_uninitialized_memory = prev_fill
