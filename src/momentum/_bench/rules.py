"""The rules as the benchmark times them, and the bitwise correctness gate."""
from __future__ import annotations

import itertools
from typing import Callable, Mapping

import numpy as np

from momentum import reference

RULES = ("update_buffer", "sgd", "heavy_ball")
DTYPES = (np.float32, np.float64)

# Array elements read plus written per element (the performance contract).
ELEMENTS_MOVED = {"update_buffer": 3, "sgd": 5, "heavy_ball": 5}

# The hyperparameters every timed call uses: a typical ResNet training step.
TIMED = {
    "update_buffer": {"momentum": 0.9},
    "sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "heavy_ball": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
}

# Every branch of each rule, for the gate.
CASES = {
    "update_buffer": [
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.9},
        {"momentum": 0.5, "dampening": 0.1},
    ],
    "sgd": [
        {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        {"lr": 0.01, "momentum": 0.9, "nesterov": True},
        {"lr": 0.1, "momentum": 0.8, "dampening": 0.1, "maximize": True},
        {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-2, "first_step": True},
        {"lr": 0.5, "weight_decay": 1e-3},
    ],
    "heavy_ball": [
        {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        {"lr": 0.01, "momentum": 0.9, "nesterov": True},
        {"lr": 0.1, "momentum": 0.5, "maximize": True, "weight_decay": 1e-2},
    ],
}

# One size per code path: the single-thread loop and the threaded split.
GATE_SIZES = (1031, (1 << 17) + 37)


def arrays(n: int, dtype: type, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(param, grad, buf)``: standard normal values of ``dtype``, length ``n``."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(n, dtype=dtype) for _ in range(3))


def args(rule: str, param: np.ndarray, grad: np.ndarray,
         buf: np.ndarray | None) -> tuple:
    """The positional arrays of ``rule``: ``(buf, grad)`` or ``(param, grad, buf)``."""
    return (buf, grad) if rule == "update_buffer" else (param, grad, buf)


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
            if rule == "sgd" and hyper.get("momentum", 0.0) == 0.0:
                mine[2] = spec[2] = None  # sgd without momentum takes no buffer
            impl[rule](*args(rule, *mine), **hyper)
            getattr(reference, rule)(*args(rule, *spec), **hyper)
            for name, a, b in zip(("param", "grad", "buf"), mine, spec):
                if a is not None and not np.array_equal(_bits(a), _bits(b)):
                    failures.append(f"{rule} {np.dtype(dtype).name} n={n} {hyper}: "
                                    f"'{name}' differs from the reference")
    return failures
