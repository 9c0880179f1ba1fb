"""Type stubs for the compiled many-tensor kernels (``foreach.pyx``)."""
from collections.abc import Mapping, Sequence
from typing import Any

from typing_extensions import TypeAlias

from momentum._api import _Array, _Flag, _Real

__all__ = ["update_buffer", "sgd", "heavy_ball", "sgd_groups"]

_Arrays: TypeAlias = Sequence[_Array]

def update_buffer(bufs: _Arrays, grads: _Arrays, *, momentum: _Real,
                  dampening: _Real = 0.0) -> None: ...
def sgd(params: _Arrays, grads: _Arrays, bufs: Sequence[_Array | None] | None, *,
        lr: _Real, momentum: _Real = 0.0, dampening: _Real = 0.0,
        weight_decay: _Real = 0.0, nesterov: _Flag = False, maximize: _Flag = False,
        first_step: _Flag | Sequence[_Flag] = False) -> None: ...
def heavy_ball(params: _Arrays, grads: _Arrays, bufs: _Arrays, *, lr: _Real,
               momentum: _Real, weight_decay: _Real = 0.0, nesterov: _Flag = False,
               maximize: _Flag = False) -> None: ...
# Each group: "params", "grads", "bufs" and sgd()'s keyword arguments.
def sgd_groups(groups: Sequence[Mapping[str, Any]]) -> None: ...
