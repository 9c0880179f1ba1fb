"""momentum: in-place, one-pass optimizer kernels.

``update_buffer``, ``sgd`` and ``heavy_ball`` update C-contiguous float32 or
float64 arrays in place, bitwise equal to :mod:`momentum.reference`; every
rule is an entry of :mod:`momentum.rules`.
"""
import os as _os

from momentum import _api, foreach
from momentum._api import *  # noqa: F401,F403  (one function per rule of momentum.rules)
from momentum._config import show_config
from momentum._dispatch import available_isas, get_isa, set_isa
from momentum._threads import get_num_threads, set_num_threads
from momentum.arena import Arena

__version__ = "0.1.0"

__all__ = [
    *_api.__all__, "foreach", "Arena",
    "set_num_threads", "get_num_threads", "set_isa", "get_isa", "available_isas",
    "get_include", "show_config", "__version__",
]


def get_include() -> str:
    """The folder of momentum's C headers (``momentum.h``): add it to the
    include path of an extension that builds against the kernel table, from
    C or from Cython (which finds ``momentum/_kernels.pxd`` on ``sys.path``).
    See the README, "Embedding the kernels"."""
    return _os.path.join(_os.path.dirname(__file__), "include")
