"""Triton backend of :func:`vitzoo.ops.neighborhood_attention_2d` (generalized neighborhood attention; Hassani et al.,
"Neighborhood Attention Transformer", CVPR 2023; "Dilated Neighborhood Attention Transformer", 2022).

Registered through :class:`vitzoo.ops._triton_op.TritonOp`: custom ops ``vitzoo::neighborhood_attention_2d_fwd``
/ ``_bwd`` with fake implementations and autograd (what ``torch.compile`` traces), and a direct eager path.
Kernels: ``kernels/neighborhood_fwd.py`` (output, log-sum-exp, and the window-logit table the backward reuses),
``kernels/neighborhood_bwd_dq.py`` (dq, delta, per-program rpb-gradient partials; calls with a dense bias use
``neighborhood_bwd_dq_dense_bias.py``) and ``kernels/neighborhood_bwd_dkdv.py`` (dk, dv). Windows that fit one
register tile (stride == kernel on an exactly tiled map, at most 64 tokens) train with
``kernels/tile_attention_bwd.py`` instead, one pass for every gradient. Every gradient is deterministic: no atomics
anywhere; the rpb / dense bias gradients are summed from per-program partials in a fixed order. q, k, v that are the
slices of one projection output go through the packed twin ``vitzoo::neighborhood_attention_2d_packed_*``
(``vitzoo.ops._packed``).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import torch

from ._geometry import axis_windows
from ._packed import packed_source
from ._triton_op import TritonOp
from ._weight_cache import cached_or_built

if TYPE_CHECKING:  # pragma: no cover
    from .neighborhood import NeighborhoodArgs

__all__ = ["unsupported_reason", "neighborhood_attention_2d_triton", "SUPPORTED_HEAD_DIMS", "SUPPORTED_DTYPES"]

SUPPORTED_HEAD_DIMS = (16, 32, 64)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _op_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype:
    """The one dtype q, k, v run in: the autocast dtype when autocast is on for their device, else their promotion."""
    device_type = q.device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - torch < 2.4
        enabled = device_type == "cuda" and torch.is_autocast_enabled()
    if enabled:
        try:
            return torch.get_autocast_dtype(device_type)
        except AttributeError:  # pragma: no cover - torch < 2.4
            return torch.get_autocast_gpu_dtype()
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def unsupported_reason(q, k, v, args: "NeighborhoodArgs", rpb, bias) -> Optional[str]:
    """None when the Triton kernels handle this call, else why not (head_dim, dtype, device)."""
    if args.head_dim not in SUPPORTED_HEAD_DIMS:
        return f"head_dim (q.shape[-1]) must be one of {SUPPORTED_HEAD_DIMS}, got {args.head_dim}"
    if args.v_dim < 1:
        return f"value head_dim (v.shape[-1]) must be >= 1, got {args.v_dim}"
    dtype = _op_dtype(q, k, v)
    if dtype not in SUPPORTED_DTYPES:
        return f"q, k, v dtype must be one of float16, bfloat16, float32, got {dtype}"
    devices = {t.device for t in (q, k, v, rpb, bias) if t is not None}
    if len(devices) != 1:
        return f"q, k, v, rpb and bias must live on one device, got {sorted(str(d) for d in devices)}"
    for name, t in (("rpb", rpb), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            return f"{name} must be a floating-point tensor, got {t.dtype}"
    return None


@functools.lru_cache(maxsize=32)
def _dq_tables(batch: int, height: int, width: int, kernel: Tuple[int, int], dilation: Tuple[int, int],
               stride: Tuple[int, int], block_m: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """Work list of the dq kernel: queries grouped by their local window slot (ly, lx) ("class"), per axis sorted by
    that slot; each work item is (class, first flat (batch, row, col) index) with ``block_m`` queries. Also the
    (classes, work items) one-hot that sums per-work-item partials into per-class ones in a fixed order."""
    tables = []
    counts = []
    for length, kern, dil, st in zip((height, width), kernel, dilation, stride):
        local = axis_windows(length, kern, dil, st).local
        count = torch.bincount(local, minlength=kern)
        tables += [torch.argsort(local, stable=True), torch.cat([count.new_zeros(1), count.cumsum(0)])]
        counts.append(count)
    n_class = (batch * counts[0][:, None] * counts[1][None, :]).reshape(-1)
    chunks = (n_class + block_m - 1) // block_m
    cls = torch.repeat_interleave(torch.arange(n_class.numel()), chunks)
    first_item = chunks.cumsum(0) - chunks
    item = torch.arange(cls.numel())
    work = torch.stack([cls, (item - first_item[cls]) * block_m], 1)
    onehot = torch.zeros(n_class.numel(), cls.numel(), dtype=torch.float64)
    onehot[cls, item] = 1.0
    return tuple(t.to(device=device, dtype=torch.int32) for t in [work] + tables) + (onehot.to(device),)


@functools.lru_cache(maxsize=32)
def _slot_rpb_entry(kernel: Tuple[int, int], device: torch.device) -> torch.Tensor:
    """(kh*kw [query slot] * kh*kw [key slot],) index of the flattened rpb table entry every (query slot, key slot)
    pair reads (key - query + k - 1 per axis)."""
    kh, kw = kernel
    ly, lx, a, b = torch.meshgrid(torch.arange(kh), torch.arange(kw), torch.arange(kh), torch.arange(kw),
                                  indexing="ij")
    return ((a - ly + kh - 1) * (2 * kw - 1) + (b - lx + kw - 1)).reshape(-1).to(device)


@functools.lru_cache(maxsize=32)
def _slot_to_rpb(kernel: Tuple[int, int], device: torch.device) -> torch.Tensor:
    """(kh*kw * kh*kw, (2kh-1)*(2kw-1)) float64 one-hot of :func:`_slot_rpb_entry`. Cached, so the rpb gradient is
    one (deterministic) matmul."""
    kh, kw = kernel
    return torch.nn.functional.one_hot(_slot_rpb_entry(kernel, device), (2 * kh - 1) * (2 * kw - 1)).double()


def _tile_windows(shape: Sequence[int], v_dim: int, kernel: Sequence[int], dilation: Sequence[int],
                  stride: Sequence[int]):
    """The :class:`~vitzoo.kernels.tile_attention_bwd.TileGeometry` of a call whose windows each fit one register
    tile (non-overlapping windows or grids of at most MAX_TILE tokens on an exactly tiled map), else None. Such
    calls train with the one-pass backward and read the dense logit block in the forward too."""
    from vitzoo.kernels import tile_attention_bwd as tile

    _, height, width, _, head_dim = shape
    (kh, kw), (dy, dx) = kernel, dilation
    if (not tile.ENABLED or tuple(stride) != (kh, kw) or kh * kw > tile.MAX_TILE or head_dim not in tile.TILE_HEAD_DIMS
            or v_dim > tile.MAX_TILE_V_DIM or height % (kh * dy) or width % (kw * dx)):
        return None
    return tile.TileGeometry.windows((kh, kw), (dy, dx), (height, width))


def _window_logits(rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor], kernel: Tuple[int, int],
                   input_dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The (heads, kh*kw, kh*kw) logits ``rpb`` and ``bias`` add to (query slot, key slot) pairs, in the storage of
    the forward's dense logit block (fp16 for 16-bit inputs, so the backward's P is the forward's), or None without
    either."""
    from vitzoo.kernels._neighborhood_table import block_dtype

    if rpb is None and bias is None:
        return None
    n_slots = kernel[0] * kernel[1]
    logits = None
    if rpb is not None:
        logits = rpb.flatten(1).float()[:, _slot_rpb_entry(kernel, rpb.device)].view(-1, n_slots, n_slots)
    if bias is not None:
        logits = bias.float() if logits is None else logits + bias.float()
    return logits.to(block_dtype(input_dtype))


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor],
             bias: Optional[torch.Tensor], kernel_size: List[int], dilation: List[int], stride: List[int],
             scale: float, fixed_weights: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, lse, table): the window-logit table goes to the backward so that it is built once per step. Calls
    that read a dense logit block instead return an empty tensor (the backward then builds its own table): without
    rpb and bias (the cached mask block), and with fixed weights (``fixed_weights``: the caller saw no autograd
    recording through rpb / bias, e.g. inference or a frozen rpb), whose block is cached per weight version, which
    saves its build (a pad, a gather, about 0.1 ms of host time) per call. The caller decides because inside an
    ``autograd.Function`` forward, grad mode always reads as off."""
    from vitzoo.kernels.neighborhood_fwd import logit_block, neighborhood_fwd

    if rpb is None and bias is None:
        out, lse, _ = neighborhood_fwd(q, k, v, rpb, bias, kernel_size, dilation, stride, scale)
        return out, lse, lse.new_empty(0)
    size = tuple(q.shape[1:3])

    def build_block():
        return logit_block(rpb, bias, kernel_size, dilation, stride, size, q.device, q.dtype)

    if fixed_weights:
        # The dense logit block: 1.7x faster forward than the table gather (kernels/README.md), but the general
        # backward kernels index the table, so only calls that need no backward through the weights, or whose
        # backward is the one-tile kernel, read it. Uncached (a CUDA graph capture, inference tensors, the cache
        # switched off) it is built per call, on the same path, so a capture meets the geometry caches its warm-up
        # filled.
        block = cached_or_built((rpb, bias), ("na_logit_block", tuple(kernel_size), tuple(dilation), tuple(stride),
                                              size, q.dtype), build_block)
    elif _tile_windows(q.shape, v.shape[-1], kernel_size, dilation, stride) is not None:
        block = build_block()  # the weights change every step: not worth caching
    else:
        return neighborhood_fwd(q, k, v, rpb, bias, kernel_size, dilation, stride, scale)
    out, lse, _ = neighborhood_fwd(q, k, v, rpb, bias, kernel_size, dilation, stride, scale, block=block)
    return out, lse, lse.new_empty(0)


def _forward_fake(q, k, v, rpb, bias, kernel_size, dilation, stride, scale, fixed_weights):
    from vitzoo.kernels._neighborhood_table import table_geometry
    from vitzoo.kernels.neighborhood_fwd import query_tile

    batch, height, width, heads, _ = q.shape
    out = q.new_empty((batch, height, width, heads, v.shape[-1]))
    lse = q.new_empty((batch, heads, height, width), dtype=torch.float32)
    if (rpb is None and bias is None) or fixed_weights or _tile_windows(q.shape, v.shape[-1], kernel_size, dilation,
                                                                        stride) is not None:
        return out, lse, q.new_empty(0, dtype=torch.float32)
    kernel, stride = tuple(kernel_size), tuple(stride)
    geom = table_geometry(kernel, stride, query_tile(kernel, stride))
    return out, lse, q.new_empty((heads, kernel[0] * kernel[1] * geom.rows * geom.cols), dtype=torch.float32)


def _backward_impl(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor], table: torch.Tensor,
                   kernel_size: List[int], dilation: List[int], stride: List[int], scale: float
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, d_rpb, d_bias); d_rpb / d_bias are empty tensors when rpb / bias is None. ``table``: the
    forward's (empty: the cached mask table)."""
    return _backward_into(None, grad_out, q, k, v, out, lse, rpb, bias, table, kernel_size, dilation, stride, scale)


