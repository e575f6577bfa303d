"""Test-session setup. CI has no GPU: Triton kernels are tested on CPU tensors through the Triton interpreter, which
must be switched on before triton is first imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
