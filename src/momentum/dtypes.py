"""The storage dtypes of :mod:`momentum.rules` as NumPy dtypes.

NumPy has float16, float32 and float64; bfloat16 is ml_dtypes' (the NumPy
bfloat16 of JAX and TensorFlow), an optional dependency that only bfloat16
arrays through NumPy need.
"""
from __future__ import annotations

import numpy as np

from momentum.rules import DTYPES

__all__ = ["numpy_dtype", "numpy_dtypes"]


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of storage dtype ``name`` (one of momentum.rules.DTYPES).

    Raises ValueError for another name, ImportError for ``"bfloat16"``
    without ml_dtypes (``pip install ml_dtypes``).
    """
    if name not in DTYPES:
        raise ValueError(f"numpy_dtype(): {name!r} is not a storage dtype; choose from {DTYPES}")
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as error:
            raise ImportError("bfloat16 arrays through NumPy need ml_dtypes: "
                              "pip install ml_dtypes") from error
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def numpy_dtypes() -> dict[str, np.dtype]:
    """Every storage dtype NumPy can hold here, by name (bfloat16 only with ml_dtypes)."""
    out = {}
    for name in DTYPES:
        try:
            out[name] = numpy_dtype(name)
        except ImportError:
            pass
    return out
