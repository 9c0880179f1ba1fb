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

Each block has its own storage dtype (``dtypes={"buf": np.float32}`` keeps
float32 momentum beside bfloat16 parameters), and the arena's ``rounding``
says how a 16-bit parameter is stored: with ``"kahan"`` a ``comps`` block
(the parameters' dtype) holds the compensation, with ``"master"`` a float32
``masters`` block the master copy the rules update.  Stochastic rounding is
keyed on each tensor's key (``tensors``: by default its index in the arena)
and on the element's index within the tensor, so an arena step rounds
exactly as :func:`momentum.foreach` over the views with those ``tensors``
does: those steps run one task per tensor.  An arena holding part of a
model (an optimizer's param group) gives its tensors their keys in the
whole model, so that they round alike however the model is split.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import DTypeLike

from momentum import _api, foreach
from momentum.dtypes import numpy_dtype
from momentum.rules import DTYPES, RULES, ROUNDINGS, STATE_ROUNDINGS, Rule

__all__ = ["Arena"]

ALIGN = 64  # bytes
# One block per array name of the rules, in the table's order: param, grad, buf.
ROLES = tuple(dict.fromkeys(a.name for rule in RULES.values() for a in rule.arrays))
# The block each rounding adds (its dtype: None for the parameters').
EXTRA = {"kahan": ("comp", None), "master": ("master", "float32")}


def _aligned_zeros(n: int, dtype: np.dtype) -> np.ndarray:
    """``np.zeros(n, dtype)`` whose first element sits on an ALIGN boundary."""
    raw = np.zeros(n + ALIGN // dtype.itemsize, dtype)
    skip = (-raw.ctypes.data % ALIGN) // dtype.itemsize
    return raw[skip:skip + n]


class Arena:
    """Parameters, gradients and momentum buffers of many tensors, packed flat.

    ``Arena(shapes, dtype=np.float32)`` makes zero-filled blocks for tensors
    of the given shapes; :meth:`from_arrays` copies existing parameters in.
    ``dtypes`` gives some blocks another storage dtype than ``dtype`` (by
    array name: ``{"buf": np.float32}``); float64 blocks go only with float64
    blocks.  ``rounding`` (one of momentum.rules.ROUNDINGS) and
    ``state_rounding`` say how 16-bit parameters and state are stored;
    ``tensors`` gives each tensor its key for stochastic rounding (ints in
    [0, 2**64), one per shape; default ``range(len(shapes))``).

    Attributes:
        params, grads, bufs (one per array name of the rules), and comps
            (rounding "kahan") or masters ("master"): the flat 1-d blocks.
        param_views, grad_views, buf_views, ...: one array per tensor, shaped
            like it, each a view into its block.
        dtypes: each block's dtype by array name; dtype: the parameters'.
        shapes: the tensors' shapes; offsets: where each tensor starts in the
            blocks (in elements, a multiple of 64 bytes in every block).
        tensors: each tensor's stochastic-rounding key, a tuple of ints.
    """

    def __init__(self, shapes: Iterable[Sequence[int]],
                 dtype: DTypeLike = np.float32, *,
                 dtypes: dict[str, DTypeLike] | None = None,
                 rounding: str = "nearest", state_rounding: str = "nearest",
                 tensors: Iterable[int] | None = None) -> None:
        self.dtype = _storage_dtype(dtype, "dtype")
        self.dtypes = {role: self.dtype for role in ROLES}
        for role, given in (dtypes or {}).items():
            if role not in ROLES:
                raise ValueError(f"Arena(): 'dtypes' has {role!r}; the blocks are {ROLES}")
            self.dtypes[role] = _storage_dtype(given, f"dtypes[{role!r}]")
        if rounding not in ROUNDINGS:
            raise ValueError(f"Arena(): 'rounding' must be one of {ROUNDINGS}, got {rounding!r}")
        if state_rounding not in STATE_ROUNDINGS:
            raise ValueError(f"Arena(): 'state_rounding' must be one of {STATE_ROUNDINGS}, "
                             f"got {state_rounding!r}")
        self.rounding, self.state_rounding = rounding, state_rounding
        if rounding in EXTRA and self.dtype.itemsize != 2:
            raise TypeError(f"Arena(): rounding={rounding!r} needs a 16-bit 'dtype' for the "
                            f"parameters, not {self.dtype}")
        if rounding in EXTRA:
            role, extra = EXTRA[rounding]
            self.dtypes[role] = np.dtype(extra) if extra else self.dtype
        if len({d == np.float64 for d in self.dtypes.values()}) > 1:
            raise TypeError(f"Arena(): float64 blocks are not mixed with other dtypes "
                            f"({', '.join(f'{r}: {d}' for r, d in self.dtypes.items())})")
        self.shapes = [tuple(int(d) for d in shape) for shape in shapes]
        # Every block's tensors start on ALIGN bytes: the step is the
        # smallest item's count of ALIGN bytes.
        step = ALIGN // min(d.itemsize for d in self.dtypes.values())
        self.offsets: list[int] = []
        end = 0
        for shape in self.shapes:
            if any(d < 0 for d in shape):
                raise ValueError(f"Arena(): negative dimension in shape {shape}")
            self.offsets.append(end)
            end += -(-math.prod(shape) // step) * step
        self.tensors = tuple(range(len(self.shapes))) if tensors is None \
            else _keys(tensors, len(self.shapes))
        for role, block_dtype in self.dtypes.items():
            block = _aligned_zeros(end, block_dtype)
            setattr(self, role + "s", block)
            setattr(self, role + "_views", self._views(block))

    @classmethod
    def from_arrays(cls, arrays: Iterable[np.ndarray], dtype: DTypeLike | None = None,
                    **options) -> Arena:
        """An arena whose parameters are copies of ``arrays`` (grads, bufs,
        comps zero; masters, with rounding "master", the float32 values of
        the parameters as stored).

        ``dtype`` defaults to the arrays' common dtype; ``options`` are the
        constructor's (``dtypes``, ``rounding``, ``state_rounding``, ``tensors``).
        """
        arrays = [np.asarray(a) for a in arrays]
        if dtype is None:
            dtype = np.result_type(*arrays) if arrays else np.float32
        arena = cls([a.shape for a in arrays], dtype, **options)
        for view, a in zip(arena.param_views, arrays):
            view[...] = a
        if arena.rounding == "master":
            arena.masters[...] = arena.params.astype(np.float32)
        return arena

    def _views(self, block: np.ndarray) -> list[np.ndarray]:
        return [block[start:start + math.prod(shape)].reshape(shape)
                for start, shape in zip(self.offsets, self.shapes)]

    def __len__(self) -> int:
        return len(self.shapes)

    def __repr__(self) -> str:
        other = {r: str(d) for r, d in self.dtypes.items() if d != self.dtype}
        return (f"Arena({len(self)} tensors, {self.params.size} elements "
                f"per block, dtype={self.dtype}"
                + (f", dtypes={other}" if other else "")
                + (f", rounding={self.rounding!r}" if self.rounding != "nearest" else "")
                + (f", state_rounding={self.state_rounding!r}"
                   if self.state_rounding != "nearest" else "") + ")")

    def zero_grad(self) -> None:
        """Set every gradient (and the padding between them) to zero."""
        self.grads.fill(0)

    if TYPE_CHECKING:
        # One method per elementwise rule, made below from the table.
        def __getattr__(self, name: str) -> Callable[..., None]: ...


def _storage_dtype(dtype: DTypeLike, name: str) -> np.dtype:
    """``dtype`` as a NumPy dtype that is a storage dtype, or TypeError."""
    given = np.dtype(dtype) if not isinstance(dtype, str) or dtype != "bfloat16" \
        else numpy_dtype("bfloat16")
    if not given.isnative or given.name not in DTYPES or (given.name == "bfloat16"
                                    and given.type.__module__.split(".")[0] != "ml_dtypes"):
        raise TypeError(f"Arena(): {name!r} must be one of {', '.join(DTYPES)}, not {given}")
    return given


def _keys(tensors: Iterable[int], n: int) -> tuple[int, ...]:
    """``tensors`` as a tuple of ``n`` stochastic-rounding keys (ints in
    [0, 2**64)), or TypeError/ValueError."""
    keys = tuple(tensors)
    if len(keys) != n:
        raise ValueError(f"Arena(): 'tensors' has {len(keys)} keys for {n} shapes")
    for i, key in enumerate(keys):
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"Arena(): 'tensors[{i}]' must be an int, not {type(key).__name__}")
        if not 0 <= key < 1 << 64:
            raise ValueError(f"Arena(): 'tensors[{i}]' must be in [0, 2**64), got {key!r}")
    return tuple(int(key) for key in keys)


def _step(rule: Rule):
    """Arena's method for ``rule``: the rule over the whole blocks at once
    (one task per tensor where stochastic rounding needs each tensor's key)."""
    kernel = getattr(_api, rule.name)
    each = getattr(foreach, rule.name)
    blocks = [a.name for a in rule.arrays]
    has_param = rule.param is not None

    def step(self: Arena, *, seed: int = 0, step: int = 0, **hyper: float | bool) -> None:
        rounding = {"rounding": self.rounding} if has_param else {}
        if has_param and self.rounding in EXTRA:
            extra = EXTRA[self.rounding][0]
            rounding[extra] = getattr(self, extra + "s")
        if "stochastic" in (rounding.get("rounding"), self.state_rounding):
            views = [getattr(self, block + "_views") for block in blocks]
            if has_param and self.rounding in EXTRA:
                rounding[extra + "s"] = getattr(self, extra + "_views")
                del rounding[extra]
            each(*views, **rounding, state_rounding=self.state_rounding, seed=seed,
                 step=step, tensors=self.tensors, **hyper)
        else:
            kernel(*(getattr(self, block + "s") for block in blocks), **rounding,
                   state_rounding=self.state_rounding, seed=seed, step=step, **hyper)

    formula = "\n".join("    " + line for line in rule.formula.splitlines())
    step.__name__ = rule.name
    step.__qualname__ = f"Arena.{rule.name}"
    step.__doc__ = (f":func:`momentum.{rule.name}` on the whole arena in one call, on "
                    f"the blocks {', '.join(b + 's' for b in blocks)}, with the arena's "
                    f"rounding; takes its keyword arguments "
                    f"({', '.join(h.name for h in rule.hypers)}) and the stochastic "
                    f"rounding's ``seed`` and ``step`` (each tensor's key: ``tensors``)"
                    f"::\n\n{formula}\n")
    return step


# Only an elementwise rule can step tensors laid end to end as one array.
for _rule in RULES.values():
    if _rule.elementwise:
        setattr(Arena, _rule.name, _step(_rule))
