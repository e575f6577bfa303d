"""Agent attention (Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention", ECCV 2024;
official code LeapLabTHU/Agent-Attention) as two biased dense attentions, plus the helpers that turn the official
module's parameters into the two dense biases, so official checkpoints load unchanged.

Mirrors ``AgentAttention.forward`` of ``agent_transformer/models/agent_swin.py`` and ``agent_pvt.py`` from the
agent pooling up to ``x = q_attn @ agent_v`` (the depthwise-conv term ``dwc(v)``, the projections and dropout stay in
the model). Naming: the official ``position_bias`` (agents -> keys) is our ``agent_bias``; the official
``agent_bias`` (queries -> agents) is our ``query_bias``.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .biased import biased_attention

__all__ = ["agent_attention", "pooled_agent_attention", "agent_pool", "AgentBiases", "agent_biases",
           "agent_swin_biases", "agent_pvt_biases"]

IntPair = Union[int, Sequence[int]]


def _pair(value: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(int(x) for x in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return value  # type: ignore[return-value]


def agent_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    agent_tokens: torch.Tensor,
    agent_bias: Optional[torch.Tensor] = None,
    query_bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Agent attention: agents gather from the keys, then the queries read from the agents.

    Args:
        q: (B, heads, N, d) queries. k: (B, heads, Nk, d), v: (B, heads, Nk, d_v) (Nk = N / sr_ratio**2 in
            Agent-PVT). agent_tokens: (B, heads, n_agent, d) (official: :func:`agent_pool` of q).
        agent_bias: logit bias of the agent -> key attention, (heads, n_agent, Nk) or anything
            :func:`~vitzoo.ops.biased.biased_attention` broadcasts (official ``position_bias``).
        query_bias: logit bias of the query -> agent attention, (heads, N, n_agent) or broadcastable (official
            ``agent_bias``).
        scale: default ``d ** -0.5`` (official ``head_dim ** -0.5``).
        backend: "auto" | "torch" | "triton", for both stages.

    Semantics (official numerics)::

        agent_v = softmax(scale * agent_tokens @ k^T + agent_bias) @ v          # (B, heads, n_agent, d_v)
        out     = softmax(scale * q @ agent_tokens^T + query_bias) @ agent_v    # (B, heads, N, d_v)

    Every input, both biases included, gets its gradient.
    """
    if not isinstance(agent_tokens, torch.Tensor) or agent_tokens.dim() != 4 or q.dim() != 4 \
            or agent_tokens.shape[:2] != q.shape[:2] or agent_tokens.shape[3] != q.shape[3]:
        raise ValueError(
            "agent_attention: agent_tokens must be (B, heads, n_agent, head_dim) matching q's (B, heads) and head_dim "
            f"{tuple(q.shape[:2]) + (q.shape[-1],)}, got "
            f"{tuple(agent_tokens.shape) if isinstance(agent_tokens, torch.Tensor) else type(agent_tokens).__name__}")
    agent_v = biased_attention(agent_tokens, k, v, agent_bias, scale=scale, backend=backend)
    return biased_attention(q, agent_tokens, agent_v, query_bias, scale=scale, backend=backend)


def pooled_agent_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    size: IntPair,
    agent_num: IntPair,
    agent_bias: Optional[torch.Tensor] = None,
    query_bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
    pack_qkv: bool = True,
) -> torch.Tensor:
    """Agent attention with the official agents, :func:`agent_pool` of q: the same result and gradients as
    ``agent_attention(q, k, v, agent_pool(q, size, agent_num), agent_bias, query_bias, scale, backend)``.

    On the Triton path the whole computation is one autograd node: its backward runs both attention backwards, adds
    the pooling's gradient into q's gradient in place (autograd would build the pooled gradient at q's size and add
    two or three q-sized gradients), and, when q, k, v are the slices of one projection output (``vitzoo.ops.
    _packed``) and ``pack_qkv``, writes dq, dk, dv into one buffer (no stack of the three). Pass ``pack_qkv=False``
    when q, k or v also feed another op (Agent attention's depthwise conv on v): autograd would then build that op's
    gradient as a zero-padded projection-sized tensor and add it to the packed one, more traffic than the stack it
    saves. Other args as :func:`agent_attention` and :func:`agent_pool`.
    """
    from ._agent_triton import pooled_agent_attention_triton

    h, w, ph, pw = _pool_geometry(q, size, agent_num)
    out = pooled_agent_attention_triton(q, k, v, (h, w), (ph, pw), agent_bias, query_bias, scale, backend, pack_qkv)
    if out is not None:  # None: the torch backend was chosen (or ``auto`` found the call unsupported)
        return out
    return agent_attention(q, k, v, agent_pool(q, (h, w), (ph, pw)), agent_bias, query_bias, scale=scale,
                           backend=backend)


