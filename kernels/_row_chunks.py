"""How the zoo's deterministic reductions split their rows: a few contiguous row chunks per SM, each reduced by one
program into its own partial row (no atomics), the partials summed afterwards in a fixed order. Used by the training
BatchNorm kernels, the depthwise weight gradient and LayerNorm's backward."""
from __future__ import annotations

import functools
from typing import Tuple

import torch

from ._intmath import cdiv

__all__ = ["row_programs", "sm_count", "PROGRAMS_PER_SM", "INTERPRET_PROGRAMS"]

# row-chunk programs per SM: enough loads in flight, a small partial buffer (on the H100, LayerNorm's backward at the
# B=128 ViT norms, C 64..768: 4 beat 8 and 16)
PROGRAMS_PER_SM = 4
INTERPRET_PROGRAMS = 3  # under the CPU interpreter: a few uneven row chunks on tiny test maps


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """SMs of a CUDA device (cached: launchers ask on every call); 1 elsewhere."""
    if device.type != "cuda":
        return 1
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def row_programs(rows: int, channel_blocks: int, device: torch.device, interpret: bool,
                 programs_per_sm: int = PROGRAMS_PER_SM) -> Tuple[int, int]:
    """(row-chunk programs, rows per program) of a reduction grid (programs x channel_blocks): about
    ``programs_per_sm`` programs per SM in all, no chunk empty."""
    target = INTERPRET_PROGRAMS if interpret else max(1, programs_per_sm * sm_count(device) // channel_blocks)
    per_program = cdiv(rows, max(1, min(target, rows)))
    return cdiv(rows, per_program), per_program
