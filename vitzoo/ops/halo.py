"""HaloNet blocked-query / haloed-key local self-attention (Vaswani et al. 2021, "Scaling Local Self-Attention for
Parameter Efficient Visual Backbones") with the exact semantics of timm's ``HaloAttn`` attention core, so timm's
halonet weights give timm's outputs."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._backend import resolve_backend

__all__ = ["halo_attention_2d", "halo_attention_2d_torch", "HaloArgs"]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class HaloArgs:
    """Validated arguments of one halo-attention call (sizes, block/halo geometry, query stride, scale)."""

    def __init__(self, q, k, v, block_size, halo_size, rel_h, rel_w, scale):
        if q.dim() != 5 or k.dim() != 5 or v.dim() != 5:
            raise ValueError(
                "halo_attention_2d expects q, k, v in the (B, H, W, heads, head_dim) layout; got shapes "
                f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        self.block = _check_int(block_size, "block_size", 1)
        self.halo = _check_int(halo_size, "halo_size", 0)
        self.batch, self.height, self.width, self.heads, self.d_qk = k.shape
        self.d_v = v.shape[-1]
        if v.shape[:4] != k.shape[:4]:
            raise ValueError(f"v must match k in (B, H, W, heads) = {tuple(k.shape[:4])}, got {tuple(v.shape[:4])}")
        if (q.shape[0], q.shape[3], q.shape[4]) != (self.batch, self.heads, self.d_qk):
            raise ValueError(
                f"q must match k in batch, heads and head_dim ({self.batch}, {self.heads}, {self.d_qk}); got q shape "
                f"{tuple(q.shape)}"
            )
        if self.height % self.block or self.width % self.block:
            raise ValueError(
                f"the key map (H, W) = ({self.height}, {self.width}) must be a multiple of block_size={self.block}"
            )
        self.q_height, self.q_width = q.shape[1], q.shape[2]
        if (
            self.q_height < 1
            or self.height % self.q_height
            or self.width % self.q_width
            or self.height // self.q_height != self.width // self.q_width
        ):
            raise ValueError(
                f"q's map (Hq, Wq) = ({self.q_height}, {self.q_width}) must be the key map ({self.height}, "
                f"{self.width}) divided by one integer query stride"
            )
        self.stride = self.height // self.q_height
        if self.block % self.stride:
            raise ValueError(
                f"block_size={self.block} must be a multiple of the query stride {self.stride} (= H // Hq)"
            )
        self.block_q = self.block // self.stride
        self.win = self.block + 2 * self.halo
        self.n_blocks_h, self.n_blocks_w = self.height // self.block, self.width // self.block
        if (rel_h is None) != (rel_w is None):
            raise ValueError("rel_h and rel_w must be given together (timm's PosEmbedRel has both) or both be None")
        for name, table in (("rel_h", rel_h), ("rel_w", rel_w)):
            if table is not None and tuple(table.shape) != (2 * self.win - 1, self.d_qk):
                raise ValueError(
                    f"{name} must have shape (2 * win - 1, d_qk) = ({2 * self.win - 1}, {self.d_qk}) with "
                    f"win = block_size + 2 * halo_size = {self.win}; got {tuple(table.shape)}"
                )
        self.scale = float(scale) if scale is not None else self.d_qk ** -0.5

    def query_geometry(self, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per query row (Hq,) and column (Wq,): the padded-map start of its key window and its index in its block.

        On the key map zero-padded by ``halo`` on every side, query row ``y`` (block ``y // block_q``) sees padded
        rows ``start[y] + a`` for ``a < win`` with ``start[y] = (y // block_q) * block``.
        """
        ys = torch.arange(self.q_height, device=device)
        xs = torch.arange(self.q_width, device=device)
        bq = self.block_q
        return (ys // bq) * self.block, ys % bq, (xs // bq) * self.block, xs % bq


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _rel_index(local: torch.Tensor, win: int) -> torch.Tensor:
    """(L, win) index into a (2 * win - 1) table: rel = a - local + win - 1 (window slot minus query slot)."""
    return torch.arange(win, device=local.device)[None, :] - local[:, None] + win - 1


class _HaloAttentionTorch(torch.autograd.Function):
    """Reference halo attention with a hand-written backward. k and v are zero-padded once (one K/V-sized copy) and
    visited one window offset at a time (one q-sized gathered temporary at a time, never the (block + 2 * halo)^2
    unfolded copies per block); the only saved intermediate is the (B, Hq, Wq, heads, win^2) probability tensor."""

    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, args: HaloArgs):
        cdt = _compute_dtype(q.dtype)
        qc = q.to(cdt)
        halo, win = args.halo, args.win
        kp = F.pad(k.to(cdt), (0, 0, 0, 0, halo, halo, halo, halo))
        vp = F.pad(v.to(cdt), (0, 0, 0, 0, halo, halo, halo, halo))
        sy, ly, sx, lx = args.query_geometry(q.device)
        scores = qc.new_empty(*q.shape[:4], win * win)
        for a in range(win):
            k_rows = kp.index_select(1, sy + a)
            for b in range(win):
                scores[..., a * win + b] = (qc * k_rows.index_select(2, sx + b)).sum(-1)
        scores.mul_(args.scale)
        if rel_h is not None:
            lh, lw = _rel_logits(qc, rel_h.to(cdt), rel_w.to(cdt), args, ly, lx)
            scores.view(*q.shape[:4], win, win).add_(lh[..., :, None]).add_(lw[..., None, :])
        probs = torch.softmax(scores, dim=-1)
        out = qc.new_zeros(*q.shape[:4], args.d_v)
        for a in range(win):
            v_rows = vp.index_select(1, sy + a)
            for b in range(win):
                out.addcmul_(probs[..., a * win + b, None], v_rows.index_select(2, sx + b))
        ctx.save_for_backward(q, k, v, rel_h, rel_w, probs, out)
        ctx.args = args
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel_h, rel_w, probs, out = ctx.saved_tensors
        args: HaloArgs = ctx.args
        cdt = probs.dtype
        halo, win = args.halo, args.win
        qc, go = q.to(cdt), grad_out.to(cdt)
        kp = F.pad(k.to(cdt), (0, 0, 0, 0, halo, halo, halo, halo))
        vp = F.pad(v.to(cdt), (0, 0, 0, 0, halo, halo, halo, halo))
        sy, ly, sx, lx = args.query_geometry(q.device)
        grad_probs = torch.empty_like(probs)
        grad_vp = torch.zeros_like(vp)
        for a in range(win):
            v_rows = vp.index_select(1, sy + a)
            gv_rows = go.new_zeros(*v_rows.shape)
            for b in range(win):
                grad_probs[..., a * win + b] = (go * v_rows.index_select(2, sx + b)).sum(-1)
                gv_rows.index_add_(2, sx + b, probs[..., a * win + b, None] * go)
            grad_vp.index_add_(1, sy + a, gv_rows)
        delta = (go * out).sum(-1, keepdim=True)
        grad_scores = probs * (grad_probs - delta)  # d loss / d logits
        grad_q = torch.zeros_like(qc)
        grad_kp = torch.zeros_like(kp)
        for a in range(win):
            k_rows = kp.index_select(1, sy + a)
            gk_rows = qc.new_zeros(*k_rows.shape)
            for b in range(win):
                gs = grad_scores[..., a * win + b, None]
                grad_q.addcmul_(gs, k_rows.index_select(2, sx + b))
                gk_rows.index_add_(2, sx + b, gs * qc)
            grad_kp.index_add_(1, sy + a, gk_rows)
        grad_q.mul_(args.scale)
        grad_kp.mul_(args.scale)
        crop = (slice(None), slice(halo, halo + args.height), slice(halo, halo + args.width))
        grad_rel_h = grad_rel_w = None
        if rel_h is not None:
            gs2 = grad_scores.view(*q.shape[:4], win, win)
            grad_rq_h = _rel_adjoint(gs2.sum(-1), ly, win, dim=1)  # (B, Hq, Wq, heads, 2 win - 1)
            grad_rq_w = _rel_adjoint(gs2.sum(-2), lx, win, dim=2)
            grad_q += grad_rq_h @ rel_h.to(cdt) + grad_rq_w @ rel_w.to(cdt)
            grad_rel_h = (grad_rq_h.reshape(-1, 2 * win - 1).t() @ qc.reshape(-1, args.d_qk)).to(rel_h.dtype)
            grad_rel_w = (grad_rq_w.reshape(-1, 2 * win - 1).t() @ qc.reshape(-1, args.d_qk)).to(rel_w.dtype)
        return (grad_q.to(q.dtype), grad_kp[crop].to(k.dtype), grad_vp[crop].to(v.dtype), grad_rel_h, grad_rel_w,
                None)


