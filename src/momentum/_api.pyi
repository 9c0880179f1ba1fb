"""Type stubs for the compiled single-array kernels (``_api.pyx``)."""
from typing import Any, SupportsFloat, SupportsIndex

import numpy as np
from numpy.typing import NDArray
from typing_extensions import Buffer, TypeAlias

# What the kernels accept: a float32 or float64 ndarray, or any object exporting
# a buffer (checked at run time: C-contiguous, aligned, one dtype and shape).
# floating[Any], not float32 | float64: code that annotates its arrays as
# NDArray[np.floating[Any]] must type-check.
_Array: TypeAlias = NDArray[np.floating[Any]] | Buffer
# A hyperparameter: anything PyFloat_AsDouble takes (int, float, NumPy scalars).
_Real: TypeAlias = SupportsFloat | SupportsIndex
_Flag: TypeAlias = bool | np.bool_

def update_buffer(buf: _Array, grad: _Array, *, momentum: _Real,
                  dampening: _Real = 0.0) -> None: ...
def sgd(param: _Array, grad: _Array, buf: _Array | None, *, lr: _Real,
        momentum: _Real = 0.0, dampening: _Real = 0.0, weight_decay: _Real = 0.0,
        nesterov: _Flag = False, maximize: _Flag = False,
        first_step: _Flag = False) -> None: ...
def heavy_ball(param: _Array, grad: _Array, buf: _Array, *, lr: _Real, momentum: _Real,
               weight_decay: _Real = 0.0, nesterov: _Flag = False,
               maximize: _Flag = False) -> None: ...
