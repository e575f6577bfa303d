"""How the zoo's deterministic reductions split their rows: a few contiguous row chunks per SM, each reduced by one
program into its own partial row (no atomics), the partials summed afterwards in a fixed order. Used by the training
BatchNorm kernels and the depthwise weight gradient."""
from __future__ import annotations

from typing import Tuple

import torch

from ._intmath import cdiv

__all__ = ["row_programs", "sm_count", "PROGRAMS_PER_SM", "INTERPRET_PROGRAMS"]

PROGRAMS_PER_SM = 4  # row-chunk programs per SM for the reductions: enough loads in flight, a small partial buffer
INTERPRET_PROGRAMS = 3  # under the CPU interpreter: a few uneven row chunks on tiny test maps


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def row_programs(rows: int, channel_blocks: int, device: torch.device, interpret: bool) -> Tuple[int, int]:
    """(row-chunk programs, rows per program) of a reduction grid (programs x channel_blocks): about
    ``PROGRAMS_PER_SM`` programs per SM in all, no chunk empty."""
    target = INTERPRET_PROGRAMS if interpret else max(1, PROGRAMS_PER_SM * sm_count(device) // channel_blocks)
    per_program = cdiv(rows, max(1, min(target, rows)))
    return cdiv(rows, per_program), per_program
