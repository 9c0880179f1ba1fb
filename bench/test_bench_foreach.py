"""One optimizer step over a whole model: foreach, arena, loops, and PyTorch.

Run: ``PYTHONPATH=src python -m pytest bench/test_bench_foreach.py
--benchmark-group-by=group``.  Each workload (shipped parameter shapes of a
real model) is a group; the candidates are those of ``python -m momentum
bench``'s model table (``momentum._bench.workloads``): the same sgd step
(TIMED["sgd"], float32) on the same arrays, each reporting GB/s in
``extra_info``.
"""
from __future__ import annotations

import functools
import timeit

import numpy as np
import pytest

import momentum
import momentum.foreach as fe
from momentum._bench import workloads
from momentum._bench.peers import OUR_TORCH_MODES, TORCH_MODES, Step
from momentum._bench.rules import ELEMENTS_MOVED, TIMED
from momentum._workloads import load_workload, workload_names

CANDIDATES = [workloads.BASELINE, "momentum.Arena.sgd (1 call)",
              "momentum.sgd, Python loop", "reference, Python loop",
              *OUR_TORCH_MODES, *TORCH_MODES]
BYTES_PER_ELEMENT = ELEMENTS_MOVED["sgd"] * np.dtype(np.float32).itemsize


@functools.lru_cache(maxsize=1)
def candidates(name: str) -> tuple[dict[str, Step], dict[str, str]]:
    """Every candidate's step over workload ``name``, and the missing ones
    (one workload held at a time: the tests run workload by workload)."""
    return workloads.steps(workloads.arena(load_workload(name)["shapes"]))


# "candidate" first: pytest varies the top parametrization fastest, so the
# tests run workload by workload and candidates() builds each one once.
@pytest.mark.parametrize("candidate", CANDIDATES)
@pytest.mark.parametrize("name", workload_names())
def test_step(benchmark, measured, name, candidate):
    steps, missing = candidates(name)
    if candidate in missing:
        pytest.skip(f"{candidate}: {missing[candidate]}")
    step = steps[candidate]
    workload = load_workload(name)
    total = workload["total_elements"]
    benchmark.group = name
    step()  # warm up: first-touch pages, an optimizer's first step
    rounds = max(3, min(100, int(5e8 // total)))
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info["tensors"] = len(workload["shapes"])
    benchmark.extra_info["elements"] = total
    benchmark.extra_info["GB/s"] = round(
        total * BYTES_PER_ELEMENT / measured("median") / 1e9, 2)


def test_foreach_overhead_per_tensor(benchmark, measured):
    """1,000 tensors of 16 elements; extra_info has the ns per tensor beyond
    one kernel call on the same 16,000 elements laid flat."""
    tensors, size = 1000, 16
    params, grads, bufs = ([np.ones(size, np.float32) for _ in range(tensors)]
                           for _ in range(3))
    flat = [np.ones(tensors * size, np.float32) for _ in range(3)]
    hyper = TIMED["sgd"]
    benchmark.group = "overhead"
    benchmark(fe.sgd, params, grads, bufs, **hyper)
    kernel = min(timeit.repeat(lambda: momentum.sgd(*flat, **hyper),
                               number=1000, repeat=5)) / 1000
    foreach = measured("min")
    benchmark.extra_info["kernel_us"] = round(kernel * 1e6, 2)
    benchmark.extra_info["ns_per_tensor"] = round((foreach - kernel) / tensors * 1e9, 1)
