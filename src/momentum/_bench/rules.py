"""The rules as the benchmark times them, and the bitwise correctness gate."""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from momentum import reference
from momentum._bench import storage
from momentum.dtypes import numpy_dtype
from momentum.rules import DTYPES as DTYPE_NAMES
from momentum.rules import RULES as TABLE
from momentum.rules import kernel_combos

# The rules the bench times: every rule of the table.
RULES = tuple(TABLE)
# The dtypes the kernel rows and the gate use, every array of a call alike.
DTYPES = (np.float32, np.float64)

# Array elements read plus written per element (the performance contract).
ELEMENTS_MOVED = {name: TABLE[name].elements_moved for name in RULES}

# The hyperparameters every timed call uses: a typical ResNet training step.
TIMED = {name: dict(TABLE[name].typical) for name in RULES}

# Every branch of each rule, for the gate: each flag off and on, each
# optional value zero and not (values inexact in float32).
NONZERO = {"lr": 0.01, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2,
           "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": 7}
CASES = {name: list(TABLE[name].cases(NONZERO)) for name in RULES}

# One size per code path: the single-thread loop and the threaded split.
GATE_SIZES = (1031, (1 << 17) + 37)
# A rule with more dtype combinations than this (Adam's five arrays: 244) is
# gated in the named layouts only; tests/test_half.py covers the rest.
EVERY_COMBO_UP_TO = 64
# The stochastic rounding's key in the gate's calls (not the defaults, 0).
RANDOM = {"seed": 12345, "step": 7}


def arrays(n: int, dtype: type, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(param, grad, buf)``: standard normal values of ``dtype``, length ``n``."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(n, dtype=dtype) for _ in range(3))


def args(rule: str, param: np.ndarray, grad: np.ndarray,
         buf: np.ndarray | None) -> tuple:
    """The positional arrays of ``rule``, in the table's order, from ``(param, grad, buf)``."""
    given = {"param": param, "grad": grad, "buf": buf}
    return tuple(given[a.name] for a in TABLE[rule].arrays)


def _bits(a: np.ndarray) -> np.ndarray:
    """The array's bit patterns, so that -0.0 != 0.0 and equal NaNs compare equal."""
    return a.view(f"u{a.itemsize}")


def missing_dtypes() -> dict[str, str]:
    """The storage dtypes NumPy cannot hold here, and why (bfloat16 without ml_dtypes)."""
    missing = {}
    for name in DTYPE_NAMES:
        try:
            numpy_dtype(name)
        except ImportError:
            missing[name] = "not installed (ml_dtypes)"
    return missing


def gate_plan(rule: str) -> list[tuple[storage.Layout, int, list[dict]]]:
    """``(layout, n, cases)`` the gate runs for ``rule``: every layout the
    kernels are built for, every branch at the single-thread size; at the
    threaded size every branch of the named layouts and the typical call
    of the others (all branches of all of them take too long for a quick run)."""
    plan = []
    named = storage.layouts(TABLE[rule])
    every = len(kernel_combos(TABLE[rule])) <= EVERY_COMBO_UP_TO
    for layout in storage.layouts(TABLE[rule], every=every):
        plan.append((layout, GATE_SIZES[0], CASES[rule]))
        plan.append((layout, GATE_SIZES[1], CASES[rule] if layout in named else [TIMED[rule]]))
    return plan


def check_rules(impl: Mapping[str, Callable]) -> list[str]:
    """Run each rule of ``impl`` and of :mod:`momentum.reference` on the same
    data, in every storage layout of gate_plan() NumPy can hold here.

    Returns one message per case whose outputs differ in any bit (empty: all
    equal).  ``impl`` maps a rule's name to its function.
    """
    failures = []
    missing = missing_dtypes()
    for rule in RULES:
        spec_fn = getattr(reference, rule)
        for layout, n, cases in gate_plan(rule):
            if any(d in missing for _, d in layout.dtypes):
                continue
            for hyper in cases:
                mine = storage.make(layout, n, seed=n, rule=TABLE[rule])
                spec = {k: a.copy() for k, a in mine.items()}
                for a in TABLE[rule].arrays:
                    if a.when and not hyper[a.when]:  # an array this call does not use
                        mine[a.name] = spec[a.name] = None
                for arrays, fn in ((mine, impl[rule]), (spec, spec_fn)):
                    positional, keywords = storage.call(TABLE[rule], layout, arrays)
                    # (Adam's own step is its stochastic key's step: it wins over RANDOM's.)
                    fn(*positional, **{**RANDOM, **hyper}, **keywords)
                for name, a in mine.items():
                    if a is not None and not np.array_equal(_bits(a), _bits(spec[name])):
                        failures.append(f"{rule} {layout.label(TABLE[rule])} n={n} {hyper}: "
                                        f"'{name}' differs from the reference")
    return failures
