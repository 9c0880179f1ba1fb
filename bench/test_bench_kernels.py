"""One kernel call per rule, dtype and size: momentum against the NumPy
reference and PyTorch's fused SGD.

Run: ``PYTHONPATH=src python -m pytest bench/test_bench_kernels.py``.  Each
group (``sgd-float32-1Mi``) holds the candidates on the same arrays; every
result records its GB/s in ``extra_info`` (sgd and heavy_ball move 5
array-elements per element, update_buffer 3).  momentum's results also record
the ceiling: the GB/s of the plain C loop that moves sgd's bytes on arrays of
the same size, timed in one nogil block (a per-call timing would charge it
the Python call), and momentum's percentage of it.
"""
import functools

import numpy as np
import pytest

from momentum import _probe
from momentum._bench.peers import C_LOOP, ours, torch_sgd
from momentum.bench import PARALLEL_FROM, SIZES
from momentum._bench.report import size
from momentum._bench.rules import DTYPES, ELEMENTS_MOVED, RULES, arrays
from momentum._bench.timing import interleaved

CANDIDATES = ("momentum", "reference", "torch fused")

# Ordered so that one size's arrays serve all its rules and candidates.
CASES = [pytest.param(rule, dtype, n, name,
                      id=f"{rule}-{np.dtype(dtype).name}-{size(n).replace(' ', '')}-{name}")
         for dtype in DTYPES for n in SIZES for rule in RULES for name in CANDIDATES
         if name != "torch fused" or rule == "sgd"]


# The arrays the candidates of one size share, made once per size.
data = functools.lru_cache(maxsize=1)(arrays)


@functools.lru_cache(maxsize=None)
def c_loop_gbps(dtype: type, n: int, threads: int) -> float:
    """GB/s of the C fused loop on its own ``n``-element arrays (5 elements moved)."""
    probe = arrays(n, dtype)

    def run(k: int) -> float:
        return _probe.time_fused(*probe, k, threads)
    seconds = interleaved({C_LOOP: run}, repeats=5, target=5e-3)[C_LOOP].median
    return 5 * n * probe[0].itemsize / seconds / 1e9


def step(rule: str, name: str, shared: tuple):
    """One call of candidate ``name``."""
    if name == "torch fused":
        pytest.importorskip("torch")
        return torch_sgd(name, *([a] for a in shared))
    return ours(rule, *shared)[name]


@pytest.mark.parametrize("rule, dtype, n, name", CASES)
def test_kernel(benchmark, measured, bench_threads, rule, dtype, n, name):
    shared = data(n, dtype)
    benchmark.group = f"{rule}-{np.dtype(dtype).name}-{size(n).replace(' ', '')}"
    benchmark(step(rule, name, shared))
    seconds = measured("median")
    gbps = ELEMENTS_MOVED[rule] * n * shared[0].itemsize / seconds / 1e9
    benchmark.extra_info.update(threads=bench_threads, elements=n, GB_per_s=round(gbps, 2),
                                Melem_per_s=round(n / seconds / 1e6, 1))
    if name == "momentum":
        # Below PARALLEL_FROM the kernels run on one thread, and so does their ceiling.
        ceiling = c_loop_gbps(dtype, n, bench_threads if n >= PARALLEL_FROM else 1)
        benchmark.extra_info.update(c_loop_GB_per_s=round(ceiling, 2),
                                    pct_of_c_loop=round(100 * gbps / ceiling, 1))
