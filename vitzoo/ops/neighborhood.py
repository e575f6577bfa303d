"""Generalized 2-D neighborhood attention: NAT/DiNAT sliding windows, MaxViT block and grid attention, Swin/DaViT/
EfficientViT non-overlapping windows, all as one op over the natural (B, H, W, heads, head_dim) layout."""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import torch

from ._backend import resolve_backend
from ._geometry import AxisWindows, axis_windows, check_axis

__all__ = ["neighborhood_attention_2d", "neighborhood_attention_2d_torch", "NeighborhoodArgs"]

IntPair = Union[int, Sequence[int]]


def _pair(value: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return value  # type: ignore[return-value]


class NeighborhoodArgs:
    """Validated arguments of one neighborhood-attention call (sizes, kernel, dilation, stride, scale), built from
    the tensors' shapes. Shared between calls with equal arguments (:func:`_call_args`): read-only."""

    def __init__(self, q_shape, k_shape, v_shape, kernel_size, dilation, stride, rpb_shape, bias_shape, scale):
        q_shape, k_shape, v_shape = tuple(q_shape), tuple(k_shape), tuple(v_shape)
        if len(q_shape) != 5 or len(k_shape) != 5 or len(v_shape) != 5:
            raise ValueError(
                "neighborhood_attention_2d expects q, k, v in the (B, H, W, heads, head_dim) layout; got shapes "
                f"{q_shape}, {k_shape}, {v_shape}"
            )
        if q_shape != k_shape:
            raise ValueError(f"q and k must have the same shape, got {q_shape} and {k_shape}")
        if v_shape[:4] != q_shape[:4]:
            raise ValueError(f"v must match q in (B, H, W, heads) = {q_shape[:4]}, got {v_shape[:4]}")
        self.batch, self.height, self.width, self.heads, self.head_dim = q_shape
        self.v_dim = v_shape[-1]
        self.kernel = _pair(kernel_size, "kernel_size")
        self.dilation = _pair(dilation, "dilation")
        self.stride = _pair(stride, "stride")
        for axis, length, kern, dil, st in zip(("height", "width"), (self.height, self.width), self.kernel,
                                               self.dilation, self.stride):
            check_axis(length, kern, dil, st, axis)
        kh, kw = self.kernel
        if rpb_shape is not None and tuple(rpb_shape) != (self.heads, 2 * kh - 1, 2 * kw - 1):
            raise ValueError(
                f"rpb must have shape (heads, 2*kh-1, 2*kw-1) = {(self.heads, 2 * kh - 1, 2 * kw - 1)}, "
                f"got {tuple(rpb_shape)}"
            )
        if bias_shape is not None and tuple(bias_shape) != (self.heads, kh * kw, kh * kw):
            raise ValueError(
                f"bias must have shape (heads, kh*kw, kh*kw) = {(self.heads, kh * kw, kh * kw)}, "
                f"got {tuple(bias_shape)}"
            )
        self.scale = float(scale) if scale is not None else self.head_dim ** -0.5

    def windows(self, device) -> Tuple[AxisWindows, AxisWindows]:
        return (
            axis_windows(self.height, self.kernel[0], self.dilation[0], self.stride[0], device),
            axis_windows(self.width, self.kernel[1], self.dilation[1], self.stride[1], device),
        )


@functools.lru_cache(maxsize=1024)
def _cached_args(*key) -> NeighborhoodArgs:
    return NeighborhoodArgs(*key)


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def _call_args(q, k, v, kernel_size, dilation, stride, rpb, bias, scale) -> NeighborhoodArgs:
    """The validated arguments of a call, validated once per distinct shapes and parameters: models repeat the same
    call every step, and the checks cost tens of microseconds of host time per call."""
    key = (q.shape, k.shape, v.shape, _frozen(kernel_size), _frozen(dilation), _frozen(stride),
           None if rpb is None else rpb.shape, None if bias is None else bias.shape, scale)
    if isinstance(scale, torch.Tensor):  # hashed by identity: never a cache key
        return NeighborhoodArgs(*key)
    try:
        return _cached_args(*key)
    except TypeError:  # an unhashable argument: validate without the cache
        return NeighborhoodArgs(*key)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _NeighborhoodAttentionTorch(torch.autograd.Function):
    """Reference NA with a hand-written backward: one K/V-sized temporary at a time (never k*k gathered copies); the
    only saved intermediate is the (B, H, W, heads, kh*kw) probability tensor."""

    @staticmethod
    def forward(ctx, q, k, v, rpb, bias, args: NeighborhoodArgs):
        cdt = _compute_dtype(q.dtype)
        # contiguous copies: every index_select below then streams memory instead of chasing strides
        qc, kc, vc = (t.to(cdt).contiguous() for t in (q, k, v))
        (wy, wx) = args.windows(q.device)
        kh, kw = args.kernel
        dy, dx = args.dilation
        logits = _position_terms(args, wy, wx, rpb, bias, cdt, q.device)  # (H, W, heads, K) or None
        scores = qc.new_empty(*q.shape[:4], kh * kw)
        for a in range(kh):
            k_rows = kc.index_select(1, wy.start + dy * a)
            for b in range(kw):
                k_off = k_rows.index_select(2, wx.start + dx * b)
                scores[..., a * kw + b] = (qc * k_off).sum(-1)
        scores.mul_(args.scale)
        if logits is not None:
            scores.add_(logits)
        probs = torch.softmax(scores, dim=-1)
        out = qc.new_zeros(*q.shape[:4], args.v_dim)
        for a in range(kh):
            v_rows = vc.index_select(1, wy.start + dy * a)
            for b in range(kw):
                out.addcmul_(probs[..., a * kw + b, None], v_rows.index_select(2, wx.start + dx * b))
        ctx.save_for_backward(q, k, v, probs, out)
        ctx.args = args
        ctx.has_rpb, ctx.has_bias = rpb is not None, bias is not None
        ctx.param_dtypes = (None if rpb is None else rpb.dtype, None if bias is None else bias.dtype)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs, out = ctx.saved_tensors
        args: NeighborhoodArgs = ctx.args
        cdt = probs.dtype
        qc, kc, vc, go = (t.to(cdt).contiguous() for t in (q, k, v, grad_out))
        (wy, wx) = args.windows(q.device)
        kh, kw = args.kernel
        dy, dx = args.dilation
        grad_probs = torch.empty_like(probs)
        grad_v = torch.zeros_like(vc)
        for a in range(kh):
            ky = wy.start + dy * a
            v_rows = vc.index_select(1, ky)
            gv_rows = torch.zeros_like(vc)
            for b in range(kw):
                kx = wx.start + dx * b
                grad_probs[..., a * kw + b] = (go * v_rows.index_select(2, kx)).sum(-1)
                gv_rows.index_add_(2, kx, probs[..., a * kw + b, None] * go)
            grad_v.index_add_(1, ky, gv_rows)
        delta = (go * out).sum(-1, keepdim=True)
        grad_scores = probs * (grad_probs - delta)  # d loss / d logits
        grad_q = torch.zeros_like(qc)
        grad_k = torch.zeros_like(kc)
        for a in range(kh):
            ky = wy.start + dy * a
            k_rows = kc.index_select(1, ky)
            gk_rows = torch.zeros_like(kc)
            for b in range(kw):
                kx = wx.start + dx * b
                gs = grad_scores[..., a * kw + b, None]
                grad_q.addcmul_(gs, k_rows.index_select(2, kx))
                gk_rows.index_add_(2, kx, gs * qc)
            grad_k.index_add_(1, ky, gk_rows)
        grad_q.mul_(args.scale)
        grad_k.mul_(args.scale)
        grad_rpb = grad_bias = None
        if ctx.has_rpb or ctx.has_bias:
            gs_sum = grad_scores.sum(0).permute(2, 0, 1, 3)  # (heads, H, W, K)
            if ctx.has_rpb:
                flat = _rpb_flat_index(args, wy, wx)
                grad_rpb = gs_sum.new_zeros(args.heads, (2 * kh - 1) * (2 * kw - 1))
                grad_rpb.index_add_(1, flat.reshape(-1), gs_sum.reshape(args.heads, -1))
                grad_rpb = grad_rpb.view(args.heads, 2 * kh - 1, 2 * kw - 1).to(ctx.param_dtypes[0])
            if ctx.has_bias:
                flat = _bias_flat_index(args, wy, wx)
                grad_bias = gs_sum.new_zeros(args.heads, (kh * kw) ** 2)
                grad_bias.index_add_(1, flat.reshape(-1), gs_sum.reshape(args.heads, -1))
                grad_bias = grad_bias.view(args.heads, kh * kw, kh * kw).to(ctx.param_dtypes[1])
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_rpb, grad_bias, None


def _rpb_flat_index(args: NeighborhoodArgs, wy: AxisWindows, wx: AxisWindows) -> torch.Tensor:
    """(H, W, kh*kw) index into the flattened (2kh-1)*(2kw-1) table: rel = a - local + k - 1 along each axis."""
    kh, kw = args.kernel
    ry = torch.arange(kh, device=wy.start.device)[None, :] - wy.local[:, None] + kh - 1  # (H, kh)
    rx = torch.arange(kw, device=wx.start.device)[None, :] - wx.local[:, None] + kw - 1  # (W, kw)
    return (ry[:, None, :, None] * (2 * kw - 1) + rx[None, :, None, :]).reshape(args.height, args.width, kh * kw)


def _bias_flat_index(args: NeighborhoodArgs, wy: AxisWindows, wx: AxisWindows) -> torch.Tensor:
    """(H, W, kh*kw) index into the flattened (kh*kw, kh*kw) dense bias: row = query's window slot, col = key slot."""
    kh, kw = args.kernel
    row = wy.local[:, None] * kw + wx.local[None, :]  # (H, W)
    return row[:, :, None] * (kh * kw) + torch.arange(kh * kw, device=row.device)


def _position_terms(args, wy, wx, rpb, bias, dtype, device) -> Optional[torch.Tensor]:
    """Sum of the rpb and dense-bias logits as a (H, W, heads, kh*kw) tensor, or None when neither is given."""
    terms = None
    if rpb is not None:
        flat = _rpb_flat_index(args, wy, wx)
        terms = rpb.to(dtype).reshape(args.heads, -1)[:, flat].permute(1, 2, 0, 3)
    if bias is not None:
        flat = _bias_flat_index(args, wy, wx)
        b = bias.to(dtype).reshape(args.heads, -1)[:, flat].permute(1, 2, 0, 3)
        terms = b if terms is None else terms + b
    return terms


def neighborhood_attention_2d_torch(q, k, v, kernel_size, dilation=1, stride=1, rpb=None, bias=None, scale=None):
    """Pure-torch reference of :func:`neighborhood_attention_2d` (CPU and fallback path; any dtype incl. float64)."""
    args = _call_args(q, k, v, kernel_size, dilation, stride, rpb, bias, scale)
    return _NeighborhoodAttentionTorch.apply(q, k, v, rpb, bias, args)


def neighborhood_attention_2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: IntPair,
    dilation: IntPair = 1,
    stride: IntPair = 1,
    rpb: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Generalized neighborhood attention over a 2-D token map.

    Args:
        q, k: (B, H, W, heads, d). v: (B, H, W, heads, d_v).
        kernel_size, dilation, stride: int or (height, width) pairs; per axis ``kernel * dilation <= size`` and
            ``1 <= stride <= kernel``.
        rpb: optional learnable relative-position table (heads, 2kh-1, 2kw-1).
        bias: optional dense additive bias (heads, kh*kw, kh*kw) indexed [query's slot in its window, key slot].
        scale: logit scale, default ``d ** -0.5``.
        backend: "auto" | "torch" | "triton" (see :mod:`vitzoo.ops._backend`; env ``VITZOO_ATTN_BACKEND`` wins).

    Semantics (per head, per axis as in :mod:`vitzoo.ops._geometry`): query (y, x) attends to the kh*kw keys
    ``(sy + dy*a, sx + dx*b)`` where ``sy, sx`` are its window starts (NATTEN's: windows shifted inward at borders,
    queries of one stride run share their leader's window) with logits::

        scale * <q[y, x], k[ky, kx]> + rpb[h, a - ly + kh - 1, b - lx + kw - 1] + bias[h, ly*kw + lx, a*kw + b]

    where ``(ly, lx)`` is the query's own slot in its window; softmax over the kh*kw keys; output = weighted sum
    of v. ``stride == kernel_size`` gives non-overlapping windows (MaxViT block, Swin, DaViT spatial, EfficientViT
    local) and ``dilation == size // kernel`` with ``stride == kernel_size`` gives MaxViT grid attention. The
    rpb index is "key minus query", so a Swin-style table ``T[h, qy - ky + k - 1, ...]`` maps to ``T.flip(1, 2)``.

    Returns (B, H, W, heads, d_v) in q's dtype. Low-precision inputs are accumulated in float32.
    """
    args = _call_args(q, k, v, kernel_size, dilation, stride, rpb, bias, scale)

    def unsupported():
        from ._neighborhood_triton import unsupported_reason

        return unsupported_reason(q, k, v, args, rpb, bias)

    if resolve_backend(backend, q, k, v, op="neighborhood_attention_2d", unsupported_reason=unsupported) == "triton":
        from ._neighborhood_triton import neighborhood_attention_2d_triton

        return neighborhood_attention_2d_triton(q, k, v, args, rpb, bias)
    return _NeighborhoodAttentionTorch.apply(q, k, v, rpb, bias, args)
