"""Whole optimizer steps over the parameter shapes of real models."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import momentum
from momentum import foreach, reference
from momentum._bench.peers import OUR_TORCH_MODES, TORCH_MODES, Step, torch_steps
from momentum._bench.rules import TIMED
from momentum._workloads import load_workload, workload_names

# The candidate every other one is compared with.
BASELINE = "momentum.foreach.sgd"


def by_size() -> list[str]:
    """The shipped workloads, fewest elements first (a quick run takes the first)."""
    return sorted(workload_names(), key=lambda name: load_workload(name)["total_elements"])


def arena(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> momentum.Arena:
    """A float32 :class:`momentum.Arena` of ``shapes`` filled with standard normal values.

    Every candidate steps the arena's views, so all read and write the same
    data, and the Arena's own one-call step is a candidate too.
    """
    rng = np.random.default_rng(seed)
    out = momentum.Arena(shapes, np.float32)
    for block in (out.params, out.grads, out.bufs):
        block[...] = rng.standard_normal(block.size, dtype=np.float32)
    return out


def _loop_over(step: Callable) -> Callable[[list, list, list], None]:
    """A whole step: ``step`` called on every ``(param, grad, buf)`` in turn."""
    def run_all(params: list, grads: list, bufs: list) -> None:
        for p, g, b in zip(params, grads, bufs):
            step(p, g, b, **TIMED["sgd"])
    return run_all


API_LOOP = _loop_over(momentum.sgd)
REFERENCE_LOOP = _loop_over(reference.sgd)


def steps(model: momentum.Arena) -> tuple[dict[str, Step], dict[str, str]]:
    """One full sgd step over all of ``model``'s tensors, per candidate, and the missing peers."""
    views = (model.param_views, model.grad_views, model.buf_views)
    out: dict[str, Step] = {
        BASELINE: lambda: foreach.sgd(*views, **TIMED["sgd"]),
        "momentum.Arena.sgd (1 call)": lambda: model.sgd(**TIMED["sgd"]),
        "momentum.sgd, Python loop": lambda: API_LOOP(*views),
        "reference, Python loop": lambda: REFERENCE_LOOP(*views),
    }
    torch_modes, missing = torch_steps((*OUR_TORCH_MODES, *TORCH_MODES), *views)
    return {**out, **torch_modes}, missing
