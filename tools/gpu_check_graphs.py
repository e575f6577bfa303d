#!/usr/bin/env python3
"""GPU-only check of whole-step CUDA graphs (``vitzoo.cuda_graph``): a graphed training run against eager runs.

For each model, three copies with the same weights see the same batches: ``eager`` and ``eager2`` train eagerly,
``graph`` through :class:`GraphedTrainStep` (all with AdamW, fused, capturable). The eager runs use the same kernels
as the graph (``graph_step_kernels``: the Triton LayerNorm in training), so the comparison can be exact.
Checked, with the two eager runs' difference as the noise level (rule: graph-vs-eager difference <= 2 x
eager-vs-eager difference + 1e-3, relative):
- the loss of every step;
- the eval output after training, where every copy ran one eval forward *before* training (it fills the inference
  caches: folded conv-BN weights, neighborhood logit blocks), so a cache that missed the replays' weight updates fails;
- a :class:`GraphedForward`, captured first (before anything else ran the model, as in a benchmark's inference
  pass), against the eager eval forward with the weight cache off (the same computation), right away and replayed
  again after the graphed training (no weight-derived tensor may be frozen into the inference graph).
The eval output must also have moved with training (a check that the comparison can fail).

    python tools/gpu_check_graphs.py [--models nat_mini ...] [--batch 16] [--out gpu_check_graphs]

Writes ``graphs.csv`` and prints a table; exits 1 when a check fails. Results are recorded in kernels/README.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("VITZOO_AUTOTUNE", "0")  # read when the kernel modules load; one config per launch here

import timm  # noqa: E402

import vitzoo  # noqa: E402,F401
from vitzoo.cuda_graph import GraphedForward, GraphedTrainStep  # noqa: E402
from vitzoo.models._step_kernels import graph_step_kernels  # noqa: E402
from vitzoo.ops._weight_cache import weight_cache_enabled  # noqa: E402
from vitzoo.tools_common import to_channels_last, write_rows_csv  # noqa: E402

DEFAULT_MODELS = ["nat_mini", "dinat_mini", "biformer_t", "agent_swin_t", "agent_pvt_t", "vz_maxvit_tiny_224",
                  "vz_davit_tiny", "vz_efficientvit_m0", "vz_halonet26t"]
STEPS = 3
LR = 1e-3  # large enough that three steps visibly move the eval output
FLOOR = 1e-3


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def check_model(name: str, batch: int, dtype: torch.dtype) -> Dict:
    torch.manual_seed(0)
    base = to_channels_last(timm.create_model(name).cuda())
    size = base.pretrained_cfg["input_size"]
    copies = {k: copy.deepcopy(base) for k in ("eager", "eager2", "graph")}
    del base
    gen = torch.Generator(device="cuda").manual_seed(1)
    batches = [(torch.randn(batch, *size, device="cuda", generator=gen).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 1000, (batch,), device="cuda", generator=gen)) for _ in range(STEPS)]
    x_eval = batches[0][0]
    loss_fn = torch.nn.CrossEntropyLoss()

    def evaluate(model, cached: bool = True):
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype), weight_cache_enabled(cached):
            return model(x_eval).float().clone()

    fwd = GraphedForward(copies["graph"].eval(), x_eval, dtype)
    first_replay = fwd(x_eval).float().clone()
    infer_err = _rel(first_replay, evaluate(copies["graph"], cached=False))
    before = {k: evaluate(m) for k, m in copies.items()}  # fills every inference cache
    opts = {k: torch.optim.AdamW(m.parameters(), lr=LR, fused=True, capturable=True) for k, m in copies.items()}
    losses: Dict[str, List[torch.Tensor]] = {k: [] for k in copies}
    for k in ("eager", "eager2"):
        model, opt = copies[k], opts[k]
        model.train()
        torch.manual_seed(2)  # the same stochastic-depth masks in every run
        for x, y in batches[:STEPS]:
            with torch.autocast("cuda", dtype=dtype), graph_step_kernels():
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[k].append(loss.detach().float())
    copies["graph"].train()
    torch.manual_seed(2)  # the warm-up restores the RNG state, so the replays start from this seed too
    step = GraphedTrainStep(copies["graph"], opts["graph"], loss_fn, *batches[0], amp_dtype=dtype)
    for x, y in batches[:STEPS]:
        losses["graph"].append(step(x, y).float().clone())
    after = {k: evaluate(m) for k, m in copies.items()}

    loss_noise = max(_rel(a, b) for a, b in zip(losses["eager"], losses["eager2"]))
    loss_err = max(_rel(a, b) for a, b in zip(losses["graph"], losses["eager"]))
    out_noise, out_err = _rel(after["eager2"], after["eager"]), _rel(after["graph"], after["eager"])
    moved = _rel(after["graph"], before["graph"])

    # the inference graph after the weights changed in place
    replayed = fwd(x_eval).float().clone()
    infer_err_after = _rel(replayed, evaluate(copies["graph"], cached=False))
    infer_moved = _rel(replayed, first_replay)

    ok = (loss_err <= 2 * loss_noise + FLOOR and out_err <= 2 * out_noise + FLOOR and moved > 10 * (out_err + FLOOR)
          and infer_err <= FLOOR and infer_err_after <= FLOOR and infer_moved > 10 * FLOOR)
    return {"model": name, "batch": batch, "loss_err": loss_err, "loss_noise": loss_noise, "eval_err": out_err,
            "eval_noise": out_noise, "eval_moved": moved, "infer_graph_err": infer_err,
            "infer_graph_err_after_update": infer_err_after, "infer_moved": infer_moved, "ok": ok}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default="gpu_check_graphs")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check_graphs.py: error: needs a CUDA device", file=sys.stderr)
        return 2
    from tqdm import tqdm

    rows = []
    for name in tqdm(args.models, desc="models", disable=None):
        try:
            rows.append(check_model(name, args.batch, torch.bfloat16))
        except Exception as exc:  # a capture failure is a failed check, reported with the others
            rows.append({"model": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
        tqdm.write(str(rows[-1]))
        torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    write_rows_csv(rows, os.path.join(args.out, "graphs.csv"))
    failed = [r["model"] for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
