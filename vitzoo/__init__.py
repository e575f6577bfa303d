"""vitzoo: efficient-attention vision backbones on one Triton attention-kernel layer, registered in timm.

``import vitzoo`` registers every vitzoo model with timm (``timm.create_model("biformer_s")``).
"""
import os as _os

__version__ = "0.1.0"

try:  # installed (pip install [-e] .): kernels/ is mapped to vitzoo.kernels by setuptools
    from . import kernels  # noqa: F401
except ImportError:  # a source checkout on sys.path without install: kernels/ sits beside vitzoo/
    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    if not _os.path.isfile(_os.path.join(_root, "kernels", "__init__.py")):
        raise
    __path__.append(_root)  # noqa: F821  (package __path__): vitzoo.kernels -> <checkout>/kernels
    from . import kernels  # noqa: F401

from . import ops  # noqa: E402,F401
from . import models  # noqa: E402,F401
