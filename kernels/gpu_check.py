"""GPU correctness of every Triton kernel (the GPU-only tests): bf16/fp16/fp32 outputs and gradients on large shapes
against float64 references, with FlashAttention's rule (kernel error <= 2x the same-precision torch error + a small
floor). CI has no GPU; this is run on the device machine and its table is recorded in kernels/README.md.

    python -m vitzoo.kernels.gpu_check [--only neighborhood ...] [--out gpu_check_out]

Exits non-zero when any check fails.
"""
from __future__ import annotations

import argparse
import os
import sys

from vitzoo.kernels._driver import print_table, run_all

COLUMNS = ["pattern", "case", "impl", "dtype", "err", "ref_err", "ok", "note", "error"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*")
    p.add_argument("--out", default="gpu_check_out")
    p.add_argument("--autotune", action="store_true", help="autotune tiles as in production (slow: every shape)")
    args = p.parse_args()
    if not args.autotune:  # correctness of the kernels, not of the tuner: one (the first) config per launch
        os.environ["VITZOO_AUTOTUNE"] = "0"
    rows = run_all("gpu_check", args.only, lambda m: m.run(), args.out)
    print_table(rows, COLUMNS)
    failed = [r for r in rows if not r.get("ok", False)]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
