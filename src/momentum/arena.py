"""A flat arena: a model's parameters, gradients and buffers in three blocks.

Every tensor of the model is a view into one contiguous block per role, so a
whole optimizer step is ONE kernel call over each block, with no per-tensor
cost at all (the idea of FSDP flat parameters and DDP gradient buckets).

Each tensor starts on a 64-byte boundary (a cache line; a full AVX-512
vector); the gaps between tensors are padding that starts at zero.  A step
maps zero padding to zero (``0 - lr * 0``), so the padding stays zero and
harmless as long as nothing but the views writes into the blocks.

The blocks are ordinary NumPy arrays, so other frameworks can share them
without a copy, e.g. ``torch.from_numpy(arena.param_views[i])`` is a tensor
that aliases the arena.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import DTypeLike

from momentum import _api

__all__ = ["Arena"]

ALIGN = 64  # bytes


def _aligned_zeros(n: int, dtype: np.dtype) -> np.ndarray:
    """``np.zeros(n, dtype)`` whose first element sits on an ALIGN boundary."""
    raw = np.zeros(n + ALIGN // dtype.itemsize, dtype)
    skip = (-raw.ctypes.data % ALIGN) // dtype.itemsize
    return raw[skip:skip + n]


class Arena:
    """Parameters, gradients and momentum buffers of many tensors, packed flat.

    ``Arena(shapes, dtype=np.float32)`` makes zero-filled blocks for tensors
    of the given shapes; :meth:`from_arrays` copies existing parameters in.

    Attributes:
        params, grads, bufs: the flat 1-d blocks (NumPy arrays).
        param_views, grad_views, buf_views: one array per tensor, shaped like
            it, each a view into its block.
        shapes: the tensors' shapes; offsets: where each tensor starts in the
            blocks (in elements, a multiple of 64 bytes).
    """

    def __init__(self, shapes: Iterable[Sequence[int]],
                 dtype: DTypeLike = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"Arena(): 'dtype' must be float32 or float64, "
                            f"not {self.dtype}")
        self.shapes = [tuple(int(d) for d in shape) for shape in shapes]
        step = ALIGN // self.dtype.itemsize
        self.offsets: list[int] = []
        end = 0
        for shape in self.shapes:
            if any(d < 0 for d in shape):
                raise ValueError(f"Arena(): negative dimension in shape {shape}")
            self.offsets.append(end)
            end += -(-math.prod(shape) // step) * step
        self.params = _aligned_zeros(end, self.dtype)
        self.grads = _aligned_zeros(end, self.dtype)
        self.bufs = _aligned_zeros(end, self.dtype)
        self.param_views = self._views(self.params)
        self.grad_views = self._views(self.grads)
        self.buf_views = self._views(self.bufs)

    @classmethod
    def from_arrays(cls, arrays: Iterable[np.ndarray],
                    dtype: DTypeLike | None = None) -> Arena:
        """An arena whose parameters are copies of ``arrays`` (grads, bufs zero).

        ``dtype`` defaults to the arrays' common dtype.
        """
        arrays = [np.asarray(a) for a in arrays]
        if dtype is None:
            dtype = np.result_type(*arrays) if arrays else np.float32
        arena = cls([a.shape for a in arrays], dtype)
        for view, a in zip(arena.param_views, arrays):
            view[...] = a
        return arena

    def _views(self, block: np.ndarray) -> list[np.ndarray]:
        return [block[start:start + math.prod(shape)].reshape(shape)
                for start, shape in zip(self.offsets, self.shapes)]

    def __len__(self) -> int:
        return len(self.shapes)

    def __repr__(self) -> str:
        return (f"Arena({len(self)} tensors, {self.params.size} elements "
                f"per block, dtype={self.dtype})")

    def zero_grad(self) -> None:
        """Set every gradient (and the padding between them) to zero."""
        self.grads.fill(0)

    def update_buffer(self, *, momentum: float, dampening: float = 0.0) -> None:
        """:func:`momentum.update_buffer` on the whole arena in one call.

        ``bufs = momentum * bufs + (1 - dampening) * grads``
        """
        _api.update_buffer(self.bufs, self.grads, momentum=momentum, dampening=dampening)

    def sgd(self, **hyper) -> None:
        """:func:`momentum.sgd` on the whole arena in one call.

        Takes sgd's keyword arguments (``lr``, ``momentum``, ``dampening``,
        ``weight_decay``, ``nesterov``, ``maximize``, ``first_step``)::

            g = -grads if maximize else grads
            if weight_decay != 0: g = g + weight_decay * params
            if momentum != 0:
                bufs = g if first_step else momentum * bufs + (1 - dampening) * g
                g = g + momentum * bufs if nesterov else bufs
            params = params - lr * g
        """
        _api.sgd(self.params, self.grads, self.bufs, **hyper)

    def heavy_ball(self, **hyper) -> None:
        """:func:`momentum.heavy_ball` on the whole arena in one call.

        Takes heavy_ball's keyword arguments (``lr``, ``momentum``,
        ``weight_decay``, ``nesterov``, ``maximize``)::

            g = -grads if maximize else grads
            if weight_decay != 0: g = g + weight_decay * params
            bufs = momentum * bufs + lr * g
            params = params - (momentum * bufs + lr * g) if nesterov else params - bufs
        """
        _api.heavy_ball(self.params, self.grads, self.bufs, **hyper)
