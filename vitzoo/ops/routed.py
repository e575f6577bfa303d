"""Bi-level routing attention (BRA) of BiFormer (Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing
Attention", CVPR 2023) as one op over the natural (B, H, W, heads, head_dim) layout: coarse region-to-region routing,
then token attention restricted to each query region's top-k routed regions."""
from __future__ import annotations

import functools
from typing import Tuple, Union

import torch

from ._backend import resolve_backend

__all__ = ["routed_attention", "routed_attention_torch", "route_regions", "RoutedArgs", "region_geometry"]


def region_geometry(height: int, width: int, n_win: int) -> Tuple[int, int]:
    """Region size (rows, cols) = (ceil(H / n_win), ceil(W / n_win)) of an n_win x n_win region grid."""
    return -(-height // n_win), -(-width // n_win)


def _check_n_win(n_win) -> int:
    if isinstance(n_win, bool) or not isinstance(n_win, int) or n_win < 1:
        raise ValueError(f"n_win must be a positive int (regions per side), got {n_win!r}")
    return n_win


def _check_topk(topk, n_win: int) -> int:
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= n_win * n_win:
        raise ValueError(f"topk must be an int in 1..n_win**2 = 1..{n_win * n_win}, got {topk!r}")
    return topk


class RoutedArgs:
    """Validated arguments of one routed-attention call (sizes, region grid, top-k, scale)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, topk: int, scale):
        if q.dim() != 5 or k.dim() != 5 or v.dim() != 5:
            raise ValueError(
                "routed_attention expects q, k, v in the (B, H, W, heads, head_dim) layout; got shapes "
                f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        if q.shape != k.shape:
            raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
        if v.shape[:4] != q.shape[:4]:
            raise ValueError(f"v must match q in (B, H, W, heads) = {tuple(q.shape[:4])}, got {tuple(v.shape[:4])}")
        if q.numel() == 0 or v.numel() == 0:
            raise ValueError(f"routed_attention needs non-empty inputs (head_dim >= 1), got {tuple(q.shape)}, "
                             f"{tuple(v.shape)}")
        self.batch, self.height, self.width, self.heads, self.head_dim = q.shape
        self.v_dim = v.shape[-1]
        self.n_win = _check_n_win(n_win)
        self.topk = _check_topk(topk, n_win)
        self.region_h, self.region_w = region_geometry(self.height, self.width, n_win)
        self.regions = n_win * n_win
        self.tokens = self.region_h * self.region_w
        self.scale = float(scale) if scale is not None else self.head_dim ** -0.5


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _to_regions(x: torch.Tensor, n_win: int, rh: int, rw: int) -> torch.Tensor:
    """(B, H, W, heads, c) -> (B * n_win**2, heads, rh * rw, c): zero-padded to the region grid, region-major."""
    batch, height, width, heads, c = x.shape
    x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, n_win * rw - width, 0, n_win * rh - height))
    x = x.view(batch, n_win, rh, n_win, rw, heads, c).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(batch * n_win * n_win, heads, rh * rw, c)


def _from_regions(x: torch.Tensor, args: RoutedArgs) -> torch.Tensor:
    """Inverse of :func:`_to_regions`, cropping the padding: -> (B, H, W, heads, c)."""
    n, rh, rw = args.n_win, args.region_h, args.region_w
    x = x.view(args.batch, n, n, args.heads, rh, rw, x.shape[-1]).permute(0, 1, 4, 2, 5, 3, 6)
    x = x.reshape(args.batch, n * rh, n * rw, args.heads, x.shape[-1])
    return x[:, : args.height, : args.width]


def _token_valid(args: RoutedArgs, device) -> torch.Tensor:
    """(regions, tokens) bool: the token lies inside the (H, W) map (False for padding)."""
    n, rh, rw = args.n_win, args.region_h, args.region_w
    ys = (torch.arange(n, device=device)[:, None] * rh + torch.arange(rh, device=device)) < args.height  # (n, rh)
    xs = (torch.arange(n, device=device)[:, None] * rw + torch.arange(rw, device=device)) < args.width  # (n, rw)
    return (ys[:, None, :, None] & xs[None, :, None, :]).reshape(n * n, rh * rw)


def route_regions(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int) -> torch.Tensor:
    """BiFormer's region router: (B, n_win**2, topk) int64 indices of the routed key regions of each query region.

    q, k: (B, H, W, heads, d) (or (B, H, W, C)). Computed on detached tensors, no parameters: the region means of q
    and k over the region's *valid* tokens and over *all* heads' channels (the full C = heads * d vector, one
    routing shared by every head), affinity = q_mean @ k_mean^T (accumulated in float32, float64 for float64
    inputs; BiFormer's positive logit scale never changes the top-k), then ``torch.topk`` over key regions.
    Key regions without any valid token (possible when H or W is not a multiple of n_win) get affinity -inf, so
    they are only picked when topk exceeds the number of valid regions. Fully-padded query regions get mean 0.
    Ties: whatever ``torch.topk`` returns on that device (like the released code); the order of the k indices does
    not change the attention output.
    """
    if q.dim() not in (4, 5) or q.shape != k.shape:
        raise ValueError(f"route_regions expects q, k of one shape (B, H, W, heads, d) or (B, H, W, C), got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    n_win = _check_n_win(n_win)
    topk = _check_topk(topk, n_win)
    batch, height, width = q.shape[:3]
    rh, rw = region_geometry(height, width, n_win)
    cdt = _compute_dtype(q.dtype)
    padded = n_win * rh != height or n_win * rw != width
    if padded:
        inv_count, empty = _region_counts(height, width, n_win, q.device, cdt)

    # Few torch calls on purpose: every call costs host time, and the router runs in every BRA forward.
    def region_mean(x: torch.Tensor) -> torch.Tensor:  # (B, regions, C) in cdt (accumulated there, no up-cast copy)
        if not padded:
            return x.detach().reshape(batch, n_win, rh, n_win, rw, -1).mean(dim=(2, 4), dtype=cdt).flatten(1, 2)
        # zero rows/cols add nothing to the sums; divide by the valid token counts
        x = torch.nn.functional.pad(x.detach().reshape(batch, height, width, -1),
                                    (0, 0, 0, n_win * rw - width, 0, n_win * rh - height))
        return x.view(batch, n_win, rh, n_win, rw, -1).sum(dim=(2, 4), dtype=cdt).flatten(1, 2) * inv_count

    with torch.autocast(q.device.type, enabled=False):  # the affinity stays in cdt
        affinity = torch.matmul(region_mean(q), region_mean(k).mT)  # (B, regions, regions)
    if padded and empty is not None:
        affinity = affinity.masked_fill(empty, float("-inf"))
    return torch.topk(affinity, topk, dim=-1).indices


@functools.lru_cache(maxsize=64)
def _region_counts(height: int, width: int, n_win: int, device: torch.device, dtype: torch.dtype):
    """(regions, 1) inverse valid-token counts (1 for empty regions) and the (regions,) bool mask of key regions
    without any valid token (None when there is none) of a padded region grid. Cached: no per-call host work."""
    rh, rw = region_geometry(height, width, n_win)
    rows = [min(max(height - i * rh, 0), rh) for i in range(n_win)]  # valid rows / cols per region row / col
    cols = [min(max(width - j * rw, 0), rw) for j in range(n_win)]
    count = [r * c for r in rows for c in cols]
    # outside inference mode: a cached inference tensor would be refused by a later training call's autograd
    with torch.inference_mode(False):
        inv_count = torch.tensor([1.0 / max(c, 1) for c in count], dtype=torch.float64)[:, None].to(device, dtype)
        empty = torch.tensor([c == 0 for c in count], device=device) if 0 in count else None
    return inv_count, empty


class _RoutedAttentionTorch(torch.autograd.Function):
    """Reference BRA with a hand-written backward. Loops over the top-k slots with one gathered-region-sized K/V
    temporary at a time (never the released code's topk-fold gathered copy) and an online softmax; saves only
    q, k, v, out, the log-sum-exp and the index. Query regions are processed in chunks that bound the per-slot
    (regions, heads, tokens, tokens) score temporary."""

    SCORE_BUDGET = 1 << 26  # elements of one slot's score temporary per chunk

    @staticmethod
    def forward(ctx, q, k, v, index, args: RoutedArgs):
        with torch.autocast(q.device.type, enabled=False):  # the reference computes in cdt, never autocast
            return _RoutedAttentionTorch._forward(ctx, q, k, v, index, args)

    @staticmethod
    def _forward(ctx, q, k, v, index, args: RoutedArgs):
        cdt = _compute_dtype(q.dtype)
        n, rh, rw = args.n_win, args.region_h, args.region_w
        qr, kr, vr = (_to_regions(x.to(cdt), n, rh, rw) for x in (q, k, v))
        key_ok = _token_valid(args, q.device)
        gidx = _global_index(index, args)  # (B * regions, topk) rows of kr/vr
        out = qr.new_empty(qr.shape[:3] + (args.v_dim,))
        lse = qr.new_empty(qr.shape[:3])
        for rows in _chunks(args, _RoutedAttentionTorch.SCORE_BUDGET):
            q_c = qr[rows]
            m = q_c.new_full(q_c.shape[:3], float("-inf"))
            l_sum = q_c.new_zeros(q_c.shape[:3])
            acc = q_c.new_zeros(q_c.shape[:3] + (args.v_dim,))
            for j in range(args.topk):
                g = gidx[rows, j]
                s = _slot_scores(q_c, kr, g, key_ok, index.reshape(-1, args.topk)[rows, j], args.scale)
                m_new = torch.maximum(m, s.amax(-1))
                m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)
                alpha = torch.exp(m - m_safe)
                p = torch.exp(s - m_safe[..., None])
                l_sum = l_sum * alpha + p.sum(-1)
                acc = acc * alpha[..., None] + p @ vr.index_select(0, g)
                m = m_new
            has = l_sum > 0
            out[rows] = acc / torch.where(has, l_sum, torch.ones_like(l_sum))[..., None]
            lse[rows] = torch.where(has, m + torch.log(torch.where(has, l_sum, torch.ones_like(l_sum))),
                                    torch.full_like(l_sum, float("inf")))
        result = _from_regions(out, args).to(q.dtype)
        ctx.save_for_backward(q, k, v, result, lse, index)
        ctx.args = args
        return result

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _RoutedAttentionTorch._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v, out, lse, index = ctx.saved_tensors
        args: RoutedArgs = ctx.args
        cdt = lse.dtype
        n, rh, rw = args.n_win, args.region_h, args.region_w
        qr, kr, vr, gor, outr = (_to_regions(x.to(cdt), n, rh, rw) for x in (q, k, v, grad_out, out))
        key_ok = _token_valid(args, q.device)
        gidx = _global_index(index, args)
        delta = (gor * outr).sum(-1)  # rowsum(dO * O): the softmax-backward correction
        del outr
        grad_q = torch.zeros_like(qr)
        grad_k = torch.zeros_like(kr)
        grad_v = torch.zeros_like(vr)
        for rows in _chunks(args, _RoutedAttentionTorch.SCORE_BUDGET):
            q_c, go_c, lse_c, delta_c = qr[rows], gor[rows], lse[rows, ..., None], delta[rows, ..., None]
            for j in range(args.topk):
                g = gidx[rows, j]
                s = _slot_scores(q_c, kr, g, key_ok, index.reshape(-1, args.topk)[rows, j], args.scale)
                p = torch.exp(s - lse_c)  # exactly the forward probabilities of this slot's keys
                grad_v.index_add_(0, g, p.transpose(-1, -2) @ go_c)
                grad_s = p * (go_c @ vr.index_select(0, g).transpose(-1, -2) - delta_c)
                grad_q[rows] += grad_s @ kr.index_select(0, g)
                grad_k.index_add_(0, g, grad_s.transpose(-1, -2) @ q_c)
        grad_q.mul_(args.scale)
        grad_k.mul_(args.scale)
        return (_from_regions(grad_q, args).to(q.dtype), _from_regions(grad_k, args).to(k.dtype),
                _from_regions(grad_v, args).to(v.dtype), None, None)


def _global_index(index: torch.Tensor, args: RoutedArgs) -> torch.Tensor:
    """(B * regions, topk) rows of the region-major (B * regions, ...) tensors."""
    offset = torch.arange(args.batch, device=index.device)[:, None, None] * args.regions
    return (index + offset).reshape(-1, args.topk)


def _chunks(args: RoutedArgs, budget: int):
    """Slices of the B * regions query-region rows whose per-slot score temporary fits ``budget`` elements."""
    per_row = args.heads * args.tokens * args.tokens
    step = max(1, budget // per_row)
    total = args.batch * args.regions
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


def _slot_scores(q_c, kr, g, key_ok, local_region, scale) -> torch.Tensor:
    """Scaled logits of a chunk of query regions against their routed region of one slot, padded keys at -inf."""
    s = (q_c @ kr.index_select(0, g).transpose(-1, -2)) * scale  # (rows, heads, T, T)
    return s.masked_fill(~key_ok[local_region][:, None, None, :], float("-inf"))


def routed_attention_torch(q, k, v, n_win: int, topk: int, scale=None, index=None) -> torch.Tensor:
    """Pure-torch reference of :func:`routed_attention` (CPU and fallback path; any float dtype incl. float64).
    ``index`` (B, n_win**2, topk) overrides the router (tests)."""
    args = RoutedArgs(q, k, v, n_win, topk, scale)
    if index is None:
        index = route_regions(q, k, n_win, topk)
    check_index(index, args)
    return _RoutedAttentionTorch.apply(q, k, v, index, args)


def check_index(index: torch.Tensor, args: RoutedArgs) -> None:
    """ValueError unless ``index`` is an integer (B, n_win**2, topk) tensor of region ids in 0..n_win**2-1."""
    shape = (args.batch, args.regions, args.topk)
    if tuple(index.shape) != shape or index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"index must be an int64/int32 tensor of shape (B, n_win**2, topk) = {shape}, got "
                         f"{index.dtype} {tuple(index.shape)}")
    if index.numel() and not torch.compiler.is_compiling() and bool((index < 0).any() | (index >= args.regions).any()):
        raise ValueError(f"index entries must be region ids in 0..{args.regions - 1}")


def _common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_win: int,
    topk: int,
    scale: float = None,
    backend: str = "auto",
    return_routing: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Bi-level routing attention of BiFormer (``BiLevelRoutingAttention`` with kv_downsample_mode='identity',
    param_routing=False, diff_routing=False, soft_routing=False; the lepe branch and projections stay outside).

    Args:
        q, k: (B, H, W, heads, d). v: (B, H, W, heads, d_v). Mixed dtypes are promoted to one (autocast-safe).
        n_win: regions per side; the map is cut into n_win x n_win regions of ceil(H/n_win) x ceil(W/n_win) tokens.
        topk: routed regions per query region, 1..n_win**2.
        scale: logit scale, default ``d ** -0.5`` (BiFormer models pass their ``qk_dim ** -0.5``).
        backend: "auto" | "torch" | "triton" (see :mod:`vitzoo.ops._backend`; env ``VITZOO_ATTN_BACKEND`` wins).
        return_routing: also return the (B, n_win**2, topk) int64 routing index.

    Semantics: the routing is :func:`route_regions` (one routing for all heads, from detached region means over all
    channels, ``torch.topk``). Each query token then attends, per head, to every token of the topk regions routed
    from its region, logits ``scale * <q, k>``, softmax over those keys, weighted sum of v. Arbitrary H, W: the
    map is conceptually padded to a multiple of n_win; padded tokens are never attended (masked), region means
    count valid tokens only, fully-padded key regions are routed to only when topk exceeds the valid regions and
    then contribute nothing. With H, W divisible by n_win this equals the released code exactly (which zero-pads
    and attends padding when ``auto_pad=True``). Returns (B, H, W, heads, d_v) in the common input dtype;
    low-precision inputs are accumulated in float32.
    """
    args = RoutedArgs(q, k, v, n_win, topk, scale)
    dtype = _common_dtype(q, k, v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    index = route_regions(q, k, n_win, topk)

    def unsupported():
        from ._routed_triton import unsupported_reason

        return unsupported_reason(q, k, v, args)

    if resolve_backend(backend, q, k, v, op="routed_attention", unsupported_reason=unsupported) == "triton":
        from ._routed_triton import routed_attention_triton

        out = routed_attention_triton(q, k, v, index, args)
    else:
        out = _RoutedAttentionTorch.apply(q, k, v, index, args)
    return (out, index) if return_routing else out
