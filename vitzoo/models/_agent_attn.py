"""Agent-attention module pieces shared by Agent-Swin and Agent-PVT.

Paper: Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention", ECCV 2024
(https://arxiv.org/abs/2312.08874); official code LeapLabTHU/Agent-Attention (``agent_transformer/models/
agent_swin.py``, ``agent_pvt.py`` and the mmdet/mmseg backbones under ``downstream/``).

:class:`AgentAttentionBase` owns everything the two families' ``AgentAttention`` modules have in common, under the
official parameter names: the six agent-bias tensors ``an_bias``, ``na_bias``, ``ah_bias``, ``aw_bias``,
``ha_bias``, ``wa_bias``, the depthwise conv ``dwc`` on V and the output projection ``proj``. The four per-axis biases
are stored without the official leading singleton axis (official ``ah_bias`` (1, heads, A, h, 1) is (heads, A, h, 1)
here): PyTorch refuses ``Module.to(memory_format=torch.channels_last)`` on a module with 5-D parameters, and the
repo's tools train and benchmark channels_last. The checkpoint filters squeeze that axis
(:func:`adapt_agent_bias_param`); every other official key and shape is kept. Subclasses add their q/k/v
projections (Swin: one ``qkv``; PVT: ``q``, ``kv`` and the optional spatial-reduction conv) and call
:meth:`AgentAttentionBase.agent_mix` and :meth:`AgentAttentionBase.output`.

Sizes. The biases are learned for one token grid (the stage map at the training resolution). For another runtime
grid the official downstream backbones interpolate them bilinearly to the runtime (H, W) (and, for the detection /
segmentation agent grids, along the agent axis too); :meth:`AgentAttentionBase.agent_biases` does the same. The
attention itself always runs through :func:`vitzoo.ops.pooled_agent_attention` (Triton on CUDA, torch reference on CPU).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import trunc_normal_

from vitzoo.ops import AgentBiases, agent_biases, pooled_agent_attention

from ._partition_attn import check_attn_backend

__all__ = ["AgentAttentionBase", "parse_attn_types", "resize_axis", "adapt_agent_bias_param", "unwrap_state_dict",
           "AGENT_BIAS_NAMES", "init_official_weights", "reset_linear_head"]

IntPair = Tuple[int, int]
AGENT_BIAS_NAMES = ("an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias")
# spatial axis of each per-axis bias as stored here: the official shapes (1, heads, A, h, 1), (1, heads, A, 1, w),
# (1, heads, h, 1, A), (1, heads, 1, w, A) without their leading singleton axis (see AgentAttentionBase)
_AXIS_OF = {"ah_bias": 2, "aw_bias": 3, "ha_bias": 1, "wa_bias": 2}


def _pair(value: Union[int, Sequence[int]], name: str) -> IntPair:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return value  # type: ignore[return-value]


def parse_attn_types(attn_type: str, depths: Sequence[int]) -> List[List[str]]:
    """Per-block attention kinds from the official ``MODEL.AGENT.ATTN_TYPE`` string.

    One letter per stage: ``A`` = agent attention, ``B`` = the family's plain attention (Swin: shifted-window; PVT:
    spatial-reduction), ``M`` = mixed stage whose first ``n`` blocks are agent blocks, ``n`` being the digits that
    follow the stage letters (official ``BasicLayer``: ``'AAMB2'`` -> stage 3 = A, A, B, B, ...).
    """
    num_stages = len(depths)
    if not isinstance(attn_type, str) or len(attn_type) < num_stages:
        raise ValueError(f"attn_type must be a string with one letter (A/B/M) per stage ({num_stages}), "
                         f"got {attn_type!r}")
    letters, suffix = attn_type[:num_stages].upper(), attn_type[num_stages:]
    if set(letters) - set("ABM"):
        raise ValueError(f"attn_type letters must be A (agent), B (plain) or M (mixed), got {attn_type!r}")
    if "M" in letters and not suffix.isdigit():
        raise ValueError(f"attn_type with a mixed stage (M) must end with its number of agent blocks, e.g. 'AAMB2'; "
                         f"got {attn_type!r}")
    if "M" not in letters and suffix:
        raise ValueError(f"attn_type has trailing characters {suffix!r} but no mixed (M) stage: {attn_type!r}")
    kinds = []
    for letter, depth in zip(letters, depths):
        if letter == "M":
            kinds.append(["A" if j < int(suffix) else "B" for j in range(depth)])
        else:
            kinds.append([letter] * depth)
    return kinds


def resize_axis(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Linear (``align_corners=False``) resampling of ``t`` along one axis.

    This is the official ``load_pretrained`` resize of ah/aw/ha/wa_bias (``mode='linear'``). It is also exactly the
    downstream backbones' bilinear resize of ``ah_bias + aw_bias`` (or ``ha_bias + wa_bias``) to a new (H, W):
    bilinear weights are separable and sum to one per axis, so resizing the sum of a column and a row term equals
    resizing each term along its own axis.
    """
    if t.shape[dim] == size:
        return t
    moved = t.movedim(dim, -1)
    out = F.interpolate(moved.reshape(1, -1, moved.shape[-1]), size=size, mode="linear", align_corners=False)
    return out.reshape(*moved.shape[:-1], size).movedim(-1, dim)


