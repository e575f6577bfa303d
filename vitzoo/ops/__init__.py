"""vitzoo's attention-op layer: one public function per attention pattern, each with a pure-torch reference,
autograd, and a Triton backend chosen by ``backend="auto" | "torch" | "triton"`` (env ``VITZOO_ATTN_BACKEND``)."""
from ._backend import BACKENDS, ENV_VAR, resolve_backend
from .neighborhood import neighborhood_attention_2d, neighborhood_attention_2d_torch
from .biased import biased_attention, biased_attention_torch
from .agent import (agent_attention, pooled_agent_attention, agent_pool, agent_biases, agent_swin_biases,
                    agent_pvt_biases, AgentBiases)
from .halo import halo_attention_2d, halo_attention_2d_torch
from .routed import route_regions, routed_attention, routed_attention_torch
from .layer_norm import layer_norm, layer_norm_torch
from .linear import linear
from .channel import channel_attention, channel_attention_torch
from .cascaded import cascaded_group_attention, cascaded_group_attention_torch
from .residual import bias_residual_add
from .conv_act import channel_scale_, conv2d_bias_relu, depthwise_conv2d_act, same_padding
from .batch_norm import (ResidualNorm, batch_norm_act, batch_norm_act_max_pool, batch_norm_act_max_pool_torch,
                         batch_norm_act_torch)
from .squeeze_excite import squeeze_excite, squeeze_excite_torch
from .depthwise import depthwise_conv2d, depthwise_conv2d_torch
from ._weight_cache import clear_weight_cache, weight_cache_enabled
