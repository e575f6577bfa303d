#!/usr/bin/env python3
"""Throughput, peak memory, params and FLOPs of vitzoo and timm models, side by side in one process.

    python tools/benchmark.py --models biformer_s swin_tiny_patch4_window7_224 [--compile] [--out runs/bench]
    python tools/benchmark.py --suite all --out model_cards/measurements

Setting (the project's standard): bf16 autocast, channels_last, inference batch 256 (torch.inference_mode), train
step batch 128 (forward + backward + AdamW step), CUDA-event timing after warm-up, median of several windows. On CPU
(no GPU) it still runs, with small batches, for smoke tests; only GPU numbers go into model cards.

Writes ``benchmark.csv``, ``benchmark.json`` (rows + environment) and ``benchmark.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import timm  # noqa: E402

import vitzoo  # noqa: E402,F401

# vitzoo model -> the timm (or official-equivalent) model it is compared with, where one exists
PAIRS: Dict[str, Optional[str]] = {}
SUITES: Dict[str, List[str]] = {}


def _register_suites() -> None:
    """Suites are built from what is registered, so a missing family never breaks the others."""
    names = set(timm.list_models())
    candidates = {
        "vz_maxvit_tiny_224": "maxvit_tiny_tf_224", "vz_maxvit_small_224": "maxvit_small_tf_224",
        "vz_maxvit_base_224": "maxvit_base_tf_224",
        "vz_davit_tiny": "davit_tiny", "vz_davit_small": "davit_small", "vz_davit_base": "davit_base",
        **{f"vz_efficientvit_m{i}": f"efficientvit_m{i}" for i in range(6)},
        "vz_halonet26t": "halonet26t", "vz_halonet50ts": "halonet50ts", "vz_halonet_h1": "halonet_h1",
        "biformer_t": None, "biformer_s": None, "biformer_b": None,
        "nat_mini": None, "nat_tiny": None, "nat_small": None, "nat_base": None,
        "dinat_mini": None, "dinat_tiny": None, "dinat_small": None, "dinat_base": None,
    }
    for ours, theirs in candidates.items():
        if ours in names:
            PAIRS[ours] = theirs
    SUITES["anchors"] = ["swin_tiny_patch4_window7_224"]
    SUITES["issue7"] = [m for m in PAIRS if PAIRS[m]] + [PAIRS[m] for m in PAIRS if PAIRS[m]]
    SUITES["issue6"] = [m for m in PAIRS if not PAIRS[m]] + ["swin_tiny_patch4_window7_224"]
    SUITES["all"] = SUITES["issue6"] + SUITES["issue7"]


def count_gflops(model: torch.nn.Module, size: int, in_chans: int) -> Optional[float]:
    """Forward GFLOPs at batch 1 (multiply-add = 2 FLOPs, torch.utils.flop_counter), on the model's device."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.randn(1, in_chans, size, size, device=device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return counter.get_total_flops() / 1e9
    except Exception:
        return None


def _time_windows(fn, windows: int, iters: int, device) -> float:
    """Median over ``windows`` of the mean seconds per call over ``iters`` calls."""
    results = []
    for _ in range(windows):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            results.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            tic = time.perf_counter()
            for _ in range(iters):
                fn()
            results.append((time.perf_counter() - tic) / iters)
    return statistics.median(results)


def bench_model(name: str, args, device) -> Dict:
    model = timm.create_model(name, pretrained=False)
    cfg = model.pretrained_cfg
    in_chans, size = cfg.get("input_size", (3, 224, 224))[0], cfg.get("input_size", (3, 224, 224))[-1]
    row = {"model": name, "img": size, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "compiled": args.compile, "vs": PAIRS.get(name)}
    model = model.to(device).to(memory_format=torch.channels_last)
    row["gflops"] = count_gflops(model.eval(), size, in_chans)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    runner = torch.compile(model) if args.compile else model

    # inference
    x = torch.randn(args.infer_batch, in_chans, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def infer():
        with torch.inference_mode(), amp:
            runner(x)

    try:
        for _ in range(args.warmup):
            infer()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        sec = _time_windows(infer, args.windows, args.iters, device)
        row["infer_img_s"] = args.infer_batch / sec
        if device.type == "cuda":
            row["infer_peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
    except Exception as exc:
        row["infer_error"] = f"{type(exc).__name__}: {exc}"[:300]
    del x
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # train step
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    xt = torch.randn(args.train_batch, in_chans, size, size, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, model.num_classes, (args.train_batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        with amp:
            loss = loss_fn(runner(xt), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        for _ in range(args.warmup):
            train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        sec = _time_windows(train_step, args.windows, args.iters, device)
        row["train_img_s"] = args.train_batch / sec
        if device.type == "cuda":
            row["train_peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
    except Exception as exc:
        row["train_error"] = f"{type(exc).__name__}: {exc}"[:300]
    del model, runner, opt, xt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def environment(device) -> Dict:
    import triton

    env = {"torch": torch.__version__, "timm": timm.__version__, "triton": triton.__version__,
           "vitzoo": vitzoo.__version__, "date": time.strftime("%Y-%m-%d"), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def save(rows: List[Dict], env: Dict, out: str, args) -> None:
    os.makedirs(out, exist_ok=True)
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(os.path.join(out, "benchmark.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    setting = {"amp": "bf16", "channels_last": True, "infer_batch": args.infer_batch,
               "train_batch": args.train_batch}
    with open(os.path.join(out, "benchmark.json"), "w") as f:
        json.dump({"env": env, "setting": setting, "rows": rows}, f, indent=1)


def plot(rows: List[Dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, max(4, 0.3 * len(rows))))
    for ax, key in zip(axes, ("infer_img_s", "train_img_s")):
        labels = [f"{r['model']}{' (compiled)' if r['compiled'] else ''}" for r in rows]
        ax.barh(range(len(rows)), [r.get(key) or 0 for r in rows],
                color=["C0" if r["model"] in PAIRS else "C1" for r in rows])
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_xlabel(f"{key} (blue: vitzoo, orange: reference)")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "benchmark.png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> List[Dict]:
    _register_suites()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=[])
    p.add_argument("--suite", choices=sorted(SUITES), default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile every model (default mode)")
    p.add_argument("--infer-batch", type=int, default=None, help="default 256 on GPU, 2 on CPU")
    p.add_argument("--train-batch", type=int, default=None, help="default 128 on GPU, 2 on CPU")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--out", default="runs/benchmark")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    args.infer_batch = args.infer_batch or (256 if gpu else 2)
    args.train_batch = args.train_batch or (128 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    args.iters = args.iters or (10 if gpu else 1)
    models = list(args.models) + (SUITES[args.suite] if args.suite else [])
    unknown = [m for m in models if m not in timm.list_models()]
    if unknown:
        raise SystemExit(f"unknown model name(s): {unknown} (see timm.list_models() after `import vitzoo`)")
    env = environment(device)
    rows: List[Dict] = []
    from tqdm import tqdm

    for name in tqdm(models, desc="models"):
        rows.append(bench_model(name, args, device))
        r = rows[-1]
        tqdm.write(f"{name:36s} infer {r.get('infer_img_s', float('nan')):9.1f} img/s  "
                   f"train {r.get('train_img_s', float('nan')):8.1f} img/s  "
                   f"peak {r.get('train_peak_GB', float('nan')):.2f} GB  {r.get('infer_error', '')}"
                   f"{r.get('train_error', '')}")
        save(rows, env, args.out, args)
    plot(rows, args.out)
    return rows


if __name__ == "__main__":
    main()