def _pool_geometry(q: torch.Tensor, size: IntPair, agent_num: IntPair) -> Tuple[int, int, int, int]:
    """Validated (h, w, ph, pw) of :func:`agent_pool`."""
    h, w = _pair(size, "size")
    if isinstance(agent_num, int):
        side = math.isqrt(agent_num) if agent_num > 0 else 0
        if side * side != agent_num:
            raise ValueError(f"agent_pool: agent_num must be a perfect square (the official pool is "
                             f"int(agent_num ** 0.5) squared) or a (ph, pw) pair, got {agent_num}")
        pooled = (side, side)
    else:
        pooled = _pair(agent_num, "agent_num")
    if not isinstance(q, torch.Tensor) or q.dim() != 4 or q.shape[2] != h * w:
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"agent_pool: q must be (B, heads, h*w={h * w}, d), got {got}")
    return h, w, pooled[0], pooled[1]


def agent_pool(q: torch.Tensor, size: IntPair, agent_num: IntPair) -> torch.Tensor:
    """Agent tokens by adaptive average pooling of the queries over their (h, w) token grid.

    Mirrors the official ``agent_tokens = self.pool(q.reshape(b, h, w, c).permute(0, 3, 1, 2)).reshape(b, c, -1)
    .permute(0, 2, 1)`` followed by the per-head split, with
    ``self.pool = nn.AdaptiveAvgPool2d(int(agent_num ** 0.5))``.

    Args:
        q: (B, heads, N, d) with N = h * w (row-major token order).
        size: (h, w) of the token grid (Agent-Swin: the window; Agent-PVT: the stage's H, W).
        agent_num: a perfect square (the official models: 9, 16, 49) or an explicit (ph, pw) pooled grid.

    Returns (B, heads, ph * pw, d), agents in row-major order of the pooled grid.
    """
    h, w, *pooled = _pool_geometry(q, size, agent_num)
    pooled = tuple(pooled)
    batch, heads, _, dim = q.shape
    kind = pooling_kind((h, w), pooled)
    if kind == "identity":  # one token per bin (Agent-Swin stage 4, 7x7 -> 49 agents)
        return q
    if kind == "equal":  # one strided mean (one kernel, fp32 accumulation inside; no GEMMs, no casts)
        return q.reshape(batch, heads, pooled[0], h // pooled[0], pooled[1], w // pooled[1], dim).mean(dim=(3, 5)) \
            .reshape(batch, heads, -1, dim)
    # Adaptive average pooling is separable: bin (i, j) averages rows [start_i, end_i) x columns [start_j, end_j).
    # Two small contractions with 0/1 bin indicators (exact in every dtype) and one scaling by the bin areas run as
    # cuBLAS GEMMs; F.adaptive_avg_pool2d on the (B, heads*d, h, w) map took 1.1 ms for Agent-Swin-T stage 1 at
    # batch 128 on the H100 (one thread per output looping over a 19 x 19 bin), and needed a transposed copy of q.
    rows, cols, inv_area = _pool_operators((h, w), pooled, q.device, q.dtype)
    per_row = torch.matmul(cols, q.reshape(batch, heads, h, w, dim))  # (B, heads, h, pw, d): sums over columns
    sums = torch.matmul(rows, per_row.reshape(batch, heads, h, -1))  # (B, heads, ph, pw * d): then over rows
    return (sums.reshape(batch, heads, -1, dim) * inv_area).to(q.dtype)


def pooling_kind(size: Tuple[int, int], pooled: Tuple[int, int]) -> str:
    """How :func:`agent_pool` pools an (h, w) grid to (ph, pw): "identity" (one token per bin), "equal" (equal,
    disjoint bins) or "uneven" (adaptive bins, which may overlap)."""
    if tuple(pooled) == tuple(size):
        return "identity"
    return "equal" if size[0] % pooled[0] == 0 and size[1] % pooled[1] == 0 else "uneven"


def uneven_pool_backward(grad_tokens: torch.Tensor, size: Tuple[int, int], pooled: Tuple[int, int],
                         grad_q: torch.Tensor) -> torch.Tensor:
    """Add the gradient of :func:`agent_pool`'s uneven-bins path (its indicator GEMMs, transposed) for
    ``grad_tokens`` (B, heads, ph * pw, d) into ``grad_q`` (B, heads, h * w, d, any strides) in place; returns it.
    (Identity and equal bins: ``vitzoo.kernels.grid_pool_bwd``.)"""
    (h, w), (ph, pw) = size, pooled
    batch, heads, _, dim = grad_q.shape
    rows, cols, inv_area = _pool_operators((h, w), (ph, pw), grad_q.device, grad_q.dtype)
    grad_sums = (grad_tokens * inv_area).to(grad_q.dtype).reshape(batch, heads, ph, pw * dim)
    per_row = torch.matmul(rows.t(), grad_sums).reshape(batch, heads, h, pw, dim)  # back over rows
    return grad_q.add_(torch.matmul(cols.t(), per_row).reshape(batch, heads, h * w, dim))  # then over columns


@functools.lru_cache(maxsize=64)
def _pool_operators(size: Tuple[int, int], pooled: Tuple[int, int], device: torch.device, dtype: torch.dtype
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0/1 bin memberships of adaptive average pooling (bin ``i`` of ``n`` over length ``L`` spans ``floor(i * L / n)``
    to ``ceil((i + 1) * L / n)``, as ``F.adaptive_avg_pool2d``): rows (ph, h) and columns (pw, w) in ``dtype``, and
    the inverse bin areas (ph * pw, 1) in float32 (float64 for float64 inputs). Cached: no host work per call."""
    def bins(length: int, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        i = torch.arange(n)
        start, end = (i * length) // n, ((i + 1) * length + n - 1) // n
        pos = torch.arange(length)
        return (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None]), end - start

    # Built outside inference mode: a cached inference tensor would be refused by a later training call's autograd.
    with torch.inference_mode(False):
        (rows, row_len), (cols, col_len) = bins(size[0], pooled[0]), bins(size[1], pooled[1])
        area_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        inv_area = 1.0 / (row_len[:, None] * col_len[None, :]).reshape(-1, 1).to(area_dtype)
        return rows.to(device, dtype), cols.to(device, dtype), inv_area.to(device)


class AgentBiases(NamedTuple):
    """The two dense logit biases of one Agent-attention call (order = the official ``(position_bias, agent_bias)``).

    agent_bias: (heads, n_agent, Nk), the agent -> key bias (official ``position_bias``).
    query_bias: (heads, N, n_agent), the query -> agent bias (official ``agent_bias``).
    """

    agent_bias: torch.Tensor
    query_bias: torch.Tensor


def _check_param(t: torch.Tensor, name: str, shape: tuple) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape {shape}, got {got}")


def agent_biases(an_bias: torch.Tensor, na_bias: torch.Tensor, ah_bias: torch.Tensor, aw_bias: torch.Tensor,
                 ha_bias: torch.Tensor, wa_bias: torch.Tensor, q_size: IntPair, kv_size: IntPair) -> AgentBiases:
    """Dense biases from the official parameters for a (qh, qw) query grid and a (kh, kw) key grid.

    Official parameter shapes (``A`` = agent_num; the 7 x 7 is any (s, t)):
    an_bias, na_bias (heads, A, 7, 7); ah_bias (1, heads, A, kh, 1); aw_bias (1, heads, A, 1, kw);
    ha_bias (1, heads, qh, 1, A); wa_bias (1, heads, 1, qw, A).

    Computes the official forward's biases (bilinear, ``align_corners=False``, before its ``.repeat(b, 1, 1, 1)``;
    the resizes run as GEMMs with the interpolation matrix, see :func:`_bilinear_operator`)::

        agent_bias = interpolate(an_bias, (kh, kw)).reshape(heads, A, kh*kw) + (ah_bias + aw_bias).reshape(heads, A, -1)
        query_bias = interpolate(na_bias, (qh, qw)).reshape(heads, A, qh*qw).transpose(-1, -2)
                     + (ha_bias + wa_bias).reshape(heads, qh*qw, A)
    """
    qh, qw = _pair(q_size, "q_size")
    kh, kw = _pair(kv_size, "kv_size")
    for name, t in (("an_bias", an_bias), ("na_bias", na_bias)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be (heads, agent_num, s, t) (official: s = t = 7), got {got}")
    heads, agents = an_bias.shape[:2]
    if na_bias.shape[:2] != an_bias.shape[:2]:
        raise ValueError(f"na_bias must be (heads={heads}, agent_num={agents}, s, t), got {tuple(na_bias.shape)}")
    _check_param(ah_bias, "ah_bias", (1, heads, agents, kh, 1))
    _check_param(aw_bias, "aw_bias", (1, heads, agents, 1, kw))
    _check_param(ha_bias, "ha_bias", (1, heads, qh, 1, agents))
    _check_param(wa_bias, "wa_bias", (1, heads, 1, qw, agents))
    with torch.autocast(an_bias.device.type, enabled=False):  # the official biases are float32 under autocast too
        # agent -> key: (heads*A, s*t) @ interp^T + (ah + aw): one GEMM with the h/w sum as its addend
        agent_hw = (ah_bias + aw_bias).reshape(heads * agents, kh * kw)
        an_rows = an_bias.reshape(heads * agents, -1)
        interp = _bilinear_operator(tuple(an_bias.shape[2:]), (kh, kw), an_bias.device, an_bias.dtype)
        agent_bias = agent_hw + an_rows if interp is None else torch.addmm(agent_hw, an_rows, interp.t())
        # query -> agent: (heads, qh*qw, A) = interp @ na^T + (ha + wa): one batched GEMM, already transposed
        query_hw = (ha_bias + wa_bias).reshape(heads, qh * qw, agents)
        na_cols = na_bias.reshape(heads, agents, -1).transpose(1, 2)  # (heads, s*t, A), a view
        interp = _bilinear_operator(tuple(na_bias.shape[2:]), (qh, qw), na_bias.device, na_bias.dtype)
        query_bias = (query_hw + na_cols if interp is None
                      else torch.baddbmm(query_hw, interp.expand(heads, -1, -1), na_cols))
    return AgentBiases(agent_bias.reshape(heads, agents, kh * kw), query_bias)


@functools.lru_cache(maxsize=64)
def _bilinear_operator(src: Tuple[int, int], dst: Tuple[int, int], device: torch.device, dtype: torch.dtype
                       ) -> Optional[torch.Tensor]:
    """None when ``src == dst`` (``F.interpolate`` to its own size is the identity), else the (dst_h*dst_w,
    src_h*src_w) matrix of ``F.interpolate(mode="bilinear", align_corners=False)``: its columns are
    the resized unit maps (built in float64, so every weight is exact before the cast).

    Why a GEMM: CUDA ``upsample_bilinear2d`` runs one thread per output pixel looping over all channels; for the
    (heads, agents, 7, 7) -> (14, 14) biases of Agent-Swin-T stage 3 (588 channels, 196 pixels) it took 0.21 ms per
    call on the H100 (the official forward pays it twice), against a few microseconds here. Each output sums the
    same (at most four) weighted terms as the interpolation; only fp32 summation order can differ (and, when the
    user enables TF32 matmuls, the bias values are rounded to TF32 like any other matmul input)."""
    if src == dst:
        return None
    with torch.inference_mode(False):  # a cached inference tensor would be refused by a later training call
        n_src = src[0] * src[1]
        basis = torch.eye(n_src, dtype=torch.float64).reshape(n_src, 1, *src)
        cols = F.interpolate(basis, size=dst, mode="bilinear", align_corners=False).reshape(n_src, -1)
        return cols.t().contiguous().to(device, dtype)


def agent_swin_biases(an_bias, na_bias, ah_bias, aw_bias, ha_bias, wa_bias, window_size: IntPair) -> AgentBiases:
    """Biases of Agent-Swin's ``AgentAttention`` (``agent_transformer/models/agent_swin.py``): queries and keys
    are the same (window_h, window_w) window, so both interpolations target ``window_size``."""
    return agent_biases(an_bias, na_bias, ah_bias, aw_bias, ha_bias, wa_bias, window_size, window_size)


def agent_pvt_biases(an_bias, na_bias, ah_bias, aw_bias, ha_bias, wa_bias, window_size: IntPair,
                     sr_ratio: int = 1) -> AgentBiases:
    """Biases of Agent-PVT's ``AgentAttention`` (``agent_transformer/models/agent_pvt.py``): ``window_size`` is the
    module's (sqrt(num_patches), sqrt(num_patches)); keys are spatially reduced, so the agent -> key bias is
    interpolated to ``kv_size = window_size // sr_ratio`` and ah/aw_bias have that size; queries keep
    ``window_size``. (The downstream detection/segmentation variant, which re-interpolates to the runtime H, W and
    to a different agent grid, is not covered.)"""
    wh, ww = _pair(window_size, "window_size")
    if not isinstance(sr_ratio, int) or sr_ratio < 1:
        raise ValueError(f"sr_ratio must be a positive int, got {sr_ratio!r}")
    return agent_biases(an_bias, na_bias, ah_bias, aw_bias, ha_bias, wa_bias, (wh, ww),
                        (wh // sr_ratio, ww // sr_ratio))
