#!/usr/bin/env python3
"""Training img/s and peak GPU memory of a torchvision RetinaNet on a vitzoo backbone at COCO's 800x1333, with
vitzoo's Triton attention kernels and with the pure-torch reference ops, side by side.

    python tools/bench_det.py                                          # nat_tiny, triton + torch, 2 img/step
    python tools/bench_det.py --model biformer_s --warmup 5 --steps 20 --out runs/bench_det_biformer_s
    python tools/bench_det.py --device cpu --min-size 128 --max-size 160 --warmup 0 --steps 1   # CPU smoke run

What runs: the trainer's own code (vitzoo.det.training, as tools/train_det.py: the detector and optimizer built from
the detection config defaults -- RetinaNet, FPN P3-P7 with 256 channels, AdamW lr 1e-4 -- and its training step),
with ``--num-classes`` (81: COCO's 80 + background), ``--amp`` autocast (bf16) and ``--batch-size`` images per step
(2: the per-GPU batch of the standard 1x COCO recipes, 8 GPUs x 2). The backbone starts from random weights (speed
and memory do not depend on them).

Images are synthetic, made at exactly min_size x max_size, so torchvision's resize (shorter side to ``--min-size``,
longer side capped at ``--max-size``) keeps them at 800x1333; the detector pads them to the backbone's size multiple
(800x1344; MaxViT 896x1344, HaloNet 1024x1536). Each image has 3-8 solid rectangles (later ones may cover earlier
ones) on a smooth noisy background; the rectangles are its boxes, with random labels in 1..num_classes-1. Four
different batches, made once on the device (no data loading in the timing, ~0.1 GB in the peak), are cycled.

Each backend runs in its own subprocess with ``VITZOO_ATTN_BACKEND`` set before anything is imported. triton: every
attention op must run its Triton kernel (an unsupported call is an error, never a silent fallback to torch); torch:
the pure-torch reference ops; auto: Triton where supported. img/s = batch x timed steps / CUDA-synchronized wall
time of the timed steps; peak memory = torch.cuda.max_memory_allocated / max_memory_reserved over the timed steps
(reset after the warm-up, which includes Triton compilation and autotuning); every step's loss is recorded (both
backends start from the same weights and batches, so the two loss curves should nearly agree).

A backend that fails (out of memory, an unsupported op, a non-finite loss, a crash, ``--timeout``) is a row with the
error, not a crash; triton without CUDA is a skipped row (the Triton interpreter is far too slow at these sizes).
Writes bench_det.csv, bench_det.json, bench_det.md (the table, for the README) and bench_det.png (when matplotlib is
installed) to ``--out``. Exit code 0 when at least one backend was measured, 1 when none was, 2 for bad arguments
(one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout too

import vitzoo  # noqa: E402  (registers the vitzoo models with timm)
from vitzoo.ops._backend import ENV_VAR  # noqa: E402
from vitzoo.tools_common import (UserError, _one_line, check_model_name, run_cli, seed_everything,  # noqa: E402
                                 write_rows_csv)

BACKENDS = ("triton", "torch", "auto")
NAME = "bench_det"
Batch = Tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="nat_tiny", help="vitzoo backbone (e.g. nat_tiny, biformer_s, "
                   "vz_maxvit_tiny_224, agent_swin_t); default nat_tiny")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=["triton", "torch"],
                   help="attention backends, one subprocess each (default: triton torch)")
    p.add_argument("--batch-size", type=int, default=2, help="images per training step (default 2)")
    p.add_argument("--min-size", type=int, default=800, help="shorter image side (default 800)")
    p.add_argument("--max-size", type=int, default=1333, help="longer image side (default 1333)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning); default 5")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--num-classes", type=int, default=81, help="classes + background (default 81, COCO)")
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16", help="autocast dtype (default bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=240.0,
                   help="seconds per backend, startup included; a backend past it is a row with the error (240)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--out", default="runs/bench_det", help="output folder (default runs/bench_det)")
    # the subprocess of one backend: measures and writes its row as JSON to --result
    p.add_argument("--worker", choices=BACKENDS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for bad arguments, before any subprocess starts."""
    check_model_name(args.model, "--model")
    for name, low in (("batch_size", 1), ("min_size", 1), ("steps", 1), ("warmup", 0), ("num_classes", 2)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.max_size < args.min_size:
        raise UserError(f"--max-size ({args.max_size}) must be >= --min-size ({args.min_size})")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout:g}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")


