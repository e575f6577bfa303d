"""vitzoo: efficient-attention vision backbones on one Triton attention-kernel layer, registered in timm.

``import vitzoo`` registers every vitzoo model with timm (``timm.create_model("biformer_s")``).
"""
__version__ = "0.1.0"

from . import ops  # noqa: E402,F401
from . import models  # noqa: E402,F401