def _rel_logits(qc, rel_h, rel_w, args: HaloArgs, ly, lx) -> Tuple[torch.Tensor, torch.Tensor]:
    """timm's ``PosEmbedRel`` terms as (B, Hq, Wq, heads, win) tensors: ``lh[..., a] = q . rel_h[a - ly + win - 1]``
    (window row a, query row ly in its block) and ``lw[..., b] = q . rel_w[b - lx + win - 1]``; q is NOT scaled."""
    win = args.win
    rq_h, rq_w = qc @ rel_h.t(), qc @ rel_w.t()  # (B, Hq, Wq, heads, 2 win - 1)
    idx_h = _rel_index(ly, win)[None, :, None, None, :].expand(*rq_h.shape[:4], win)
    idx_w = _rel_index(lx, win)[None, None, :, None, :].expand(*rq_w.shape[:4], win)
    return rq_h.gather(-1, idx_h), rq_w.gather(-1, idx_w)


def _rel_adjoint(grad_win: torch.Tensor, local: torch.Tensor, win: int, dim: int) -> torch.Tensor:
    """Adjoint of the gather in :func:`_rel_logits` along query axis ``dim`` (1: rows, 2: columns)."""
    shape = [1, 1, 1, 1, win]
    shape[dim] = local.numel()
    idx = _rel_index(local, win).view(shape).expand_as(grad_win)
    return grad_win.new_zeros(*grad_win.shape[:4], 2 * win - 1).scatter_add_(-1, idx, grad_win)