def _backward_into(grads: Optional[Tuple[torch.Tensor, ...]], grad_out, q, k, v, out, lse, rpb, bias, table,
                   kernel_size, dilation, stride, scale):
    """:func:`_backward_impl`, writing dq, dk, dv into ``grads`` when given (the packed op's gradient slices)."""
    from vitzoo.kernels.neighborhood_bwd_dkdv import neighborhood_bwd_dkdv

    kernel, dil, st = tuple(kernel_size), tuple(dilation), tuple(stride)
    geometry = _tile_windows(q.shape, v.shape[-1], kernel, dil, st)
    if geometry is not None:
        return _tile_backward(grad_out, q, k, v, lse, rpb, bias, kernel, geometry, scale, grads)
    table = table if table.numel() else None
    d_rpb, d_bias = q.new_empty(0), q.new_empty(0)  # distinct tensors: custom-op outputs may not alias
    if bias is None:
        from vitzoo.kernels.neighborhood_bwd_dq import neighborhood_bwd_dq

        dq, delta, rpb_grad = neighborhood_bwd_dq(grad_out, q, k, v, out, lse, rpb, kernel, dil, st, scale, table)
        if rpb_grad is not None:
            d_rpb = rpb_grad.to(rpb.dtype)
    else:
        dq, delta, d_rpb, d_bias = _dq_dense_bias(grad_out, q, k, v, out, lse, rpb, bias, kernel, dil, st, scale)
    dk, dv = neighborhood_bwd_dkdv(grad_out, q, k, v, lse, delta, rpb, bias, kernel, dil, st, scale, table)
    if grads is not None:  # the general kernels allocate their own outputs
        for dst, src in zip(grads, (dq, dk, dv)):
            dst.copy_(src)
        dq, dk, dv = grads
    return dq, dk, dv, d_rpb, d_bias


