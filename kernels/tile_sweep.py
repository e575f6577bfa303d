"""GPU-only: every autotune config of a kernel family timed at the model shapes that decide its untuned tile.

    python -m vitzoo.kernels.tile_sweep [--only routed conv_act] [--out tile_sweep_out]

For each shape the kernels' autotune caches are cleared and one call per kernel runs with autotuning on; Triton's
autotuner then holds the median time of every legal config (``configs_timings``). Printed per kernel and shape: the
untuned config (what ``VITZOO_AUTOTUNE=0`` runs, the model benchmarks' setting), the best one and their ratio; every
timing goes to ``<out>/tile_sweep.csv``. This is how the routed kernels' ``untuned_tile`` rule and the depthwise
kernel's untuned tile were chosen (kernels/README.md, "Fifteenth run").

- ``routed``: BiFormer-S stages at 224 (batch 128) and 448 (batch 32); q | k | v slices of one qkv tensor, bf16.
- ``conv_act``: MaxViT-T's eight MBConv depthwise maps (batch 256, bf16 NHWC) and the SE gate multiply.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Dict, List, Tuple

import torch

from ._driver import print_table, save
from ._launch import clear_launch_cache

COLUMNS = ["family", "case", "kernel", "config", "us", "untuned", "best"]
ROUTED_CASES = {  # name: (batch, side, dim, n_win, topk); heads = dim // 32
    "biformer_s_s1_56": (128, 56, 64, 7, 1), "biformer_s_s2_28": (128, 28, 128, 7, 4),
    "biformer_s_s3_14": (128, 14, 256, 7, 16), "448_s1_112": (32, 112, 64, 7, 1),
    "448_s2_56": (32, 56, 128, 7, 4), "448_s3_28": (32, 28, 256, 7, 16),
}
CONV_CASES = {  # name: (H_in, C, stride), batch 256
    "s1_first": (112, 256, 2), "s1": (56, 256, 1), "s2_first": (56, 512, 2), "s2": (28, 512, 1),
    "s3_first": (28, 1024, 2), "s3": (14, 1024, 1), "s4_first": (14, 2048, 2), "s4": (7, 2048, 1),
}


def _describe(config) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(config.kwargs.items())) + f",warps={config.num_warps}"


def _rows(family: str, case: str, name: str, kernel, untuned: Callable[[], object]) -> List[Dict]:
    """One row per timed config; ``untuned()`` is the config the kernel's pruner keeps with autotuning off."""
    timings = {c: (t[0] if isinstance(t, (list, tuple)) else t) for c, t in kernel.configs_timings.items()}
    best = min(timings, key=timings.get)
    pick = _describe(untuned())
    rows = [dict(family=family, case=case, kernel=name, config=_describe(c), us=round(t * 1000, 1),
                 untuned=_describe(c) == pick, best=c is best) for c, t in timings.items()]
    picked = [r["us"] for r in rows if r["untuned"]]
    print(f"{family} {case} {name}: untuned {picked[0] if picked else '?'} us [{pick}], best "
          f"{timings[best] * 1000:.1f} us [{_describe(best)}]", flush=True)
    return rows


def _fresh(kernels) -> None:
    """Forget the chosen configs (autotuner caches and the launch cache) so the next calls benchmark every config."""
    clear_launch_cache()
    for kernel in kernels:
        kernel.cache.clear()


def _untuned(kernel, args: Dict) -> Callable[[], object]:
    """The config the kernel's own pruner keeps with VITZOO_AUTOTUNE=0 for these launch arguments."""
    def pick():
        old = os.environ.get("VITZOO_AUTOTUNE")
        os.environ["VITZOO_AUTOTUNE"] = "0"
        try:
            return kernel.early_config_prune(kernel.configs, args)[0]
        finally:
            if old is None:
                os.environ.pop("VITZOO_AUTOTUNE")
            else:
                os.environ["VITZOO_AUTOTUNE"] = old
    return pick


def sweep_routed() -> List[Dict]:
    from . import routed_bwd, routed_bwd_dq, routed_fwd
    from ._routed_common import next_pow2

    kernels = (("fwd", routed_fwd._routed_fwd_kernel), ("dq", routed_bwd_dq._routed_bwd_dq_kernel),
               ("dkdv", routed_bwd._routed_bwd_dkdv_kernel))
    rows: List[Dict] = []
    for case, (batch, side, dim, n_win, topk) in ROUTED_CASES.items():
        heads = dim // 32
        qkv = torch.randn(batch, side, side, 3 * dim, device="cuda", dtype=torch.bfloat16)
        q, k, v = (t.unflatten(-1, (heads, -1)) for t in qkv.split([dim] * 3, -1))
        regions = n_win * n_win  # a random routing: distinct regions per query region, as top-k gives
        index = torch.rand(batch, regions, regions, device="cuda").topk(topk, dim=-1).indices
        _fresh(kernel for _, kernel in kernels)
        out, lse = routed_fwd.routed_fwd(q, k, v, index, n_win, dim ** -0.5)
        routed_bwd.routed_bwd(torch.randn_like(out), q, k, v, out, lse, index, n_win, dim ** -0.5)
        torch.cuda.synchronize()
        region_side = -(-side // n_win)
        args = {"TP": next_pow2(region_side * region_side), "TOPK": topk}
        for name, kernel in kernels:
            rows += _rows("routed", case, name, kernel, _untuned(kernel, args))
    return rows


def sweep_conv_act() -> List[Dict]:
    from . import channel_scale, depthwise_conv_fwd

    rows: List[Dict] = []
    for case, (size, channels, stride) in CONV_CASES.items():
        x = torch.randn(256, size, size, channels, device="cuda", dtype=torch.bfloat16)
        out = -(-size // stride)  # TF "same": ceil(size / stride), the odd padding pixel after the map
        top = max((out - 1) * stride + 3 - size, 0) // 2
        dw, scale = depthwise_conv_fwd._depthwise_conv_fwd_kernel, channel_scale._channel_scale_kernel
        _fresh((dw, scale))
        y = depthwise_conv_fwd.depthwise_conv_fwd(x, torch.randn(9, channels, device="cuda"),
                                                  torch.randn(channels, device="cuda"), stride, top, top,
                                                  (out, out), "gelu_tanh", torch.bfloat16)
        channel_scale.channel_scale_(y.view(256, -1, channels),
                                     torch.rand(256, channels, device="cuda", dtype=torch.bfloat16))
        torch.cuda.synchronize()
        rows += _rows("conv_act", case, "depthwise", dw, _untuned(dw, {"W_OUT": out}))
        rows += _rows("conv_act", case, "channel_scale", scale, _untuned(scale, {"P": out * out, "C": channels}))
    return rows


SWEEPS: Dict[str, Callable[[], List[Dict]]] = {"routed": sweep_routed, "conv_act": sweep_conv_act}


def main(argv=None) -> Tuple[List[Dict], int]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=sorted(SWEEPS), default=None)
    p.add_argument("--out", default="tile_sweep_out")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tile_sweep times GPU kernels: it needs a CUDA device")
    os.environ["VITZOO_AUTOTUNE"] = "1"  # read per call by the pruners: every legal config is timed
    rows: List[Dict] = []
    for name in args.only or sorted(SWEEPS):
        rows += SWEEPS[name]()
        save(rows, args.out, "tile_sweep")
    print_table([r for r in rows if r["untuned"] or r["best"]], COLUMNS)
    return rows, 0


if __name__ == "__main__":
    main()