def _resize_agent_grid(bias: torch.Tensor, pool: IntPair, grid: IntPair, agent_dim: int) -> torch.Tensor:
    """Bilinear resize of the agent axis (a ``pool`` grid, row-major) to ``grid``: the official downstream
    backbones' ``downstream_agent_shape`` interpolation."""
    if agent_dim == 1:  # (heads, A, N) agent -> key bias
        heads, _, n = bias.shape
        grid_first = bias.transpose(1, 2).reshape(heads, n, *pool)
    else:  # (heads, N, A) query -> agent bias
        heads, n, _ = bias.shape
        grid_first = bias.reshape(heads, n, *pool)
    out = F.interpolate(grid_first, size=grid, mode="bilinear", align_corners=False).reshape(heads, n, -1)
    return out.transpose(1, 2) if agent_dim == 1 else out


class AgentAttentionBase(nn.Module):
    """Agent biases, depthwise conv and output projection of the official ``AgentAttention`` (both families).

    Args:
        dim: channels; num_heads: heads (``dim`` divisible by it).
        agent_num: agents of the official module (a perfect square, pooled on a sqrt x sqrt grid).
        q_grid: (h, w) query grid the ``ha/wa_bias`` are learned for (Swin: the stage map at the training size;
            PVT: ``sqrt(num_patches)``). kv_grid: key grid of ``ah/aw_bias`` (PVT: ``q_grid // sr_ratio``).
        dwc_kernel_size: depthwise conv on V (official 3).
        agent_shape: optional runtime agent grid (the downstream ``downstream_agent_shape``, e.g. (12, 12)); the
            learned biases are then resized along the agent axis, as in the official downstream backbones.
        proj_drop: dropout after ``proj``. attn_drop must be 0: the fused op has no attention dropout (every
            official config uses 0).
        attn_backend: "auto" | "torch" | "triton" for :func:`vitzoo.ops.pooled_agent_attention`.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            agent_num: int,
            q_grid: IntPair,
            kv_grid: IntPair,
            dwc_kernel_size: int = 3,
            agent_shape: Optional[IntPair] = None,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        side = math.isqrt(agent_num) if agent_num > 0 else 0
        if side * side != agent_num:
            raise ValueError(f"agent_num must be a perfect square (official pool: int(agent_num ** 0.5) squared), "
                             f"got {agent_num}")
        if dwc_kernel_size < 1 or dwc_kernel_size % 2 != 1:
            raise ValueError(f"dwc_kernel_size must be a positive odd int, got {dwc_kernel_size}")
        if attn_drop:
            raise ValueError(f"attn_drop must be 0.0: the fused agent-attention op has no attention dropout, "
                             f"got {attn_drop}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5  # the official module ignores qk_scale
        self.agent_num = agent_num
        self.pool_size = (side, side)
        self.agent_shape = _pair(agent_shape, "agent_shape") if agent_shape is not None else self.pool_size
        self.q_grid = _pair(q_grid, "q_grid")
        self.kv_grid = _pair(kv_grid, "kv_grid")
        self.attn_backend = check_attn_backend(attn_backend)
        (qh, qw), (kh, kw) = self.q_grid, self.kv_grid
        self.dwc = nn.Conv2d(dim, dim, dwc_kernel_size, padding=dwc_kernel_size // 2, groups=dim)
        self.an_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        # official shapes minus their leading 1 (module doc): (heads, A, kh, 1), (heads, A, 1, kw), ...
        self.ah_bias = nn.Parameter(torch.zeros(num_heads, agent_num, kh, 1))
        self.aw_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 1, kw))
        self.ha_bias = nn.Parameter(torch.zeros(num_heads, qh, 1, agent_num))
        self.wa_bias = nn.Parameter(torch.zeros(num_heads, 1, qw, agent_num))
        for name in AGENT_BIAS_NAMES:
            trunc_normal_(getattr(self, name), std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def agent_biases(self, q_size: IntPair, kv_size: IntPair) -> AgentBiases:
        """Dense (agent -> key, query -> agent) biases for a runtime query grid ``q_size`` and key grid ``kv_size``.

        At the learned grids this is exactly the official classification forward; elsewhere the per-axis biases are
        resized to the runtime grid first (= the official downstream bilinear resize, see :func:`resize_axis`).
        """
        ah, aw, ha, wa = self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias
        if tuple(kv_size) != self.kv_grid:
            ah, aw = resize_axis(ah, 2, kv_size[0]), resize_axis(aw, 3, kv_size[1])
        if tuple(q_size) != self.q_grid:
            ha, wa = resize_axis(ha, 1, q_size[0]), resize_axis(wa, 2, q_size[1])
        # the op helper takes the official 5-D shapes: add the leading 1 back (views)
        biases = agent_biases(self.an_bias, self.na_bias, ah[None], aw[None], ha[None], wa[None], q_size, kv_size)
        if self.agent_shape != self.pool_size:
            biases = AgentBiases(_resize_agent_grid(biases.agent_bias, self.pool_size, self.agent_shape, 1),
                                 _resize_agent_grid(biases.query_bias, self.pool_size, self.agent_shape, 2))
        return biases

    def agent_mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_size: IntPair,
                  kv_size: IntPair) -> torch.Tensor:
        """q: (B, Nq, C) on the ``q_size`` grid (row-major), k, v: (B, Nk, C) on ``kv_size`` -> (B, Nq, C): agents
        pooled from q, softmax(agents . k) @ v, then softmax(q . agents) @ agent values (before dwc and proj)."""
        batch, nq, channels = q.shape
        heads, d = self.num_heads, self.head_dim
        qh = q.view(batch, nq, heads, d).transpose(1, 2)  # strided views: the op takes any strides
        kh = k.view(batch, k.shape[1], heads, d).transpose(1, 2)
        vh = v.view(batch, v.shape[1], heads, d).transpose(1, 2)
        biases = self.agent_biases(q_size, kv_size)
        # v also feeds the depthwise conv (``output``): packing the qkv gradient would cost more than it saves
        out = pooled_agent_attention(qh, kh, vh, q_size, self.agent_shape, biases.agent_bias, biases.query_bias,
                                     scale=self.scale, backend=self.attn_backend, pack_qkv=False)
        return out.transpose(1, 2).reshape(batch, nq, channels)

    def output(self, x: torch.Tensor, v_map: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) agent output, v_map: (B, C, H, W) values on the query grid -> proj(x + dwc(v))."""
        # v_map is usually a strided slice of the qkv output. The conv would copy it to a dense layout in the forward
        # and again in its backward (autograd keeps the strided input); one explicit channels_last copy, saved for
        # the backward, does it once.
        v_map = v_map.contiguous(memory_format=torch.channels_last)
        x = x + self.dwc(v_map).flatten(2).transpose(1, 2)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, agent_num={self.agent_num}, agent_shape={self.agent_shape}, "
                f"q_grid={self.q_grid}, kv_grid={self.kv_grid}, backend={self.attn_backend!r}")


