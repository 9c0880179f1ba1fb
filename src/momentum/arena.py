"""A flat arena: a model's parameters, gradients and buffers in one block each.

Every tensor of the model is a view into one contiguous block per array of
the rules (``params``, ``grads``, ``bufs``: the arrays named in
:mod:`momentum.rules`), so a whole optimizer step is ONE kernel call over the
blocks, with no per-tensor cost at all (the idea of FSDP flat parameters and
DDP gradient buckets).  Every elementwise rule of the table is a method.

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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import DTypeLike

from momentum import _api
from momentum.rules import RULES, Rule

__all__ = ["Arena"]

ALIGN = 64  # bytes
# One block per array name of the rules, in the table's order: param, grad, buf.
ROLES = tuple(dict.fromkeys(a.name for rule in RULES.values() for a in rule.arrays))


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
        params, grads, bufs (one per array name of the rules): the flat 1-d
            blocks (NumPy arrays).
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
        for role in ROLES:
            block = _aligned_zeros(end, self.dtype)
            setattr(self, role + "s", block)
            setattr(self, role + "_views", self._views(block))

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

    if TYPE_CHECKING:
        # One method per elementwise rule, made below from the table.
        def __getattr__(self, name: str) -> Callable[..., None]: ...


def _step(rule: Rule):
    """Arena's method for ``rule``: the rule over the whole blocks at once."""
    kernel = getattr(_api, rule.name)
    blocks = [a.plural for a in rule.arrays]

    def step(self: Arena, **hyper: float | bool) -> None:
        kernel(*(getattr(self, block) for block in blocks), **hyper)

    formula = "\n".join("    " + line for line in rule.formula.splitlines())
    step.__name__ = rule.name
    step.__qualname__ = f"Arena.{rule.name}"
    step.__doc__ = (f":func:`momentum.{rule.name}` on the whole arena in one call, on "
                    f"the blocks {', '.join(blocks)}; takes its keyword arguments "
                    f"({', '.join(h.name for h in rule.hypers)})::\n\n{formula}\n")
    return step


# Only an elementwise rule can step tensors laid end to end as one array.
for _rule in RULES.values():
    if _rule.elementwise:
        setattr(Arena, _rule.name, _step(_rule))