def _tile_backward(grad_out, q, k, v, lse, rpb, bias, kernel, geometry, scale, grads=None):
    """(dq, dk, dv, d_rpb, d_bias) of a call whose windows fit one tile, in one kernel pass
    (``kernels/tile_attention_bwd.py``): the position terms go in as one dense per-head logit block. dq, dk, dv are
    written into ``grads`` when given."""
    from vitzoo.kernels._layout import empty_in_layout_of
    from vitzoo.kernels.tile_attention_bwd import tile_attention_bwd

    dq, dk, dv = grads if grads is not None else (empty_in_layout_of(q), empty_in_layout_of(k), empty_in_layout_of(v))
    logits = _window_logits(rpb, bias, kernel, q.dtype)
    slot_grad = tile_attention_bwd(grad_out, q, k, v, lse.permute(0, 2, 3, 1), logits, dq, dk, dv, geometry, scale,
                                   bias_grad=logits is not None)
    d_rpb, d_bias = q.new_empty(0), q.new_empty(0)  # distinct tensors: custom-op outputs may not alias
    if rpb is not None:
        d_rpb = (slot_grad.flatten(1).double() @ _slot_to_rpb(kernel, q.device)).view_as(rpb).to(rpb.dtype)
    if bias is not None:
        d_bias = slot_grad.to(bias.dtype)
    return dq, dk, dv, d_rpb, d_bias