def adapt_agent_bias_param(name: str, value: torch.Tensor, target_shape: Sequence[int]) -> torch.Tensor:
    """An agent-bias tensor of a checkpoint in the model's shape: the official per-axis biases lose their leading
    singleton axis (see :class:`AgentAttentionBase`), and, as in the official ``load_pretrained`` (fine-tuning at
    288 / 384 from 224 weights), ah/aw/ha/wa_bias of another grid size are linearly resized along their spatial
    axis. Heads and agent counts must match; other keys are returned unchanged."""
    short = name.rsplit(".", 1)[-1]
    if short not in AGENT_BIAS_NAMES or tuple(value.shape) == tuple(target_shape):
        return value
    if short in _AXIS_OF and value.dim() == len(target_shape) + 1 and value.shape[0] == 1:
        value = value[0]  # official (1, heads, ...) layout
    axis = _AXIS_OF.get(short, -1)  # an/na_bias are always (heads, agents, 7, 7)
    if value.dim() != len(target_shape) or any(
            a != b for i, (a, b) in enumerate(zip(value.shape, target_shape)) if i != axis):
        raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} cannot be adapted to {tuple(target_shape)} "
                         f"(heads and agent_num must match)")
    if value.shape[axis] == target_shape[axis]:
        return value
    return resize_axis(value.float(), axis, int(target_shape[axis])).to(value.dtype)


def unwrap_state_dict(state_dict: Dict[str, object]) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint: official files store ``{'model': state_dict, 'optimizer': ..., 'epoch': ...}``;
    ``state_dict`` / ``model_ema`` wrappers and a DDP ``module.`` prefix are accepted too."""
    for wrapper in ("model", "state_dict", "model_ema"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]  # type: ignore[assignment]
            break
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}  # type: ignore


def init_official_weights(m: nn.Module) -> None:
    """The release's init (both families): trunc-normal(.02) linears with zero bias, unit LayerNorms; convs keep
    torch's default. Use as ``model.apply(init_official_weights)``."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def reset_linear_head(model: nn.Module, num_classes: int, global_pool: Optional[str]) -> None:
    """timm's ``reset_classifier`` for a pooled-linear head: ``global_pool`` '' or 'avg', the new head on the model's
    device and dtype (taken from any parameter: the final norm may have been pruned to Identity)."""
    if global_pool is not None:
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be '' or 'avg', got {global_pool!r}")
        model.global_pool = global_pool
    model.num_classes = num_classes
    ref = next(model.parameters())
    model.head = (nn.Linear(model.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                  if num_classes > 0 else nn.Identity())
