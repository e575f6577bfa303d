"""Shared driver for ``kernels/bench.py`` and ``kernels/gpu_check.py``: import every ``<prefix>_<pattern>`` module
beside this file, run it, print a table, and save the rows as CSV + JSON (+ a PNG for benchmarks)."""
from __future__ import annotations

import csv
import importlib
import json
import os
import pkgutil
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def discover(prefix: str) -> List[str]:
    return sorted(m.name for m in pkgutil.iter_modules([HERE]) if m.name.startswith(prefix + "_"))


def run_all(prefix: str, patterns: Optional[List[str]], call: Callable, out_dir: str) -> List[Dict]:
    rows: List[Dict] = []
    for name in discover(prefix):
        pattern = name[len(prefix) + 1:]
        if patterns and pattern not in patterns:
            continue
        tic = time.perf_counter()
        try:
            module = importlib.import_module(f"vitzoo.kernels.{name}")
            new = call(module)
        except Exception as exc:  # one broken pattern must not hide the others' numbers
            traceback.print_exc()
            new = [dict(pattern=pattern, case="-", impl="-", error=f"{type(exc).__name__}: {exc}"[:300], ok=False)]
        print(f"[{name}] {len(new)} rows in {time.perf_counter() - tic:.1f}s", flush=True)
        rows.extend(new)
        save(rows, out_dir, prefix)
    return rows


def environment() -> Dict[str, str]:
    import triton

    env = {"torch": torch.__version__, "triton": triton.__version__, "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def save(rows: List[Dict], out_dir: str, prefix: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(os.path.join(out_dir, f"{prefix}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, f"{prefix}.json"), "w") as f:
        json.dump({"env": environment(), "rows": rows}, f, indent=1, default=str)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(rows: List[Dict], columns: List[str]) -> None:
    cols = [c for c in columns if any(c in r for r in rows)]
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
