#!/usr/bin/env python3
"""Where one training step (or inference batch) of a model spends its time: wall time per step, GPU kernel time per
step and the fraction of the step the GPU is busy, plus the top operators by GPU and by host time (torch.profiler).

    python tools/profile_step.py --models nat_tiny biformer_s                 # GPU: bf16 train step, batch 128
    python tools/profile_step.py --models vz_efficientvit_m5 --mode infer --batch 256 --out runs/prof_effvit
    python tools/profile_step.py --models nat_mini --device cpu --batch 1 --img-size 64 --warmup 0 --steps 1
    python tools/profile_step.py --models agent_swin_t --graph-kernels     # the kernels a graphed train step runs

A GPU busy fraction well under 1 means the step is host-bound (Python, argument binding, kernel launches): faster
kernels will not help there, fewer / cheaper launches will. GPU time is the sum of the device-side kernel events (each
kernel once, not again under the operator that launched it). Writes ``summary.csv`` (one row per model),
``<model>_ops.csv`` (every operator: calls, self host ms and self GPU ms per step) and ``<model>_table.txt``.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import vitzoo  # noqa: E402,F401
from benchmark import create  # noqa: E402  (tools/ is on sys.path when a tool runs)
from vitzoo.models._step_kernels import graph_step_kernels  # noqa: E402
from vitzoo.tools_common import (UserError, autocast_ctx, check_model_name, run_cli, to_channels_last,  # noqa: E402
                                 write_rows_csv)

TOP_ROWS = 25  # operators shown in the printed / saved table


def _step_fn(model: torch.nn.Module, mode: str, batch: int, size: int, amp: str, device: torch.device):
    """A closure running one train step (forward, loss, backward, AdamW) or one inference batch."""
    in_chans = model.pretrained_cfg.get("input_size", (3,))[0] if hasattr(model, "pretrained_cfg") else 3
    x = torch.randn(batch, in_chans, size, size, device=device).contiguous(memory_format=torch.channels_last)
    if mode == "infer":
        model.eval()

        def infer():
            with torch.inference_mode(), autocast_ctx(amp, device):
                model(x)
        return infer

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    target = torch.randint(0, model.num_classes, (batch,), device=device)

    def train_step():
        with autocast_ctx(amp, device):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return train_step


def _with_norm_kernels(step):
    def wrapped():
        with graph_step_kernels():
            step()
    return wrapped


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _is_device_event(evt) -> bool:
    return evt.device_type != torch.autograd.DeviceType.CPU


def profile_model(name: str, args, device: torch.device) -> Dict:
    try:
        model = create(name, args.img_size)  # tools/benchmark.py's: passes img_size where the model takes one
    except ValueError as exc:  # e.g. MaxViT / HaloNet: the size is not a multiple of their windows
        raise UserError(f"{name}: {exc}") from None
    size = args.img_size or model.pretrained_cfg["input_size"][-1]
    step = _step_fn(to_channels_last(model.to(device)), args.mode, args.batch, size, args.amp, device)
    if args.graph_kernels:  # eager steps with the kernel choices of a CUDA-graphed step (see vitzoo.cuda_graph)
        step = _with_norm_kernels(step)
    for _ in range(args.warmup):
        step()
    _sync(device)
    tic = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    wall_ms = (time.perf_counter() - tic) / args.steps * 1e3

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        _sync(device)
    events = prof.key_averages()
    gpu_ms = sum(e.self_device_time_total for e in events if _is_device_event(e)) / args.steps / 1e3
    ops = sorted(({"op": e.key, "calls_per_step": e.count / args.steps,
                   "self_host_ms": e.self_cpu_time_total / args.steps / 1e3,
                   "self_gpu_ms": e.self_device_time_total / args.steps / 1e3,
                   "kind": "kernel" if _is_device_event(e) else "op"} for e in events),
                 key=lambda r: (r["self_gpu_ms"], r["self_host_ms"]), reverse=True)
    write_rows_csv(ops, os.path.join(args.out, f"{name}_ops.csv"))
    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with open(os.path.join(args.out, f"{name}_table.txt"), "w") as f:
        f.write(events.table(sort_by=sort_key, row_limit=TOP_ROWS, max_name_column_width=70))
        f.write("\n")
        f.write(events.table(sort_by="self_cpu_time_total", row_limit=TOP_ROWS, max_name_column_width=70))
    row = {"model": name, "mode": args.mode, "graph_kernels": args.graph_kernels, "batch": args.batch, "img": size,
           "amp": args.amp,
           "wall_ms_per_step": wall_ms, "img_per_s": args.batch / wall_ms * 1e3,
           "gpu_ms_per_step": gpu_ms if device.type == "cuda" else None,
           "gpu_busy": gpu_ms / wall_ms if device.type == "cuda" else None,
           "top_gpu_ops": "; ".join(f"{r['op'][:40]} {r['self_gpu_ms']:.1f}" for r in ops if r["kind"] == "kernel")
           if device.type == "cuda" else ""}
    del model, step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--batch", type=int, default=None, help="default 128 (train) / 256 (infer) on GPU, 2 on CPU")
    p.add_argument("--img-size", type=int, default=None, help="default: each model's")
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default=None, help="default bf16 on GPU, none on CPU")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="steps timed, then the same number profiled")
    p.add_argument("--graph-kernels", action="store_true",
                   help="train with the kernels of a CUDA-graphed step (the zoo's Triton LayerNorm forward and "
                        "backward), run eagerly so the profiler sees each one")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--out", default="runs/profile")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    gpu = device.type == "cuda"
    args.batch = args.batch or ((128 if args.mode == "train" else 256) if gpu else 2)
    args.amp = args.amp or ("bf16" if gpu else "none")
    for name in args.models:
        check_model_name(name, "--models")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.models:
        rows.append(profile_model(name, args, device))
        r = rows[-1]
        print(f"{name:28s} {args.mode} batch {args.batch}: wall {r['wall_ms_per_step']:.1f} ms/step "
              f"({r['img_per_s']:.0f} img/s), GPU {_fmt(r['gpu_ms_per_step'], '.1f')} ms/step, "
              f"busy {_fmt(r['gpu_busy'], '.0%')}", flush=True)
        write_rows_csv(rows, os.path.join(args.out, "summary.csv"))  # after every model: a crash keeps the rest
    print(f"wrote {args.out}/summary.csv and per-model *_ops.csv / *_table.txt")
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main))