# ----------------------------------------------------------------------------------------------- worker
def synthetic_batches(n_batches: int, batch: int, height: int, width: int, num_classes: int, device: torch.device,
                      seed: int) -> List[Batch]:
    """``n_batches`` batches of (images in [0, 1], targets with valid xyxy boxes and labels in 1..num_classes-1)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)

    def randint(low: int, high: int) -> int:  # inclusive bounds
        return int(torch.randint(low, high + 1, (), generator=g))

    out: List[Batch] = []
    for _ in range(n_batches):
        images, targets = [], []
        for _ in range(batch):
            # low-frequency colour (bilinearly upsampled coarse noise) plus pixel noise: not a flat or white-noise image
            coarse = torch.rand(1, 3, max(height // 16, 1), max(width // 16, 1), generator=g)
            img = 0.7 * F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
            img += 0.3 * torch.rand(3, height, width, generator=g)
            boxes = []
            short = min(height, width)
            for _ in range(randint(3, 8)):
                bw = min(randint(max(short // 20, 2), max(short // 2, 2)), width)
                bh = min(randint(max(short // 20, 2), max(short // 2, 2)), height)
                x1, y1 = randint(0, width - bw), randint(0, height - bh)
                img[:, y1:y1 + bh, x1:x1 + bw] = torch.rand(3, 1, 1, generator=g)
                boxes.append([x1, y1, x1 + bw, y1 + bh])
            images.append(img.clamp_(0, 1).to(device))
            targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32, device=device),
                            "labels": torch.randint(1, num_classes, (len(boxes),), generator=g).to(device)})
        out.append((images, targets))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, backend: str) -> Dict[str, Any]:
    """Build the detector, run the warm-up and timed training steps; img/s, peak memory and the losses."""
    from tqdm import tqdm

    from vitzoo.det.config import load_det_config
    from vitzoo.det.training import build_detector_from_config, build_optimizer, grad_scaler, train_step

    device = torch.device(args.device)
    seed_everything(args.seed, False)  # same weights and batches for every backend
    cfg = load_det_config()  # the trainer's defaults (FPN width, anchors, optimizer), then this benchmark's setting
    cfg["model"].update(arch="retinanet", backbone=args.model, min_size=args.min_size, max_size=args.max_size)
    cfg["train"]["amp"] = args.amp
    tic = time.perf_counter()
    model = build_detector_from_config(cfg, args.num_classes).to(device).train()
    optimizer = build_optimizer(cfg, model)
    scaler = grad_scaler(args.amp, device)
    batches = synthetic_batches(4, args.batch_size, args.min_size, args.max_size, args.num_classes, device, args.seed)
    div = int(model.transform.size_divisible)
    row: Dict[str, Any] = {"params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                           "padded": f"{math.ceil(args.min_size / div) * div}x{math.ceil(args.max_size / div) * div}"}
    print(f"{args.model} / {backend}: RetinaNet with {row['params_M']:.1f} M params built in "
          f"{time.perf_counter() - tic:.1f} s, input {args.min_size}x{args.max_size} padded to {row['padded']}",
          file=sys.stderr, flush=True)

    losses: List[float] = []
    bar = tqdm(total=args.warmup + args.steps, desc=f"{backend} warm-up", disable=None, dynamic_ncols=True)

    def run(n: int) -> None:
        for _ in range(n):
            images, targets = batches[len(losses) % len(batches)]
            loss, _ = train_step(model, images, targets, optimizer, scaler, args.amp, device)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)

    tic = time.perf_counter()
    run(args.warmup)
    _sync(device)
    row["warmup_s"] = time.perf_counter() - tic
    # one plain line per phase: without a terminal (a captured log) tqdm draws no bar
    tqdm.write(f"{backend}: {args.warmup} warm-up steps in {row['warmup_s']:.1f} s (Triton compilation and autotuning "
               f"included)", file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar.set_description(f"{backend} timed")
    tic = time.perf_counter()
    run(args.steps)
    _sync(device)
    seconds = time.perf_counter() - tic
    bar.close()
    row.update(img_s=args.batch_size * args.steps / seconds, step_ms=1e3 * seconds / args.steps,
               loss_first=losses[0], loss_last=losses[-1], losses=losses)
    if device.type == "cuda":
        row.update(peak_alloc_GB=torch.cuda.max_memory_allocated(device) / 1e9,
                   peak_reserved_GB=torch.cuda.max_memory_reserved(device) / 1e9,
                   gpu=torch.cuda.get_device_name(device))
    peak = f", peak {row['peak_alloc_GB']:.2f} GB" if "peak_alloc_GB" in row else ""
    tqdm.write(f"{backend}: {row['img_s']:.2f} img/s{peak}, loss {losses[0]:.3f} -> {losses[-1]:.3f}", file=sys.stderr)
    return row


def worker(args: argparse.Namespace) -> None:
    """One backend in this process (the parent set VITZOO_ATTN_BACKEND); any failure becomes the row's error."""
    row: Dict[str, Any] = {"backend": args.worker}
    if os.environ.get(ENV_VAR) != args.worker:  # the switch must be set before the ops are first called
        row["error"] = f"{ENV_VAR} is {os.environ.get(ENV_VAR)!r}, expected {args.worker!r}"
    else:
        try:
            row.update(measure(args, args.worker))
        except Exception as exc:  # OOM, an op the backend cannot run, a non-finite loss: reported in the row
            row["error"] = f"{type(exc).__name__}: {_one_line(exc)}"[:400]
    with open(args.result, "w") as f:
        json.dump(row, f)


