"""Integer helpers for launchers' host code (grids, block sizes).

Plain Python on purpose: in triton >= 3.5 ``triton.cdiv`` and ``triton.next_power_of_2`` are ``ConstexprFunction``
objects that cost about 4 us per call from host code (measured on the CPU machine, triton 3.8), and grids are
recomputed on every launch."""
from __future__ import annotations

__all__ = ["cdiv", "next_pow2"]


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return -(-int(a) // int(b))


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())