def _dq_dense_bias(grad_out, q, k, v, out, lse, rpb, bias, kernel, dil, st, scale):
    """dq, delta, d_rpb (empty without rpb) and d_bias through the class-grouped kernel (a dense bias depends on
    the query's slot in its window, which that kernel groups by)."""
    from vitzoo.kernels.neighborhood_bwd_dq_dense_bias import DQ_BLOCK_M, neighborhood_bwd_dq_dense_bias

    batch, height, width = q.shape[:3]
    work, order_y, seg_y, order_x, seg_x, onehot = _dq_tables(batch, height, width, kernel, dil, st, DQ_BLOCK_M,
                                                              q.device)
    dq, delta, gpart = neighborhood_bwd_dq_dense_bias(grad_out, q, k, v, out, lse, rpb, bias, kernel, dil, scale,
                                                      work, order_y, seg_y, order_x, seg_x)
    n_slots = kernel[0] * kernel[1]
    slot_grad = torch.matmul(onehot, gpart.double())[..., :n_slots]  # (heads, query slot, key slot)
    d_rpb = q.new_empty(0)
    if rpb is not None:
        flat = slot_grad.reshape(slot_grad.shape[0], -1) @ _slot_to_rpb(kernel, q.device)
        d_rpb = flat.view_as(rpb).to(rpb.dtype)
    return dq, delta, d_rpb, slot_grad.to(bias.dtype)


def _backward_fake(grad_out, q, k, v, out, lse, rpb, bias, table, kernel_size, dilation, stride, scale):
    d_rpb = torch.empty_like(rpb) if rpb is not None else q.new_empty(0)
    d_bias = torch.empty_like(bias) if bias is not None else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), d_rpb, d_bias


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, rpb, bias, kernel_size, dilation, stride, scale, _ = inputs
    out, lse, table = output
    ctx.save_for_backward(q, k, v, rpb, bias, out, lse, table)
    ctx.params = (kernel_size, dilation, stride, scale)
    ctx.mark_non_differentiable(lse, table)


def _backward(ctx, backward_fn, grad_out, grad_lse, grad_table):
    q, k, v, rpb, bias, out, lse, table = ctx.saved_tensors
    dq, dk, dv, d_rpb, d_bias = backward_fn(grad_out, q, k, v, out, lse, rpb, bias, table, *ctx.params)
    return (dq, dk, dv, d_rpb if rpb is not None else None, d_bias if bias is not None else None,
            None, None, None, None, None)


_OP = TritonOp("neighborhood_attention_2d", _forward, _forward_fake, _backward_impl, _backward_fake, _setup_context,
               _backward)


