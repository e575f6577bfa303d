"""Activations fused into the zoo's elementwise epilogues, and their derivatives for backwards, in fp32:
``none``, ``relu``, ``gelu_tanh`` (timm's GELUTanh: MaxViT), ``gelu`` (exact, erf) and ``silu``."""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["ACTIVATIONS", "apply_act", "act_grad"]

ACTIVATIONS = ("none", "relu", "gelu_tanh", "gelu", "silu")
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
GELU_CUBIC = tl.constexpr(0.044715)
INV_SQRT_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def apply_act(z, ACT: tl.constexpr):
    """act(z) for fp32 z."""
    if ACT == "relu":
        return tl.maximum(z, 0.0)
    elif ACT == "gelu_tanh":
        # 0.5 z (1 + tanh(u)) == z * sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3)
        return z * tl.sigmoid((z + z * z * z * GELU_CUBIC) * (2.0 * SQRT_2_OVER_PI))
    elif ACT == "gelu":
        return 0.5 * z * (1.0 + tl.math.erf(z * INV_SQRT_2))
    elif ACT == "silu":
        return z * tl.sigmoid(z)
    else:
        return z


@triton.jit
def act_grad(z, ACT: tl.constexpr):
    """d act / dz at fp32 z (relu: 0 at z <= 0, as torch's threshold_backward on the output)."""
    if ACT == "relu":
        return tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == "gelu_tanh":
        s = tl.sigmoid((z + z * z * z * GELU_CUBIC) * (2.0 * SQRT_2_OVER_PI))  # (1 + tanh(u)) / 2
        # d/dz [z s(2u)] = s + z * 2 s (1 - s) * du/dz, du/dz = sqrt(2/pi) (1 + 3 * 0.044715 z^2)
        return s + z * (2.0 * s * (1.0 - s)) * (SQRT_2_OVER_PI * (1.0 + (3.0 * z * z) * GELU_CUBIC))
    elif ACT == "gelu":
        return 0.5 * (1.0 + tl.math.erf(z * INV_SQRT_2)) + z * tl.exp(-0.5 * z * z) * INV_SQRT_2PI
    elif ACT == "silu":
        s = tl.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    else:
        return tl.full(z.shape, 1.0, tl.float32)
