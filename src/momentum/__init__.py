"""momentum: in-place, one-pass optimizer momentum kernels.

``update_buffer``, ``sgd`` and ``heavy_ball`` update C-contiguous float32 or
float64 arrays in place, bitwise equal to :mod:`momentum.reference`.
"""
from momentum import foreach
from momentum._api import heavy_ball, sgd, update_buffer
from momentum.arena import Arena
from momentum._config import show_config
from momentum._schedule import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "update_buffer", "sgd", "heavy_ball", "foreach", "Arena",
    "set_num_threads", "get_num_threads", "show_config", "__version__",
]
