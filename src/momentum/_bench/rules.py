"""The rules as the benchmark times them, and the bitwise correctness gate."""
from __future__ import annotations

import itertools
from typing import Callable, Mapping

import numpy as np

from momentum import reference
from momentum.rules import RULES as TABLE

RULES = tuple(TABLE)
# The dtypes the kernel rows and the gate use, every array of a call alike.
DTYPES = (np.float32, np.float64)

# Array elements read plus written per element (the performance contract).
ELEMENTS_MOVED = {name: rule.elements_moved for name, rule in TABLE.items()}

# The hyperparameters every timed call uses: a typical ResNet training step.
TIMED = {name: dict(rule.typical) for name, rule in TABLE.items()}

# Every branch of each rule, for the gate: each flag off and on, each
# optional value zero and not (values inexact in float32).
NONZERO = {"lr": 0.01, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2}
CASES = {name: list(rule.cases(NONZERO)) for name, rule in TABLE.items()}

# One size per code path: the single-thread loop and the threaded split.
GATE_SIZES = (1031, (1 << 17) + 37)


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


def check_rules(impl: Mapping[str, Callable]) -> list[str]:
    """Run each rule of ``impl`` and of :mod:`momentum.reference` on the same data.

    Returns one message per case whose outputs differ in any bit (empty: all
    equal).  ``impl`` maps a rule's name to its function.
    """
    failures = []
    for rule, dtype, n in itertools.product(RULES, DTYPES, GATE_SIZES):
        for hyper in CASES[rule]:
            mine = list(arrays(n, dtype, seed=n))
            spec = [a.copy() for a in mine]
            for a in TABLE[rule].arrays:
                if a.when and not hyper[a.when]:  # an array this call does not use
                    k = ("param", "grad", "buf").index(a.name)
                    mine[k] = spec[k] = None
            impl[rule](*args(rule, *mine), **hyper)
            getattr(reference, rule)(*args(rule, *spec), **hyper)
            for name, a, b in zip(("param", "grad", "buf"), mine, spec):
                if a is not None and not np.array_equal(_bits(a), _bits(b)):
                    failures.append(f"{rule} {np.dtype(dtype).name} n={n} {hyper}: "
                                    f"'{name}' differs from the reference")
    return failures
