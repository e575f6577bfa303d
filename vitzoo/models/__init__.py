"""vitzoo model families; importing this package registers every model with timm."""
from . import nat  # noqa: F401  NAT / DiNAT
from . import maxvit  # noqa: F401  MaxViT (vz_maxvit_*)
from . import davit  # noqa: F401  DaViT (vz_davit_*)
from . import biformer  # noqa: F401  BiFormer (biformer_t / biformer_s / biformer_b)
from . import efficientvit_msra  # noqa: F401  EfficientViT-MSRA (vz_efficientvit_m0 ... vz_efficientvit_m5)
from . import halonet  # noqa: F401  HaloNet (vz_halonet26t / vz_halonet50ts / vz_halonet_h1)
from . import agent_swin  # noqa: F401  Agent-Swin (agent_swin_t / agent_swin_s / agent_swin_b)
from . import agent_pvt  # noqa: F401  Agent-PVT (agent_pvt_t / agent_pvt_s / agent_pvt_m / agent_pvt_l)
