#!/usr/bin/env python3
"""Throughput, peak memory, params and FLOPs of vitzoo, timm and official-code models, side by side in one process.

    python tools/benchmark.py --models biformer_s swin_tiny_patch4_window7_224 [--mode both] [--out runs/bench]
    python tools/benchmark.py --models vz_davit_tiny --pairs          # + its timm twin (davit_tiny), same process
    python tools/benchmark.py --models agent_swin_t --pairs           # + the official code (official:agent_swin_t)
    python tools/benchmark.py --suite all --out model_cards/measurements

Setting (the project's standard): bf16 autocast (``--dtype bf16|fp16|fp32``; fp32 = no autocast), channels_last,
inference batch 256 (torch.inference_mode), train step batch 128 (forward + backward + AdamW step), CUDA-event timing
after warm-up, median of several windows. Modes (``--mode``, one row each): ``eager``; ``compile`` (torch.compile,
default mode); ``graph`` (the whole inference forward and the whole train step captured once in a CUDA graph and
replayed, ``vitzoo.cuda_graph``; AdamW with ``capturable=True``; CUDA only); ``both`` = eager + compile; ``all``.
GFLOPs: forward at batch 1 with torch.utils.flop_counter (FLOPs inside vitzoo's Triton ops are not counted). Peak
memory: CUDA only (torch.cuda.max_memory_allocated). On CPU (no GPU) it still runs, with small batches, for smoke
tests; only GPU numbers go into model cards.

Competitors that are not timm models are named ``official:<vitzoo name>`` (``tools/competitors/``: the official
code, transcribed; e.g. ``official:agent_pvt_t``); they take ``--models`` too.

Writes ``benchmark.csv``, ``benchmark.json`` (rows + environment + setting; read by tools/make_cards.py) and
``benchmark.png`` to ``--out``, and prints a table. A model name timm does not know, or an image size a model cannot
take, is one line on stderr and exit code 2 (the other models still run).
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/competitors, also when imported from elsewhere

import timm  # noqa: E402

import vitzoo  # noqa: E402,F401
from competitors import COMPETITORS, create_competitor, is_competitor  # noqa: E402
from vitzoo.tools_common import (UserError, amp_dtype, autocast_ctx, check_model_name, run_cli,  # noqa: E402
                                 to_channels_last, write_rows_csv)

# vitzoo model -> the timm model (or ``official:<name>`` competitor) it is compared with, where one exists
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
    for theirs in COMPETITORS:  # families timm does not have: their official code, same name
        ours = theirs.split(":", 1)[1]
        if ours in names:
            PAIRS[ours] = theirs
    timm_twins = [m for m in PAIRS if PAIRS[m] and not is_competitor(PAIRS[m])]
    official = [m for m in PAIRS if PAIRS[m] and is_competitor(PAIRS[m])]
    SUITES["anchors"] = ["swin_tiny_patch4_window7_224"]
    SUITES["agent"] = [m for ours in official if ours.startswith("agent_") for m in (ours, PAIRS[ours])]
    SUITES["issue7"] = timm_twins + [PAIRS[m] for m in timm_twins]
    SUITES["issue6"] = ([m for m in PAIRS if not PAIRS[m]] + [m for ours in official for m in (ours, PAIRS[ours])]
                        + ["swin_tiny_patch4_window7_224"])
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
    except ValueError:
        raise  # the model rejects this input size: bad input, reported by the caller
    except Exception:
        return None


def create(name: str, img_size: Optional[int]) -> torch.nn.Module:
    """The model at its default size, or built for ``img_size`` when its constructor takes one."""
    if is_competitor(name):
        return create_competitor(name, **({} if img_size is None else {"img_size": img_size}))
    if img_size is None:
        return timm.create_model(name, pretrained=False)
    try:
        return timm.create_model(name, pretrained=False, img_size=img_size)
    except TypeError:  # no img_size argument: size-agnostic model
        return timm.create_model(name, pretrained=False)


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


MODES = {"eager": ["eager"], "compile": ["compile"], "graph": ["graph"], "both": ["eager", "compile"],
         "all": ["eager", "compile", "graph"]}


def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def bench_model(name: str, args, device, mode: str = "eager") -> Dict:
    try:
        model = create(name, args.img_size)
    except ValueError as exc:  # e.g. MaxViT: img_size not a multiple of its window/grid
        raise UserError(f"{name}: {exc}") from None
    cfg = getattr(model, "pretrained_cfg", None) or {}  # competitors have none: 3 x 224 x 224
    in_chans = cfg.get("input_size", (3, 224, 224))[0]
    size = args.img_size or cfg.get("input_size", (3, 224, 224))[-1]
    row = {"model": name, "img": size, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "compiled": mode == "compile", "mode": mode, "vs": PAIRS.get(name), "dtype": args.dtype}
    model = to_channels_last(model.to(device))
    try:
        row["gflops"] = count_gflops(model.eval(), size, in_chans)
    except ValueError as exc:  # e.g. HaloNet: input not a multiple of 256
        raise UserError(f"{name}: {exc}") from None
    runner = torch.compile(model) if mode == "compile" else model
    graph = mode == "graph"
    if graph:
        from vitzoo.cuda_graph import GraphedForward, GraphedTrainStep

    def amp_ctx():  # a fresh autocast context per call; fp32 = none
        return autocast_ctx(args.dtype, device)

    # inference
    x = torch.randn(args.infer_batch, in_chans, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def infer():
        with torch.inference_mode(), amp_ctx():
            runner(x)

    run = None
    if not args.skip_infer:
        try:
            _reset_peak(device)  # graphs: the capture's allocations are the replays' memory, so count from here
            run = functools.partial(GraphedForward(model.eval(), x, amp_dtype(args.dtype)), x) if graph else infer
            for _ in range(args.warmup):
                run()
            if not graph:
                _reset_peak(device)
            sec = _time_windows(run, args.windows, args.iters, device)
            row["infer_img_s"] = args.infer_batch / sec
            if device.type == "cuda":
                row["infer_peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
        except Exception as exc:
            row["infer_error"] = f"{type(exc).__name__}: {exc}"[:300]
    del x, run
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # train step
    if not args.skip_train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda", capturable=graph)
        xt = torch.randn(args.train_batch, in_chans, size, size, device=device).contiguous(
            memory_format=torch.channels_last)
        target = torch.randint(0, model.num_classes, (args.train_batch,), device=device)
        loss_fn = torch.nn.CrossEntropyLoss()

        def train_step():
            with amp_ctx():
                loss = loss_fn(runner(xt), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        run = None
        try:
            _reset_peak(device)
            run = functools.partial(GraphedTrainStep(model, opt, loss_fn, xt, target, amp_dtype(args.dtype)), xt,
                                    target) if graph else train_step
            for _ in range(args.warmup):
                run()
            if not graph:
                _reset_peak(device)
            sec = _time_windows(run, args.windows, args.iters, device)
            row["train_img_s"] = args.train_batch / sec
            if device.type == "cuda":
                row["train_peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
        except Exception as exc:
            row["train_error"] = f"{type(exc).__name__}: {exc}"[:300]
        del opt, xt, run
    del model, runner
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
    write_rows_csv(rows, os.path.join(out, "benchmark.csv"))
    setting = {"amp": args.dtype, "channels_last": True, "infer_batch": args.infer_batch,
               "train_batch": args.train_batch, "modes": args.modes, "img_size": args.img_size,
               "warmup": args.warmup, "iters": args.iters, "windows": args.windows,
               "cudnn_benchmark": args.cudnn_benchmark,
               "autotune": os.environ.get("VITZOO_AUTOTUNE", "1") not in ("0", "false", "False")}
    with open(os.path.join(out, "benchmark.json"), "w") as f:
        json.dump({"env": env, "setting": setting, "rows": rows}, f, indent=1)


def plot(rows: List[Dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, max(4, 0.3 * len(rows))))
    for ax, key in zip(axes, ("infer_img_s", "train_img_s")):
        labels = [r["model"] + ("" if _mode(r) == "eager" else f" ({_mode(r)})") for r in rows]
        ax.barh(range(len(rows)), [r.get(key) or 0 for r in rows],
                color=["C0" if r["model"] in PAIRS else "C1" for r in rows])
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_xlabel(f"{key} (blue: vitzoo, orange: reference)")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "benchmark.png"), dpi=110)
    plt.close(fig)


def _mode(row: Dict) -> str:
    return row.get("mode") or ("compile" if row["compiled"] else "eager")  # files written before the key existed


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: List[Dict]) -> str:
    """Plain-text table; ``x ref`` = this row's img/s over its reference's (timm twin or official code) in the same
    run and mode."""
    by_key = {(r["model"], _mode(r)): r for r in rows}
    head = (f"{'model':34s} {'mode':7s} {'params M':>8s} {'GFLOPs':>7s} {'infer img/s':>11s} {'peak GB':>7s} "
            f"{'train img/s':>11s} {'peak GB':>7s} {'x ref (inf/train)':>18s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ref = by_key.get((r.get("vs"), _mode(r))) if r.get("vs") else None
        ratio = "-"
        if ref:
            ri = (r.get("infer_img_s") or 0) / ref["infer_img_s"] if ref.get("infer_img_s") else None
            rt = (r.get("train_img_s") or 0) / ref["train_img_s"] if ref.get("train_img_s") else None
            ratio = f"{_fmt(ri, '.2f')}/{_fmt(rt, '.2f')} {r['vs']}"
        err = " ".join(r[k] for k in ("infer_error", "train_error") if r.get(k))
        lines.append(f"{r['model']:34s} {_mode(r):7s} {r['params_M']:8.2f} "
                     f"{_fmt(r.get('gflops'), '7.2f'):>7s} {_fmt(r.get('infer_img_s'), '11.1f'):>11s} "
                     f"{_fmt(r.get('infer_peak_GB'), '7.2f'):>7s} {_fmt(r.get('train_img_s'), '11.1f'):>11s} "
                     f"{_fmt(r.get('train_peak_GB'), '7.2f'):>7s} {ratio:>18s}" + (f"  {err}" if err else ""))
    return "\n".join(lines)


def main(argv=None) -> List[Dict]:
    _register_suites()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=[])
    p.add_argument("--suite", choices=sorted(SUITES), default=None)
    p.add_argument("--pairs", action="store_true",
                   help="also benchmark the timm model or official code (official:<name>) each listed vitzoo "
                        "model is compared with (right after it)")
    p.add_argument("--mode", nargs="+", choices=sorted(MODES), default=None,
                   help="one or more of: eager (default), compile (torch.compile, default mode), graph (whole-step "
                        "CUDA graphs), both (eager + compile), all; one row per model and mode")
    p.add_argument("--compile", action="store_true", help="same as --mode compile")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="autocast dtype (fp32: no autocast); default bf16")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: each model's)")
    p.add_argument("--infer-batch", type=int, default=None, help="default 256 on GPU, 2 on CPU")
    p.add_argument("--train-batch", type=int, default=None, help="default 128 on GPU, 2 on CPU")
    p.add_argument("--skip-infer", action="store_true", help="no inference measurement")
    p.add_argument("--skip-train", action="store_true", help="no train-step measurement")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark = True (cuDNN times its algorithms per shape, as timm's own "
                        "benchmark.py and train.py set it; default off, the setting of the #7 anchors' runs here)")
    p.add_argument("--out", default="runs/benchmark")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.mode and args.compile and args.mode != ["compile"]:
        raise UserError(f"--compile contradicts --mode {' '.join(args.mode)}")
    args.modes = []
    for mode in args.mode or ["compile" if args.compile else "eager"]:
        args.modes += [m for m in MODES[mode] if m not in args.modes]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if "graph" in args.modes and device.type != "cuda":
        raise UserError(f"--mode graph: CUDA graphs need a CUDA device, got --device {device}")
    gpu = device.type == "cuda"
    args.infer_batch = args.infer_batch or (256 if gpu else 2)
    args.train_batch = args.train_batch or (128 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    args.iters = args.iters or (10 if gpu else 1)
    if args.img_size is not None and args.img_size < 1:
        raise UserError(f"--img-size must be positive, got {args.img_size}")
    models: List[str] = []
    for name in list(args.models) + (SUITES[args.suite] if args.suite else []):
        if is_competitor(name):
            if name not in COMPETITORS:
                raise UserError(f"--models {name!r} is not a known competitor; known: {', '.join(COMPETITORS)}")
        else:
            check_model_name(name, "--models")
        twin = PAIRS.get(name) if args.pairs else None
        models += [m for m in (name, twin) if m and m not in models]
    if not models:
        raise UserError("nothing to benchmark: pass --models NAME [NAME ...] or --suite " + "|".join(sorted(SUITES)))
    env = environment(device)
    rows: List[Dict] = []
    failures: List[str] = []
    from tqdm import tqdm

    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "benchmark.py"
    for name in tqdm(models, desc="models", disable=None):  # no bar when stderr is not a terminal
        for mode in args.modes:
            try:
                rows.append(bench_model(name, args, device, mode=mode))
            except UserError as exc:
                failures.append(str(exc))
                tqdm.write(f"{prog}: error: {exc}", file=sys.stderr)
                break
            r = rows[-1]
            tqdm.write(f"{name:36s} {mode:7s} infer {r.get('infer_img_s', float('nan')):9.1f} img/s  "
                       f"train {r.get('train_img_s', float('nan')):8.1f} img/s  "
                       f"peak {r.get('train_peak_GB', float('nan')):.2f} GB  {r.get('infer_error', '')}"
                       f"{r.get('train_error', '')}")
            save(rows, env, args.out, args)
    if rows:
        plot(rows, args.out)
        print(table(rows))
        print(f"wrote {os.path.join(args.out, 'benchmark.csv')} and benchmark.json, benchmark.png")
    if failures:
        raise SystemExit(2)
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main))
