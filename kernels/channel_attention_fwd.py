"""Forward of DaViT's channel attention, per (batch, head): ``out = q @ softmax(scale * k^T @ v, dim=-1)^T``.

The attention matrix is (d x d) over the head's channels and global over the N tokens (Ding et al., "DaViT: Dual
Attention Vision Transformers", ECCV 2022). In torch it is two batched matmuls over (B, heads, N, d) tensors; q, k, v
are head-split views of one token-major qkv projection, whose (batch, head) strides no single cuBLAS batch stride
covers, so torch copies q, k and v to contiguous tensors first and the output back to token-major afterwards: four
full copies per block, more HBM traffic than the matmuls themselves.

One program per (batch, head) reads the tensors in place, through their strides:
1. ``kv = k^T @ v`` accumulated in fp32 over tiles of ``BLOCK_N`` tokens;
2. the row softmax of ``scale * kv`` in fp32, in registers (d x d, d <= 64);
3. ``out = q @ attn^T`` per token tile, written in ``out``'s layout (token-major from the op).
HBM traffic: q, k, v read once, out written once. The d x d softmax is cast to the input dtype before the second
product, as torch's autocast matmul does. With ``SAVE_ATTN`` it also stores the fp32 softmax, (B, heads, d, d),
for the backward (``channel_attention_bwd.py``); inference calls skip that write.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._layout import empty_in_layout_of
from ._tuning import mode_pruner

__all__ = ["channel_attention_fwd", "check_inputs", "make_configs", "prune_configs", "SUPPORTED_HEAD_DIMS",
           "SUPPORTED_DTYPES"]

SUPPORTED_HEAD_DIMS = (16, 32, 64)  # tl.dot needs every dim >= 16; tl.arange needs powers of two
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INTERPRET_BLOCK_N = 16  # tokens per tile under the CPU interpreter: several tiles even on tiny test maps

# (BLOCK_N tokens per tile, num_warps, num_stages); the first is the default without autotuning
_CONFIGS = ((64, 4, 3), (128, 4, 3), (32, 4, 3), (128, 8, 3), (64, 4, 2))


# one tiny tile under the interpreter; the first config without autotuning; all of them otherwise
prune_configs = mode_pruner(triton.Config({"BLOCK_N": INTERPRET_BLOCK_N}, num_warps=4, num_stages=1))


def make_configs() -> List[triton.Config]:
    """The token-tile configs (shared with the backward kernel)."""
    return [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s) for n, w, s in _CONFIGS]


@triton.autotune(configs=make_configs(), key=["N", "HEAD_DIM"], prune_configs_by={"early_config_prune": prune_configs})
@triton.jit
def _channel_attention_fwd_kernel(
    Q, K, V, Out, Attn,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_ob, stride_on, stride_oh, stride_od,
    H, N, scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, SAVE_ATTN: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_base = K + b * stride_kb + h * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + b * stride_vb + h * stride_vh + offs_d[None, :] * stride_vd

    kv = tl.zeros((HEAD_DIM, HEAD_DIM), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        rows = start + offs_n
        row_ok = rows[:, None] < N
        k = tl.load(k_base + rows[:, None] * stride_kn, mask=row_ok, other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vn, mask=row_ok, other=0.0)
        kv += tl.dot(tl.trans(k), v, input_precision="ieee")

    logits = kv * scale
    p = tl.exp(logits - tl.max(logits, 1)[:, None])
    attn = p / tl.sum(p, 1)[:, None]
    if SAVE_ATTN:  # fp32 (d, d) per (batch, head), for the backward
        tl.store(Attn + pid * HEAD_DIM * HEAD_DIM + offs_d[:, None] * HEAD_DIM + offs_d[None, :], attn)
    attn_t = tl.trans(attn).to(Q.dtype.element_ty)  # (j, i): out[n, i] = sum_j q[n, j] attn[i, j]

    q_base = Q + b * stride_qb + h * stride_qh + offs_d[None, :] * stride_qd
    o_base = Out + b * stride_ob + h * stride_oh + offs_d[None, :] * stride_od
    for start in range(0, N, BLOCK_N):
        rows = start + offs_n
        row_ok = rows[:, None] < N
        q = tl.load(q_base + rows[:, None] * stride_qn, mask=row_ok, other=0.0)
        out = tl.dot(q, attn_t, input_precision="ieee")
        tl.store(o_base + rows[:, None] * stride_on, out.to(Out.dtype.element_ty), mask=row_ok)


def channel_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                          save_attn: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """q, k, v: (B, N, heads, d), one dtype, any strides. Returns ``out`` (B, N, heads, d) in q's memory order
    (token-major for views of a qkv projection: a free reshape to (B, N, heads * d)) and, when ``save_attn``, the
    fp32 softmax (B, heads, d, d) for the backward (else None)."""
    batch, tokens, heads, head_dim = q.shape
    check_inputs(q, k, v)
    out = empty_in_layout_of(q)
    attn = torch.empty((batch, heads, head_dim, head_dim), device=q.device, dtype=torch.float32) if save_attn else None
    if out.numel() == 0:
        return out, attn
    launch(_channel_attention_fwd_kernel, (batch * heads,),
           q, k, v, out, attn if attn is not None else out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
           heads, tokens, float(scale), HEAD_DIM=head_dim, SAVE_ATTN=save_attn)
    return out, attn


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    head_dim = q.shape[-1]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"channel attention kernel: head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    if k.shape != q.shape or v.shape != q.shape or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"channel attention kernel: q, k, v must share shape and dtype, got {tuple(q.shape)} "
                         f"{q.dtype}, {tuple(k.shape)} {k.dtype}, {tuple(v.shape)} {v.dtype}")
