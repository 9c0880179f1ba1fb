"""One kernel call per rule, dtype and size: momentum against the NumPy
reference, the plain C loop that moves sgd's bytes, and PyTorch's fused SGD.

Run: ``PYTHONPATH=src python -m pytest bench/test_bench_kernels.py``.  Each
group (``sgd-float32-1Mi``) holds the candidates on the same arrays; every
result records its GB/s in ``extra_info`` (sgd and heavy_ball move 5
array-elements per element, update_buffer 3, the C loop 5).
"""
import functools

import numpy as np
import pytest

from momentum import _probe
from momentum._bench.peers import ours, torch_sgd
from momentum._bench.report import size
from momentum._bench.rules import DTYPES, ELEMENTS_MOVED, RULES, arrays

KI, MI = 1 << 10, 1 << 20
SIZES = (4 * KI, 64 * KI, 1 * MI, 32 * MI)
CANDIDATES = ("momentum", "reference", "C fused loop", "torch fused")

# Ordered so that one size's arrays serve all its rules and candidates.
CASES = [pytest.param(rule, dtype, n, name,
                      id=f"{rule}-{np.dtype(dtype).name}-{size(n).replace(' ', '')}-{name}")
         for dtype in DTYPES for n in SIZES for rule in RULES for name in CANDIDATES
         if name != "torch fused" or rule == "sgd"]


@functools.lru_cache(maxsize=1)
def data(dtype: type, n: int) -> tuple[tuple, tuple]:
    """The arrays the candidates share, and a copy for the C loop (its own rule)."""
    shared = arrays(n, dtype)
    return shared, tuple(a.copy() for a in shared)


def step(rule: str, name: str, shared: tuple, probe: tuple, threads: int):
    """One call of candidate ``name``."""
    if name == "C fused loop":
        return lambda: _probe.time_fused(*probe, 1, max(threads, 1))
    if name == "torch fused":
        pytest.importorskip("torch")
        return torch_sgd(name, *([a] for a in shared))
    return ours(rule, *shared)[name]


@pytest.mark.parametrize("rule, dtype, n, name", CASES)
def test_kernel(benchmark, bench_threads, rule, dtype, n, name):
    shared, probe = data(dtype, n)
    benchmark.group = f"{rule}-{np.dtype(dtype).name}-{size(n).replace(' ', '')}"
    benchmark(step(rule, name, shared, probe, bench_threads))
    moved = 5 if name == "C fused loop" else ELEMENTS_MOVED[rule]
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        threads=bench_threads, elements=n,
        GB_per_s=round(moved * n * shared[0].itemsize / seconds / 1e9, 2),
        Melem_per_s=round(n / seconds / 1e6, 1))