# ----------------------------------------------------------------------------------------------- parent
def run_backend(backend: str, argv: List[str], args: argparse.Namespace, result: str) -> Dict[str, Any]:
    """This script as a worker subprocess for ``backend``; its row, or a row saying how it failed."""
    if backend == "triton" and args.device != "cuda":
        return {"backend": backend, "error": "skipped: the Triton backend needs a CUDA GPU (the Triton interpreter "
                                             "is far too slow at detection sizes)"}
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--device", args.device, "--worker", backend,
           "--result", result]
    tic = time.perf_counter()
    proc = subprocess.Popen(cmd, env=dict(os.environ, **{ENV_VAR: backend}))
    try:
        rc = proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if proc.poll() is None:  # timed out, or this process was interrupted: do not leave the worker running
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - tic
    if rc is None:
        return {"backend": backend, "error": f"timed out after {args.timeout:g} s (--timeout)", "seconds": seconds}
    if not os.path.exists(result):
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
        return {"backend": backend, "error": f"worker {how} without a result (its output is above)",
                "seconds": seconds}
    with open(result) as f:
        return {**json.load(f), "seconds": seconds}


def _autotune() -> str:
    # Triton autotuning changes the kernels' tile configs (model cards were measured with it off): say which ran
    return os.environ.get("VITZOO_AUTOTUNE", "1")


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown table; speed and memory relative to the torch row of the same run."""
    ref = next((r for r in rows if r["backend"] == "torch" and r.get("img_s")), None)
    lines = ["| backend | img/s | step ms | peak alloc GB | peak reserved GB | vs torch: speed / memory | "
             "loss first → last | warm-up s | note |", "|---" * 9 + "|"]
    for r in rows:
        vs = "–"
        if ref and r.get("img_s") and r is not ref:
            mem = (f"{r['peak_alloc_GB'] / ref['peak_alloc_GB']:.2f}x" if r.get("peak_alloc_GB")
                   and ref.get("peak_alloc_GB") else "–")
            vs = f"{r['img_s'] / ref['img_s']:.2f}x / {mem}"
        loss = f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if r.get("losses") else "–"
        lines.append(f"| {r['backend']} | {_fmt(r.get('img_s'), '.2f')} | {_fmt(r.get('step_ms'), '.0f')} | "
                     f"{_fmt(r.get('peak_alloc_GB'), '.2f')} | {_fmt(r.get('peak_reserved_GB'), '.2f')} | {vs} | "
                     f"{loss} | {_fmt(r.get('warmup_s'), '.1f')} | {r.get('error', '')} |")
    gpu = next((r["gpu"] for r in rows if r.get("gpu")), args.device)
    head = (f"RetinaNet + FPN on {args.model}, {args.min_size}x{args.max_size} synthetic images, batch "
            f"{args.batch_size}, amp {args.amp}, {args.steps} timed steps after {args.warmup} warm-up, "
            f"VITZOO_AUTOTUNE={_autotune()}, {gpu}:")
    return "\n".join([head, "", *lines])


def save(rows: List[Dict[str, Any]], args: argparse.Namespace) -> None:
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, NAME)
    write_rows_csv([{**r, "losses": " ".join(f"{v:.4f}" for v in r["losses"])} if "losses" in r else r
                    for r in rows], base + ".csv")
    import timm
    import torchvision

    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
           "vitzoo": vitzoo.__version__, "date": time.strftime("%Y-%m-%d"), "device": args.device,
           "VITZOO_AUTOTUNE": _autotune(),
           "gpu": next((r["gpu"] for r in rows if r.get("gpu")), None)}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:  # pragma: no cover - triton is Linux-only
        env["triton"] = None
    setting = {k: getattr(args, k) for k in ("model", "backends", "batch_size", "min_size", "max_size", "warmup",
                                             "steps", "num_classes", "amp", "seed")}
    setting.update(arch="retinanet", data="synthetic", optimizer="adamw lr 1e-4 wd 0.05 (det config defaults)")
    with open(base + ".json", "w") as f:
        json.dump({"env": env, "setting": setting, "rows": rows}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(table(rows, args) + "\n")


def plot(rows: List[Dict[str, Any]], args: argparse.Namespace) -> Optional[str]:
    """bench_det.png (img/s and peak memory per backend); None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["backend"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in zip(axes, ("img_s", "peak_alloc_GB"), ("train img/s", "peak allocated GB")):
        bars = ax.bar(names, [r.get(key) or 0 for r in rows], color=["C0" if r.get(key) else "C3" for r in rows])
        ax.bar_label(bars, labels=[_fmt(r.get(key), ".2f") if r.get(key) else "failed" for r in rows], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"RetinaNet {args.model} {args.min_size}x{args.max_size} batch {args.batch_size} {args.amp}",
                 fontsize=9)
    fig.tight_layout()
    path = os.path.join(args.out, NAME + ".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return []
    check_args(args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_det_") as tmp:
        for i, backend in enumerate(args.backends):
            print(f"[{i + 1}/{len(args.backends)}] {args.model}: {ENV_VAR}={backend}", file=sys.stderr, flush=True)
            rows.append(run_backend(backend, argv, args, os.path.join(tmp, f"{i}.json")))
            save(rows, args)  # after every backend: a later hang or kill keeps what was measured
    text = table(rows, args)
    png = plot(rows, args)
    print(text)
    print(f"wrote {os.path.join(args.out, NAME)}.csv, .json, .md" + (", .png" if png else " (no matplotlib: no .png)"))
    if not any(r.get("img_s") for r in rows):
        raise SystemExit(1)
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main))
