"""Benchmark every attention pattern on the GPU: vitzoo's Triton kernels side by side with FlexAttention, SDPA, the
torch reference and the official formulations, plus the HBM floor (bytes of q, k, v, o once / measured copy
bandwidth), forward and forward+backward, bf16.

    python -m vitzoo.kernels.bench [--quick] [--only neighborhood routed ...] [--out bench_out]

Two times per implementation: ``*_ms`` is the eager wall time of a call (host work included, what a Python loop
of calls costs) and ``*_gpu_ms`` the GPU time of the same call replayed from a CUDA graph (host work removed). At
these sizes many calls are host-bound on both sides, and only the pair says whether a ratio measures kernels or
Python; speed-ups are given for both.

Rows come from ``kernels/bench_<pattern>.py`` modules (``run(quick) -> list[dict]``); results are printed and saved as
``bench.csv``, ``bench.json`` (with the GPU, versions and date) and ``bench.png``.
"""
from __future__ import annotations

import argparse
import os

from vitzoo.kernels._driver import print_table, run_all, save

COLUMNS = ["pattern", "case", "impl", "dtype", "fwd_ms", "fwdbwd_ms", "fwd_gpu_ms", "fwdbwd_gpu_ms", "floor_ms",
           "floor_frac", "speedup_fwd", "speedup_fwdbwd", "speedup_fwd_gpu", "speedup_fwdbwd_gpu", "peak_gb", "note",
           "error"]


def add_derived(rows):
    """floor fraction of our forward, and speed-ups of vitzoo over every competitor of the same case."""
    ours = {(r["pattern"], r["case"]): r for r in rows if r.get("impl") == "vitzoo_triton"}
    for r in rows:
        if r.get("floor_ms") and r.get("fwd_ms"):
            r["floor_frac"] = r["floor_ms"] / r["fwd_ms"]
        mine = ours.get((r["pattern"], r["case"]))
        if mine is not None and r is not mine:
            for key, out in (("fwd_ms", "speedup_fwd"), ("fwdbwd_ms", "speedup_fwdbwd"),
                             ("fwd_gpu_ms", "speedup_fwd_gpu"), ("fwdbwd_gpu_ms", "speedup_fwdbwd_gpu")):
                if r.get(key) and mine.get(key):
                    r[out] = r[key] / mine[key]
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["pattern"], r["case"]) for r in rows if r.get("fwd_ms")})
    impls = sorted({r["impl"] for r in rows if r.get("fwd_ms")})
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4, 0.35 * len(cases) * len(impls) / 2)))
    for ax, key in zip(axes, ("fwd_ms", "fwdbwd_ms")):
        labels, values, colors = [], [], []
        for ci, (pattern, case) in enumerate(cases):
            for ii, impl in enumerate(impls):
                hit = [r for r in rows if r["pattern"] == pattern and r["case"] == case and r["impl"] == impl]
                if hit and hit[0].get(key):
                    labels.append(f"{pattern}/{case} {impl}")
                    values.append(hit[0][key])
                    colors.append(f"C{ii % 10}")
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), labels, fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel(f"{key} (log scale)")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", help="patterns to run (default: all bench_<pattern>.py modules)")
    p.add_argument("--out", default="bench_out")
    args = p.parse_args()
    rows = run_all("bench", args.only, lambda m: m.run(quick=args.quick), args.out)
    rows = add_derived(rows)
    save(rows, args.out, "bench")
    try:
        plot(rows, os.path.join(args.out, "bench.png"))
    except Exception as exc:  # the numbers matter more than the picture
        print(f"plot failed: {exc}")
    print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
