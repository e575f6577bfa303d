"""Training BatchNorm + activation benchmark (run by kernels/bench.py on the device machine): vitzoo's fused op
against timm's ``BatchNormAct2d`` (torch's batch norm, then the residual add and the activation) at the map shapes
of HaloNet-26t (batch 128, 256 px) and MaxViT-T's MBConvs (batch 128, 224 px), bf16 channels_last, forward and
forward + backward, with the HBM floor of a two-pass forward (x read twice, the residual once, y written once).

Implementations (all start from the same bf16 map and fp32 parameters, running statistics updated):

* ``vitzoo_triton``: :func:`vitzoo.ops.batch_norm_act`;
* ``torch``: ``F.batch_norm``, ``+ residual``, the activation (in place for ReLU, as timm's blocks do);
* ``torch_compile`` (full runs only): ``torch.compile`` of the torch form (Inductor's fused reductions).

Plus the fused stem end (``vitzoo.ops.batch_norm_act_max_pool``) at HaloNet-26t's stem against BN + ReLU + max pool.
"""
from __future__ import annotations

from typing import Callable, List

import torch
import torch.nn.functional as F

from ._bench_utils import hbm_floor_ms, timed_row

PATTERN = "batch_norm"
BATCH = 128
MOMENTUM, EPS = 0.1, 1e-5
# (case, C, H = W, activation, residual): HaloNet-26t's stem, stage-1 and stage-2 norms (the 256-wide ones end a
# bottleneck: BN, residual add, ReLU) and MaxViT-T's 4x-expanded MBConv norms (BN + tanh GELU)
CASES = (("halonet26t_stem_24_128", 24, 128, "relu", False), ("halonet26t_stem_64_128", 64, 128, "relu", False),
         ("halonet26t_s1_64_64", 64, 64, "relu", False), ("halonet26t_s1_tail_256_64", 256, 64, "relu", True),
         ("halonet26t_s2_tail_512_32", 512, 32, "relu", True), ("maxvit_t_s1_256_56", 256, 56, "gelu_tanh", False),
         ("maxvit_t_s3_1024_14", 1024, 14, "gelu_tanh", False), ("maxvit_t_s4_2048_7", 2048, 7, "gelu_tanh", False))


def _act(y: torch.Tensor, act: str) -> torch.Tensor:
    return F.relu_(y) if act == "relu" else F.gelu(y, approximate="tanh")


def _impls(quick: bool):
    from vitzoo.ops import batch_norm_act

    def ours(x, w, b, mean, var, act, res):
        return batch_norm_act(x, w, b, mean, var, MOMENTUM, EPS, act, res)

    def torch_form(x, w, b, mean, var, act, res):
        y = F.batch_norm(x, mean, var, w, b, True, MOMENTUM, EPS)
        return _act(y + res if res is not None else y, act)

    return _versus(ours, torch_form, quick)


def _versus(ours: Callable, torch_form: Callable, quick: bool) -> list:
    """(name, fn) of vitzoo's op, the torch form and (full runs) torch.compile of the torch form."""
    impls = [("vitzoo_triton", ours), ("torch", torch_form)]
    if not quick:
        impls.append(("torch_compile", torch.compile(torch_form, dynamic=False)))
    return impls


def run(quick: bool = False) -> List[dict]:
    rows: List[dict] = []
    cases = CASES[::2] if quick else CASES
    for case, channels, size, act, has_res in cases:
        shape = (BATCH, channels, size, size)
        x = torch.randn(shape, device="cuda").mul_(2).add_(1).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        res = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last).requires_grad_(True) if has_res else None
        w = (1 + 0.1 * torch.randn(channels, device="cuda")).requires_grad_(True)
        b = (0.1 * torch.randn(channels, device="cuda")).requires_grad_(True)
        grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        floor = hbm_floor_ms((3 + int(has_res)) * x.numel() * x.element_size())
        leaves = [t for t in (x, w, b, res) if t is not None]
        for impl, fn in _impls(quick):
            mean, var = torch.zeros(channels, device="cuda"), torch.ones(channels, device="cuda")
            fwd: Callable[[], torch.Tensor] = (  # noqa: E731
                lambda fn=fn, x=x, w=w, b=b, mean=mean, var=var, act=act, res=res: fn(x, w, b, mean, var, act, res))
            rows.append(timed_row(PATTERN, case, impl, fwd, grad, leaves, f"shape={shape} act={act} residual={has_res}",
                                  dtype="bf16", floor_ms=floor))
        del x, res, grad
        torch.cuda.empty_cache()
    return rows + run_pool(quick)


POOL_CASE = ("halonet26t_stem_pool_64_128", 64, 128, (3, 2, 1))  # the stem's last norm + ReLU + 3x3/2 max pool


def run_pool(quick: bool) -> List[dict]:
    """The fused stem end ``max_pool2d(relu(bn(x)))`` against timm's BatchNormAct2d + MaxPool2d (torch), forward
    and forward + backward; floor: x read twice, the pooled map written once."""
    from vitzoo.ops import batch_norm_act_max_pool

    case, channels, size, pool = POOL_CASE
    shape = (BATCH, channels, size, size)
    x = torch.randn(shape, device="cuda").mul_(2).add_(1).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = (1 + 0.1 * torch.randn(channels, device="cuda")).requires_grad_(True)
    b = (0.1 * torch.randn(channels, device="cuda")).requires_grad_(True)
    out_size = (size + 2 * pool[2] - pool[0]) // pool[1] + 1
    grad = torch.randn(BATCH, channels, out_size, out_size, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    floor = hbm_floor_ms((2 * x.numel() + grad.numel()) * x.element_size())

    def ours(x, w, b, mean, var):
        return batch_norm_act_max_pool(x, w, b, mean, var, MOMENTUM, EPS, "relu", *pool)

    def torch_form(x, w, b, mean, var):
        return F.max_pool2d(F.relu_(F.batch_norm(x, mean, var, w, b, True, MOMENTUM, EPS)), *pool)

    rows = []
    for impl, fn in _versus(ours, torch_form, quick):
        mean, var = torch.zeros(channels, device="cuda"), torch.ones(channels, device="cuda")
        fwd: Callable[[], torch.Tensor] = lambda fn=fn, mean=mean, var=var: fn(x, w, b, mean, var)  # noqa: E731
        rows.append(timed_row(PATTERN, case, impl, fwd, grad, [x, w, b], f"shape={shape} relu max_pool{pool}",
                              dtype="bf16", floor_ms=floor))
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