# The same op on packed q, k, v (``vitzoo.ops._packed``): its autograd input is the projection output ``qkv``, whose
# gradient the backward writes in one buffer.
def _forward_packed(qkv: torch.Tensor, pack_dim: int, rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    kernel_size: List[int], dilation: List[int], stride: List[int], scale: float,
                    fixed_weights: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(*qkv.unbind(pack_dim), rpb, bias, kernel_size, dilation, stride, scale, fixed_weights)


def _forward_packed_fake(qkv, pack_dim, rpb, bias, kernel_size, dilation, stride, scale, fixed_weights):
    return _forward_fake(*qkv.unbind(pack_dim), rpb, bias, kernel_size, dilation, stride, scale, fixed_weights)


def _backward_packed_impl(grad_out: torch.Tensor, qkv: torch.Tensor, pack_dim: int, out: torch.Tensor,
                          lse: torch.Tensor, rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                          table: torch.Tensor, kernel_size: List[int], dilation: List[int], stride: List[int],
                          scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d_qkv, d_rpb, d_bias)."""
    d_qkv = torch.empty_like(qkv)
    _, _, _, d_rpb, d_bias = _backward_into(d_qkv.unbind(pack_dim), grad_out, *qkv.unbind(pack_dim), out, lse, rpb,
                                            bias, table, kernel_size, dilation, stride, scale)
    return d_qkv, d_rpb, d_bias


def _backward_packed_fake(grad_out, qkv, pack_dim, out, lse, rpb, bias, table, kernel_size, dilation, stride, scale):
    d_rpb = torch.empty_like(rpb) if rpb is not None else qkv.new_empty(0)
    d_bias = torch.empty_like(bias) if bias is not None else qkv.new_empty(0)
    return torch.empty_like(qkv), d_rpb, d_bias


def _setup_packed_context(ctx, inputs, output) -> None:
    qkv, pack_dim, rpb, bias, kernel_size, dilation, stride, scale, _ = inputs
    out, lse, table = output
    ctx.save_for_backward(qkv, rpb, bias, out, lse, table)
    ctx.params = (kernel_size, dilation, stride, scale)
    ctx.pack_dim = pack_dim
    ctx.mark_non_differentiable(lse, table)


def _backward_packed(ctx, backward_fn, grad_out, grad_lse, grad_table):
    qkv, rpb, bias, out, lse, table = ctx.saved_tensors
    d_qkv, d_rpb, d_bias = backward_fn(grad_out, qkv, ctx.pack_dim, out, lse, rpb, bias, table, *ctx.params)
    return (d_qkv, None, d_rpb if rpb is not None else None, d_bias if bias is not None else None,
            None, None, None, None, None)


_PACKED_OP = TritonOp("neighborhood_attention_2d_packed", _forward_packed, _forward_packed_fake, _backward_packed_impl,
                      _backward_packed_fake, _setup_packed_context, _backward_packed)


def neighborhood_attention_2d_triton(q, k, v, args: "NeighborhoodArgs", rpb, bias) -> torch.Tensor:
    """Run the Triton kernels on validated arguments (see :func:`vitzoo.ops.neighborhood_attention_2d`); q, k, v are
    cast to one dtype (the autocast dtype under autocast)."""
    dtype = _op_dtype(q, k, v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    from vitzoo.kernels._neighborhood_common import MAX_V_DIM  # value head dims one kernel call takes (padded)

    weights = [t for t in (rpb, bias) if t is not None]
    fixed = not (torch.is_grad_enabled() and any(t.requires_grad for t in weights))
    params = (list(args.kernel), list(args.dilation), list(args.stride), args.scale, fixed)
    if args.v_dim <= MAX_V_DIM:
        packed = packed_source(q, k, v) if torch.is_grad_enabled() and q.requires_grad else None
        if packed is not None:
            return _PACKED_OP(*packed, rpb, bias, *params)[0]
        return _OP(q, k, v, rpb, bias, *params)[0]
    # Value channels are independent given the attention weights, and every gradient is linear in the (dO, O, V)
    # channels (dS = P * (dO V^T - rowsum(dO * O)) sums over them), so one call per chunk of value channels gives the
    # exact output and, through autograd's sums of the q / k / rpb / bias gradients, the exact gradients; it costs
    # one q.k pass per chunk (EfficientViT-M2..M5: d_v 80-112, two chunks).
    chunks = v.split(MAX_V_DIM, dim=-1)
    return torch.cat([_OP(q, k, chunk, rpb, bias, *params)[0] for chunk in chunks], dim=-1)
