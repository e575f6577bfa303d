"""Cascaded group attention over non-overlapping windows, every head of a window in one program (inference: no
backward). Liu et al., "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention", CVPR 2023.

Head ``i`` of a window reads ``x_i + out_{i-1}`` (its channel chunk of the input plus the previous head's output),
projects it to q, k, v (a 1x1 conv, bias included), convolves q depth-wise inside the window (zero padding at the
window's borders), attends over the window's tokens with a LeVit ``|dy|, |dx|`` bias table and hands its output to
head ``i + 1``. Every step is local to one window, so one program carries a window through all heads in registers:
the cascade costs one launch per layer instead of a projection, two partition copies, a convolution and an attention
launch per head, and no q / k / v, logits or intermediate head output ever reaches HBM.

The depth-wise conv shifts q inside registers with 0/1 shift matrices (one ``tl.dot`` per tap, exact: each output
row picks one input row): Triton has no register shuffles across tokens, and a scratch round trip would need a
barrier per head. Taps outside a head's own kernel (heads may use smaller kernels than ``KS``) are skipped.

Windows larger than the map's remainder (a map that is not a multiple of the window) are padded with zero input
tokens that go through the whole cascade, exactly as the reference's zero padding does; only in-map tokens are
stored. Maps no larger than one window use the whole map as the window (``WIN_H, WIN_W = H, W``).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._intmath import next_pow2
from ._launch import launch
from ._neighborhood_common import LOG2E, MAX, MIN_DOT, SUM, alloc
from ._tuning import mode_pruner

__all__ = ["cascaded_attention_fwd", "MAX_WINDOW_TOKENS", "MAX_V_DIM", "KEY_DIMS", "MAX_RADIUS", "MAX_HEADS"]

MAX_WINDOW_TOKENS = 64  # register tiles are (tokens x tokens) for the logits and each tap's shift matrix
MAX_V_DIM = 128  # value (= per-head input) channels, padded to a power of two in registers
KEY_DIMS = (16, 32, 64)  # q / k head dims: tl.dot operands need >= 16 and power-of-two aranges
_RADIUS_BITS = 4  # per-head depth-wise kernel radius, packed _RADIUS_BITS bits per head into one constexpr
MAX_RADIUS = (1 << _RADIUS_BITS) - 1  # kernels up to 31 x 31
MAX_HEADS = 31 // _RADIUS_BITS  # the packed radii stay a 32-bit integer
RADIUS_BITS = tl.constexpr(_RADIUS_BITS)
RADIUS_MASK = tl.constexpr(MAX_RADIUS)
_WARPS = (4, 8)
# Untuned warps (autotuning off): 4 while the value tile is at most 64 channels wide, 8 above (the carry, v and the
# output accumulator are each (tokens x V_BLOCK) fp32 registers).
WIDE_V_BLOCK = 128


def _configs():
    return [triton.Config({}, num_warps=w, num_stages=1) for w in _WARPS]


def _untuned_config(configs, args):
    warps = 8 if int(args["V_BLOCK"]) >= WIDE_V_BLOCK else 4
    return next(c for c in configs if c.num_warps == warps)


_prune = mode_pruner(triton.Config({}, num_warps=4, num_stages=1), untuned=_untuned_config)


@triton.jit
def _depthwise_in_window(q, tap_ptr, bias, radius, t, ty, tx, in_win, KEY_DIM: tl.constexpr, KS: tl.constexpr,
                         WIN_H: tl.constexpr, WIN_W: tl.constexpr, DOT_PREC: tl.constexpr):
    """``bias + sum over taps of tap[dy, dx] * q[token + (dy, dx)]`` for every window token, fp32; q: (tokens,
    KEY_DIM) in the input dtype, tap_ptr: this head's (KS*KS, KEY_DIM) fp32 taps, tap-major. Taps farther than
    ``radius`` from the centre are skipped (zero for this head)."""
    d = tl.arange(0, KEY_DIM)
    acc = tl.zeros(q.shape, tl.float32) + bias[None, :]
    for a in tl.static_range(KS):
        for b in tl.static_range(KS):
            dy = a - KS // 2
            dx = b - KS // 2
            if (dy <= radius) & (dy >= -radius) & (dx <= radius) & (dx >= -radius):
                src_ok = in_win & (ty + dy >= 0) & (ty + dy < WIN_H) & (tx + dx >= 0) & (tx + dx < WIN_W)
                shift = ((t[None, :] == (t + dy * WIN_W + dx)[:, None]) & src_ok[:, None]).to(q.dtype)
                tap = tl.load(tap_ptr + (a * KS + b) * KEY_DIM + d)
                acc += tl.dot(shift, q, input_precision=DOT_PREC) * tap[None, :]
    return acc


@triton.autotune(configs=_configs(), key=["NHEADS", "KEY_DIM", "V_DIM", "WIN_H", "WIN_W", "KS"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _cascaded_attention_fwd_kernel(
    X,  # (B, H, W, heads * V_DIM) through its strides: head i reads channels [i * V_DIM, (i + 1) * V_DIM)
    W_QKV,  # (heads, V_DIM [in], 2 * KEY_DIM + V_DIM [out: q, k, v]) contiguous, X's dtype
    B_QKV,  # (heads, 2 * KEY_DIM + V_DIM) fp32
    W_DW,  # (heads, KS * KS, KEY_DIM) fp32, tap-major, smaller kernels zero-padded to KS x KS around the centre
    B_DW,  # (heads, KEY_DIM) fp32
    TABLE,  # (heads, TABLE_RES * TABLE_RES) fp32 attention biases, indexed |dy| * TABLE_RES + |dx|
    OUT,  # (B, H, W, heads * V_DIM), channel stride 1
    stride_xb, stride_xy, stride_xx, stride_xc,
    stride_ob, stride_oy, stride_ox,
    H, W, WINDOWS_X, WINDOWS_PER_IMAGE,
    qk_scale,  # softmax scale * log2(e)
    NHEADS: tl.constexpr, KEY_DIM: tl.constexpr, V_DIM: tl.constexpr, V_BLOCK: tl.constexpr,
    WIN_H: tl.constexpr, WIN_W: tl.constexpr, BLOCK_N: tl.constexpr,
    KS: tl.constexpr, RADII: tl.constexpr,  # largest kernel; per-head radius, RADIUS_BITS bits each
    TABLE_RES: tl.constexpr, RELU: tl.constexpr, DOT_PREC: tl.constexpr,
):
    QKV_OUT: tl.constexpr = 2 * KEY_DIM + V_DIM
    dtype = X.dtype.element_ty

    # ---- this program's window and its tokens (row-major inside the window, padded to BLOCK_N)
    pid = tl.program_id(0)
    b = (pid // WINDOWS_PER_IMAGE).to(tl.int64)
    win = pid % WINDOWS_PER_IMAGE
    t = tl.arange(0, BLOCK_N)
    ty = t // WIN_W
    tx = t % WIN_W
    in_win = t < WIN_H * WIN_W
    y = (win // WINDOWS_X) * WIN_H + ty
    x = (win % WINDOWS_X) * WIN_W + tx
    in_map = in_win & (y < H) & (x < W)
    x_tok = X + b * stride_xb + y * stride_xy + x * stride_xx
    o_tok = OUT + b * stride_ob + y * stride_oy + x * stride_ox

    c = tl.arange(0, V_BLOCK)
    c_ok = c < V_DIM
    d = tl.arange(0, KEY_DIM)
    # head-independent: the bias-table entry of every (query, key) pair, and which pairs are real
    pair_ok = in_win[:, None] & in_win[None, :]
    rel = tl.abs(ty[:, None] - ty[None, :]) * TABLE_RES + tl.abs(tx[:, None] - tx[None, :])

    radii = tl.full([], RADII, tl.int32)
    carry = tl.zeros([BLOCK_N, V_BLOCK], tl.float32)  # the previous head's output (zero before head 0)
    for h in range(NHEADS):
        x_in = tl.load(x_tok[:, None] + (h * V_DIM + c)[None, :] * stride_xc, mask=in_map[:, None] & c_ok[None, :],
                       other=0.0)
        feat = (carry + x_in.to(tl.float32)).to(dtype)  # rounded like the reference's add in the input dtype

        # ---- q, k, v: one 1x1 projection, bias included
        w_rows = W_QKV + h * V_DIM * QKV_OUT + c[:, None] * QKV_OUT
        b_head = B_QKV + h * QKV_OUT
        w_q = tl.load(w_rows + d[None, :], mask=c_ok[:, None], other=0.0)
        w_k = tl.load(w_rows + KEY_DIM + d[None, :], mask=c_ok[:, None], other=0.0)
        w_v = tl.load(w_rows + 2 * KEY_DIM + c[None, :], mask=c_ok[:, None] & c_ok[None, :], other=0.0)
        q = (tl.dot(feat, w_q, input_precision=DOT_PREC) + tl.load(b_head + d)[None, :]).to(dtype)
        k = (tl.dot(feat, w_k, input_precision=DOT_PREC) + tl.load(b_head + KEY_DIM + d)[None, :]).to(dtype)
        v = tl.dot(feat, w_v, input_precision=DOT_PREC)
        v = (v + tl.load(b_head + 2 * KEY_DIM + c, mask=c_ok, other=0.0)[None, :]).to(dtype)

        # ---- the query's depth-wise conv inside the window
        radius = (radii >> (RADIUS_BITS * h)) & RADIUS_MASK
        q = _depthwise_in_window(q, W_DW + h * KS * KS * KEY_DIM, tl.load(B_DW + h * KEY_DIM + d), radius, t, ty,
                                 tx, in_win, KEY_DIM, KS, WIN_H, WIN_W, DOT_PREC).to(dtype)

        # ---- softmax(scale * q k^T + bias) v over the window (base 2)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        s += tl.load(TABLE + h * TABLE_RES * TABLE_RES + rel, mask=pair_ok, other=0.0) * LOG2E
        s = tl.where(in_win[None, :], s, float("-inf"))
        p = tl.math.exp2(s - tl.reduce(s, 1, MAX)[:, None])
        out = tl.dot(p.to(dtype), v, input_precision=DOT_PREC) / tl.reduce(p, 1, SUM)[:, None]
        out = out.to(dtype)

        if RELU:
            stored = tl.maximum(out, 0.0)
        else:
            stored = out
        tl.store(o_tok[:, None] + (h * V_DIM + c)[None, :], stored, mask=in_map[:, None] & c_ok[None, :])
        carry = out.to(tl.float32)


def cascaded_attention_fwd(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, w_dw: torch.Tensor,
                           b_dw: torch.Tensor, radii, table: torch.Tensor, window, scale: float,
                           relu: bool) -> torch.Tensor:
    """Launch the kernel. x: (B, H, W, heads * d_v) (any strides, e.g. the NHWC view of an NCHW or channels_last
    map); w_qkv: (heads, d_v, 2 * key_dim + d_v) contiguous in x's dtype; b_qkv: (heads, 2 * key_dim + d_v) fp32;
    w_dw: (heads, KS * KS, key_dim) fp32; b_dw: (heads, key_dim) fp32; radii: each head's kernel radius (<= KS // 2);
    table: (heads, R * R) fp32; window: (WIN_H, WIN_W) tiles of the map. Returns (B, H, W, heads * d_v) contiguous
    in x's dtype, ReLU applied to the stored values when ``relu`` (the cascade itself uses the values before it)."""
    batch, height, width, channels = x.shape
    heads, v_dim, qkv_out = w_qkv.shape
    key_dim = (qkv_out - v_dim) // 2
    taps = w_dw.shape[1]
    ks = int(round(taps ** 0.5))
    win_h, win_w = window
    table_res = int(round(table.shape[1] ** 0.5))
    if (channels != heads * v_dim or key_dim not in KEY_DIMS or v_dim > MAX_V_DIM or ks * ks != taps
            or w_dw.shape != (heads, taps, key_dim) or b_qkv.shape != (heads, qkv_out) or b_dw.shape != (heads, key_dim)
            or table.shape != (heads, table_res * table_res) or max(win_h, win_w) > table_res
            or win_h * win_w > MAX_WINDOW_TOKENS or len(radii) != heads or max(radii) > ks // 2
            or ks // 2 > MAX_RADIUS or heads > MAX_HEADS):
        raise ValueError(
            f"cascaded_attention_fwd: inconsistent arguments: x {tuple(x.shape)}, w_qkv {tuple(w_qkv.shape)}, "
            f"b_qkv {tuple(b_qkv.shape)}, w_dw {tuple(w_dw.shape)}, b_dw {tuple(b_dw.shape)}, radii {tuple(radii)}, "
            f"table {tuple(table.shape)}, window {tuple(window)} (key_dim in {KEY_DIMS}, d_v <= {MAX_V_DIM}, at most "
            f"{MAX_HEADS} heads, window <= {MAX_WINDOW_TOKENS} tokens and within the table)")
    out = alloc((batch, height, width, channels), device=x.device, dtype=x.dtype)
    windows_y, windows_x = -(-height // win_h), -(-width // win_w)
    n_programs = batch * windows_y * windows_x
    if n_programs == 0:
        return out
    packed_radii = sum(int(r) << (_RADIUS_BITS * i) for i, r in enumerate(radii))
    launch(_cascaded_attention_fwd_kernel, (n_programs,),
           x, w_qkv, b_qkv, w_dw, b_dw, table, out,
           *x.stride(), out.stride(0), out.stride(1), out.stride(2),
           height, width, windows_x, windows_y * windows_x,
           float(scale) * math.log2(math.e),  # the kernel's softmax runs in base 2
           NHEADS=heads, KEY_DIM=key_dim, V_DIM=v_dim, V_BLOCK=max(MIN_DOT, next_pow2(v_dim)),
           WIN_H=win_h, WIN_W=win_w, BLOCK_N=max(MIN_DOT, next_pow2(win_h * win_w)),
           KS=ks, RADII=packed_radii, TABLE_RES=table_res, RELU=bool(relu),
           DOT_PREC="ieee" if x.dtype == torch.float32 else "tf32")
    return out
