"""Benchmark of bi-level routing attention (BiFormer, Zhu et al., CVPR 2023), bf16, GPU only: vitzoo's Triton kernels
(``routed_attention(backend="triton")``), vitzoo's memory-sane torch reference (``backend="torch"``) and the released
code's gather formulation (``released_bra_attention`` below, rayleizhu/BiFormer ``ops/bra_legacy.py`` with
kv_downsample_mode='identity', no routing params), plus the HBM floor and peak memory.

Cases: the BiFormer-S routed stages at 224x224, batch 128 (heads = dim // 32, n_win 7, topk 1 / 4 / 16, scale =
dim ** -0.5 as in the release), and the peak memory of one attention fwd+bwd on big stage-1-like maps (dim 64,
2 heads, topk 4, batch 1) where the released gather's topk-fold K/V copy and (regions, heads, T, topk*T) score
matrices dominate (OOM is recorded as a row).

Timing includes the routing (region means, affinity, top-k) for every implementation. The released formulation is
timed from its native region-major layout (its block patchifies x before the qkv projection, so q/kv come out
region-major for free) up to its output in the (B, H, W, C) layout; ours reads and writes the natural layout.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch

from ._bench_utils import hbm_floor_ms, peak_memory_gb, row, tensor_bytes, time_fwd_bwd

PATTERN = "routed"
# name: (B, H, W, dim, n_win, topk); heads = dim // 32 as in BiFormer-S (head_dim=32)
CASES = {
    "biformer_s_stage1_56x56": (128, 56, 56, 64, 7, 1),
    "biformer_s_stage2_28x28": (128, 28, 28, 128, 7, 4),
    "biformer_s_stage3_14x14": (128, 14, 14, 256, 7, 16),
}
# peak memory only: name: (B, H, W, dim, n_win, topk)
MEMORY_CASES = {
    "mem_224x224_nwin7": (1, 224, 224, 64, 7, 4),
    "mem_512x512_nwin16": (1, 512, 512, 64, 16, 4),
    "mem_1024x1024_nwin16": (1, 1024, 1024, 64, 16, 4),
}
QUICK = ("biformer_s_stage1_56x56", "biformer_s_stage3_14x14", "mem_224x224_nwin7")
HEAD_DIM = 32


def released_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int) -> Tuple[torch.Tensor, ...]:
    """Natural (B, H, W, heads, d) q, k, v -> the release's region-major q (n, p^2, h, w, c_qk) and joint kv
    (n, p^2, h, w, c_qk + c_v) (``rearrange(x, "n (j h) (i w) c -> n (j i) h w c")`` before its qkv linear)."""
    batch, height, width = q.shape[:3]

    def patchify(x):
        x = x.reshape(batch, n_win, height // n_win, n_win, width // n_win, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(batch, n_win * n_win, height // n_win, width // n_win, -1)

    return patchify(q.flatten(3)), torch.cat([patchify(k.flatten(3)), patchify(v.flatten(3))], dim=-1)


def released_bra_core(q: torch.Tensor, kv: torch.Tensor, heads: int, n_win: int, topk: int,
                      scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The released BiLevelRoutingAttention forward between the qkv projection and lepe/wo (identity kv_down, no
    routing params, hard non-differentiable routing, mul_weight='none'), step for step: region means, router on
    detached means, ``torch.gather`` of the topk-fold K/V copy, dense attention per region. Returns the output
    (n, H, W, heads * d_v) and the routing index (n, p^2, topk)."""
    n, p2, h, w, c_q = q.shape
    c_v = kv.shape[-1] - c_q
    w2 = h * w
    q_pix = q.reshape(n, p2, w2, c_q)
    kv_pix = kv.reshape(n, p2, w2, c_q + c_v)
    q_win, k_win = q.mean([2, 3]), kv[..., :c_q].mean([2, 3])
    logit = (q_win.detach() * scale) @ k_win.detach().transpose(-2, -1)  # TopkRouting, diff_routing=False
    r_idx = torch.topk(logit, k=topk, dim=-1).indices
    topk_kv = torch.gather(kv_pix.view(n, 1, p2, w2, c_q + c_v).expand(-1, p2, -1, -1, -1), dim=2,
                           index=r_idx.view(n, p2, topk, 1, 1).expand(-1, -1, -1, w2, c_q + c_v))
    k_sel, v_sel = topk_kv.split([c_q, c_v], dim=-1)
    # 'n p2 k w2 (m c) -> (n p2) m c (k w2)' and 'n p2 k w2 (m c) -> (n p2) m (k w2) c'
    k_sel = k_sel.reshape(n * p2, topk, w2, heads, c_q // heads).permute(0, 3, 4, 1, 2)
    k_sel = k_sel.reshape(n * p2, heads, c_q // heads, topk * w2)
    v_sel = v_sel.reshape(n * p2, topk, w2, heads, c_v // heads).permute(0, 3, 1, 2, 4)
    v_sel = v_sel.reshape(n * p2, heads, topk * w2, c_v // heads)
    q_pix = q_pix.reshape(n * p2, w2, heads, c_q // heads).transpose(1, 2)  # 'n p2 w2 (m c) -> (n p2) m w2 c'
    attn = torch.softmax((q_pix * scale) @ k_sel, dim=-1)
    out = attn @ v_sel  # (n p2, m, w2, c_v/m)
    # '(n j i) m (h w) c -> n (j h) (i w) (m c)'
    out = out.reshape(n, n_win, n_win, heads, h, w, c_v // heads).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(n, n_win * h, n_win * w, c_v), r_idx


def released_bra_attention(q, k, v, n_win: int, topk: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The released formulation on natural-layout inputs (H, W divisible by n_win): output (B, H, W, heads, d_v)
    and routing index."""
    heads = q.shape[3]
    q_reg, kv_reg = released_layout(q, k, v, n_win)
    out, r_idx = released_bra_core(q_reg, kv_reg, heads, n_win, topk, scale)
    return out.unflatten(-1, (heads, -1)), r_idx


def _peak_only(fwd: Callable[[], torch.Tensor], grad: torch.Tensor, leaves) -> dict:
    def fwdbwd():
        for t in leaves:
            t.grad = None
        fwd().backward(grad)

    fwdbwd()  # warm-up: autotuning and compilation stay out of the measured peak
    return dict(peak_gb=peak_memory_gb(fwdbwd), note="")


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _impls(q, k, v, n_win, topk, scale, grad, measure):
    from vitzoo.ops import routed_attention

    def ours(backend):
        leaves = _leaves(q, k, v)
        return measure(lambda: routed_attention(*leaves, n_win, topk, scale=scale, backend=backend), grad, leaves)

    def released():
        heads = q.shape[3]
        q_reg, kv_reg = _leaves(*released_layout(q, k, v, n_win))
        return measure(lambda: released_bra_core(q_reg, kv_reg, heads, n_win, topk, scale)[0],
                       grad.flatten(3), [q_reg, kv_reg])

    return [("vitzoo_triton", lambda: ours("triton")), ("vitzoo_torch", lambda: ours("torch")),
            ("released_gather", released)]


def run(quick: bool = False) -> List[dict]:
    rows = []
    dtype = torch.bfloat16
    for name, case in {**CASES, **MEMORY_CASES}.items():
        if quick and name not in QUICK:
            continue
        batch, height, width, dim, n_win, topk = case
        heads = dim // HEAD_DIM
        q, k, v = (torch.randn(batch, height, width, heads, HEAD_DIM, device="cuda", dtype=dtype) for _ in range(3))
        grad = torch.randn_like(q)
        scale = dim ** -0.5
        memory_only = name in MEMORY_CASES
        io = tensor_bytes([q, k, v, q])  # q, k, v read once, o written once
        floor = hbm_floor_ms(io)
        floor_bwd = hbm_floor_ms(io + tensor_bytes([q, k, v, q, q, q, k, v]))  # + q k v o dO read, dq dk dv written
        common = dict(dtype="bf16", floor_ms=float("nan") if memory_only else floor)
        for impl, fn in _impls(q, k, v, n_win, topk, scale, grad, _peak_only if memory_only else time_fwd_bwd):
            try:
                values = fn()
            except torch.cuda.OutOfMemoryError as exc:
                values = dict(note=f"OOM: {exc}"[:200])
            except Exception as exc:  # a failing implementation is a row with a note, not a crash
                values = dict(note=f"{type(exc).__name__}: {exc}"[:300])
            torch.cuda.empty_cache()
            nan = float("nan")
            values = dict(dict(fwd_ms=nan, fwdbwd_ms=nan, fwd_gpu_ms=nan, fwdbwd_gpu_ms=nan, peak_gb=nan), **values)
            if impl == "vitzoo_triton" and not memory_only:
                values["note"] = f"fwd+bwd floor {floor_bwd:.4f} ms; {values['note']}".rstrip("; ")
            rows.append(row(PATTERN, name, impl, **common, **values,
                            floor_frac=(floor / values["fwd_ms"]) if not memory_only else nan))
        del q, k, v, grad
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(r)
