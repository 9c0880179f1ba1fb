"""Whole optimizer steps over the parameter shapes of real models."""
from __future__ import annotations

import json
import math
from importlib import resources
from typing import Callable

import numpy as np

import momentum
from momentum import reference
from momentum._bench.peers import TORCH_MODES, torch_sgd
from momentum._bench.rules import TIMED
from momentum._bench.timing import Runner, loop

WORKLOADS = ("many-small", "resnet50", "gpt2-small")


def shapes(name: str) -> list[tuple[int, ...]]:
    """The parameter shapes of workload ``name``, shipped in ``momentum/workloads``."""
    text = resources.files("momentum").joinpath("workloads", f"{name}.json").read_text()
    return [tuple(s) for s in json.loads(text)["shapes"]]


def tensors(shape_list: list[tuple[int, ...]], seed: int = 0) -> list[list[np.ndarray]]:
    """``[params, grads, bufs]``: float32 arrays of the given shapes.

    Each list is carved from one flat array so that a 124-million-element
    model costs three allocations, not hundreds.
    """
    sizes = [math.prod(s) for s in shape_list]
    offsets = np.cumsum([0] + sizes)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        flat = rng.standard_normal(int(offsets[-1]), dtype=np.float32)
        out.append([flat[a:b].reshape(s) for a, b, s in zip(offsets, offsets[1:], shape_list)])
    return out


def _loop_over(step: Callable) -> Callable[[list, list, list], None]:
    """A whole step: ``step`` called on every ``(param, grad, buf)`` in turn."""
    def run_all(params, grads, bufs) -> None:
        for p, g, b in zip(params, grads, bufs):
            step(p, g, b, **TIMED["sgd"])
    return run_all


# One whole step of momentum over every tensor.  Becomes
# ``lambda p, g, b: momentum.foreach.sgd(p, g, b, **TIMED["sgd"])`` once
# momentum.foreach exists.
MOMENTUM_STEP = _loop_over(momentum.sgd)
MOMENTUM_LABEL = "momentum (loop of sgd)"
REFERENCE_STEP = _loop_over(reference.sgd)


def runners(params: list[np.ndarray], grads: list[np.ndarray],
            bufs: list[np.ndarray]) -> tuple[dict[str, Runner], dict[str, str]]:
    """One full sgd step over all tensors, per candidate, and the missing peers."""
    out: dict[str, Runner] = {
        MOMENTUM_LABEL: loop(lambda: MOMENTUM_STEP(params, grads, bufs)),
        "reference (NumPy loop)": loop(lambda: REFERENCE_STEP(params, grads, bufs)),
    }
    missing: dict[str, str] = {}
    for mode in TORCH_MODES:
        try:
            out[mode] = torch_sgd(mode, params, grads, bufs)
        except ImportError:
            missing[mode] = "not installed"
    return out, missing
