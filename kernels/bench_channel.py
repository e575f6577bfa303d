"""Channel-attention (DaViT) benchmark: the Triton kernels vs torch's formulation (timm's
``ChannelAttention``: two batched matmuls, which copy the head-split q, k, v views to contiguous tensors and the
output back) on the views of one bf16 qkv buffer, at the DaViT-T stage shapes at 224, batch 256, through to the
(B, N, C) tensor the projection reads; forward (no autograd) and forward+backward (gradient of the qkv buffer).
HBM floor (forward): q, k, v read and the output written once.

* ``vitzoo_triton``: :func:`vitzoo.ops.channel_attention`;
* ``torch``: :func:`vitzoo.ops.channel_attention_torch` plus the ``.reshape(B, N, C)`` copy timm's module does;
* ``torch_compile`` (full runs only): ``torch.compile`` of the torch formulation.
"""
from __future__ import annotations

from typing import List

import torch

from ._bench_utils import gpu_time_ms, hbm_floor_ms, row, time_ms

PATTERN = "channel"
BATCH = 256
HEAD_DIM = 32
CASES = (("davit_t_s1", 3136, 3), ("davit_t_s2", 784, 6), ("davit_t_s3", 196, 12), ("davit_t_s4", 49, 24))


def _impls(quick: bool):
    from vitzoo.ops import channel_attention, channel_attention_torch

    def ours(q, k, v):
        return channel_attention(q, k, v, HEAD_DIM ** -0.5, backend="triton").reshape(*q.shape[:2], -1)

    def plain(q, k, v):
        return channel_attention_torch(q, k, v, HEAD_DIM ** -0.5).reshape(*q.shape[:2], -1)

    impls = [("vitzoo_triton", ours), ("torch", plain)]
    if not quick:
        impls.append(("torch_compile", torch.compile(plain, dynamic=False)))
    return impls


def run(quick: bool = False) -> List[dict]:
    from vitzoo.ops import channel_attention_torch

    rows: List[dict] = []
    for case, tokens, heads in (CASES[::2] if quick else CASES):
        qkv = torch.randn(BATCH, tokens, 3, heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(BATCH, tokens, heads * HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        floor = hbm_floor_ms(4 * BATCH * tokens * heads * HEAD_DIM * qkv.element_size())
        ref = channel_attention_torch(*qkv.detach().double().unbind(2), HEAD_DIM ** -0.5).reshape(BATCH, tokens, -1)
        for impl, fn in _impls(quick):
            try:
                def fwd(fn=fn):
                    with torch.no_grad():
                        return fn(*qkv.unbind(2))

                def fwdbwd(fn=fn):
                    return torch.autograd.grad(fn(*qkv.unbind(2)), qkv, grad)

                err = float((fwd().double() - ref).abs().max())
                fwdbwd()
                values = dict(fwd_ms=time_ms(fwd), fwd_gpu_ms=gpu_time_ms(fwd), fwdbwd_ms=time_ms(fwdbwd),
                              fwdbwd_gpu_ms=gpu_time_ms(fwdbwd))
                note = f"B={BATCH} N={tokens} heads={heads} d={HEAD_DIM} max|err|={err:.2e}"
            except Exception as exc:  # noqa: BLE001 - a failing implementation is a result
                values, note = {}, f"failed: {type(exc).__name__}: {exc}"[:200]
            rows.append(row(PATTERN, case, impl, dtype="bf16", floor_ms=floor, note=note, **values))
        del qkv, grad
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
