"""One optimizer step over a whole model: foreach, arena, loops, and PyTorch.

Run: ``PYTHONPATH=src python -m pytest bench/test_bench_foreach.py
--benchmark-group-by=group``.  Each workload (shipped parameter shapes of a
real model) is a group; every candidate does the same SGD step (momentum
0.9, weight decay 1e-4, float32) and reports GB/s in ``extra_info`` from the
5 array-elements it moves per element.
"""
from __future__ import annotations

import functools
import math
import timeit

import numpy as np
import pytest

import momentum
import momentum.foreach as fe
from momentum import reference
from momentum._workloads import load_workload, workload_names

HYPER = dict(lr=1e-3, momentum=0.9, weight_decay=1e-4)
DTYPE = np.float32
BYTES_PER_ELEMENT = 5 * np.dtype(DTYPE).itemsize


@functools.lru_cache(maxsize=1)
def model(name: str) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """params, grads, bufs of workload ``name`` (one workload held at a time)."""
    rng = np.random.default_rng(0)
    shapes = load_workload(name)["shapes"]
    params = [rng.standard_normal(s, dtype=DTYPE) for s in shapes]
    grads = [rng.standard_normal(s, dtype=DTYPE) * DTYPE(1e-3) for s in shapes]
    bufs = [np.zeros(s, DTYPE) for s in shapes]
    return params, grads, bufs


def run(benchmark, name: str, step) -> None:
    """Time ``step``, grouped by workload, and record its bandwidth."""
    total = load_workload(name)["total_elements"]
    benchmark.group = name
    step()  # warm up: first-touch pages, PyTorch's buffer allocation
    rounds = max(3, min(100, int(5e8 // total)))
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["tensors"] = len(load_workload(name)["shapes"])
    benchmark.extra_info["elements"] = total
    benchmark.extra_info["GB/s"] = round(total * BYTES_PER_ELEMENT / seconds / 1e9, 2)


WORKLOADS = pytest.mark.parametrize("name", workload_names())


@WORKLOADS
def test_foreach_sgd(benchmark, name):
    params, grads, bufs = model(name)
    run(benchmark, name, lambda: fe.sgd(params, grads, bufs, **HYPER))


@WORKLOADS
def test_arena_sgd(benchmark, name):
    arena = momentum.Arena(load_workload(name)["shapes"], dtype=DTYPE)
    arena.params[...] = 1
    arena.grads[...] = 1e-3
    run(benchmark, name, lambda: arena.sgd(**HYPER))


@WORKLOADS
@pytest.mark.parametrize("single", [momentum, reference], ids=["api_loop", "numpy_loop"])
def test_loop(benchmark, name, single):
    params, grads, bufs = model(name)

    def step():
        for p, g, b in zip(params, grads, bufs):
            single.sgd(p, g, b, **HYPER)
    run(benchmark, name, step)


@WORKLOADS
@pytest.mark.parametrize("fused", [True, False], ids=["torch_fused", "torch_forloop"])
def test_torch_sgd(benchmark, name, fused):
    torch = pytest.importorskip("torch")
    params, grads, _ = model(name)
    tensors = [torch.from_numpy(p.copy()) for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g)
    opt = torch.optim.SGD(tensors, **HYPER, fused=fused, foreach=False)
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    run(benchmark, name, opt.step)
    assert math.isfinite(float(tensors[0].flatten()[0]))


def test_foreach_overhead_per_tensor(benchmark):
    """1,000 tensors of 16 elements; extra_info has the ns per tensor beyond
    one kernel call on the same 16,000 elements laid flat."""
    tensors, size = 1000, 16
    params, grads, bufs = ([np.ones(size, DTYPE) for _ in range(tensors)] for _ in range(3))
    flat = [np.ones(tensors * size, DTYPE) for _ in range(3)]
    benchmark.group = "overhead"
    benchmark(fe.sgd, params, grads, bufs, **HYPER)
    kernel = min(timeit.repeat(lambda: momentum.sgd(*flat, **HYPER), number=1000, repeat=5)) / 1000
    foreach = benchmark.stats.stats.min
    benchmark.extra_info["kernel_us"] = round(kernel * 1e6, 2)
    benchmark.extra_info["ns_per_tensor"] = round((foreach - kernel) / tensors * 1e9, 1)