def halo_attention_2d_torch(q, k, v, block_size, halo_size, rel_h=None, rel_w=None, scale=None):
    """Pure-torch reference of :func:`halo_attention_2d` (CPU and fallback path; any dtype incl. float64)."""
    args = HaloArgs(q, k, v, block_size, halo_size, rel_h, rel_w, scale)
    return _HaloAttentionTorch.apply(q, k, v, rel_h, rel_w, args)


def halo_attention_2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    halo_size: int,
    rel_h: Optional[torch.Tensor] = None,
    rel_w: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """HaloNet attention: blocked queries attend to their block's haloed window of the zero-padded key map.

    Args:
        q: (B, Hq, Wq, heads, d_qk); ``Hq = H // stride``, ``Wq = W // stride`` for one integer query stride (timm's
            strided ``HaloAttn.q`` projection) with ``block_size % stride == 0``.
        k: (B, H, W, heads, d_qk), v: (B, H, W, heads, d_v); H and W multiples of ``block_size``.
        block_size, halo_size: timm's ``block_size`` / ``halo_size``; ``win = block_size + 2 * halo_size``.
        rel_h, rel_w: optional (2 * win - 1, d_qk) relative tables shared by all heads (timm's
            ``pos_embed.height_rel`` / ``width_rel``); both or neither.
        scale: logit scale of ``q . k``, default ``d_qk ** -0.5``. The relative logits are not scaled (timm's default
            ``scale_pos_embed=False``); for ``scale_pos_embed=True`` pass ``rel_h * scale`` and ``rel_w * scale``.
        backend: "auto" | "torch" | "triton" (see :mod:`vitzoo.ops._backend`; env ``VITZOO_ATTN_BACKEND`` wins).

    Semantics (timm ``HaloAttn``): with ``bq = block_size // stride``, query ``(y, x)`` belongs to block
    ``(y // bq, x // bq)`` at in-block position ``(ly, lx) = (y % bq, x % bq)``; its keys are the ``win x win``
    positions ``(by * block_size - halo + a, bx * block_size - halo + b)`` of k/v zero-padded by ``halo_size``
    (padded keys are NOT masked: k = v = 0 there, their logit is the relative term alone). Logits::

        scale * <q, k[a, b]> + <q, rel_h[a - ly + win - 1]> + <q, rel_w[b - lx + win - 1]>

    softmax over the ``win^2`` keys, output = weighted sum of v: (B, Hq, Wq, heads, d_v) in q's dtype (low-precision
    inputs accumulate in float32).
    """
    args = HaloArgs(q, k, v, block_size, halo_size, rel_h, rel_w, scale)

    def unsupported():
        from ._halo_triton import unsupported_reason

        return unsupported_reason(q, k, v, args, rel_h, rel_w)

    if resolve_backend(backend, q, k, v, op="halo_attention_2d", unsupported_reason=unsupported) == "triton":
        from ._halo_triton import halo_attention_2d_triton

        return halo_attention_2d_triton(q, k, v, rel_h, rel_w, args)
    return _HaloAttentionTorch.apply(q, k, v, rel_h, rel_w, args)
