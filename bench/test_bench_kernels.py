"""One kernel call per rule, storage layout and size: momentum against the
NumPy reference and PyTorch's SGD, Adam and AdamW (fused; for 16-bit layouts
also their for-loop and foreach paths), DeepSpeedCPUAdam for adam and adamw
and lion-pytorch for lion (each skipped where absent or without the layout).

Run: ``PYTHONPATH=src python -m pytest bench/test_bench_kernels.py``.  Each
group (``sgd-bf16/bf16/f32-1Mi``) holds the candidates on the same arrays;
every result records its GB/s in ``extra_info`` (bytes read + written per
element from the layout's dtypes, momentum._bench.storage).  momentum's
results also record the ceiling: the GB/s of the fastest plain C loop moving
the layout's bytes on arrays of the same size (momentum._bench.ceilings),
timed in one nogil block (a per-call timing would charge it the Python
call), and momentum's percentage of it.
"""
import functools

import pytest

from momentum._bench import ceilings, storage
from momentum._bench.adam_peers import DEEPSPEED, LION
from momentum._bench.peers import TORCH_MODES, layout_peers, stored
from momentum._bench.report import size
from momentum._bench.timing import interleaved
from momentum.bench import PARALLEL_FROM, REFERENCE_16BIT_UP_TO, SIZES
from momentum._bench.rules import RULES as TIMED_RULES
from momentum.rules import RULES

TORCH_16BIT = tuple(TORCH_MODES)


def _candidates(rule, layout, n):
    float_layout = layout.uniform(RULES[rule]) in ("float32", "float64")
    yield "momentum"
    if float_layout or n <= REFERENCE_16BIT_UP_TO:
        yield "reference"
    if rule in ("sgd", "adam", "adamw") and layout.uniform(RULES[rule]):
        yield from ("torch fused",) if float_layout else TORCH_16BIT
    if rule in ("adam", "adamw"):
        yield DEEPSPEED        # skipped in the layouts it has none of
    if rule == "lion" and layout.uniform(RULES[rule]):
        yield LION


def _group(rule, layout, n):
    return f"{rule}-{layout.label(RULES[rule]).replace(' ', '_')}-{size(n).replace(' ', '')}"


# Ordered so that one size's arrays serve all the candidates of a layout.
CASES = [pytest.param(rule, layout, n, name, id=f"{_group(rule, layout, n)}-{name}")
         for rule in TIMED_RULES for layout in storage.layouts(RULES[rule]) for n in SIZES
         for name in _candidates(rule, layout, n)]


@functools.lru_cache(maxsize=1)
def data(rule, layout, n):
    """The arrays the candidates of one rule, layout and size share (skipped without ml_dtypes)."""
    try:
        return storage.make(layout, n, rule=RULES[rule])
    except ImportError as error:
        pytest.skip(str(error))


@functools.lru_cache(maxsize=None)
def c_loop_gbps(rule, layout, n: int, threads: int) -> float | None:
    """GB/s of the fastest C loop moving the layout's bytes on its own
    ``n``-element arrays (None where the rule has no loop for the layout)."""
    runners = ceilings.loops(layout, n, threads, rule)
    if not runners:
        return None
    timings = interleaved(runners, repeats=5, target=5e-3)
    moved = ceilings.bytes_per_element(layout, rule)
    return moved * n / min(t.median for t in timings.values()) / 1e9


def step(rule, layout, name, arrays):
    """One call of candidate ``name``."""
    if name not in ("momentum", "reference"):
        pytest.importorskip("torch")
        steps, missing = layout_peers(rule, layout, arrays)
        if name in missing:
            pytest.skip(f"{name}: {missing[name]}")
        return steps[name]
    return stored(rule, layout, arrays)[name]


@pytest.mark.parametrize("rule, layout, n, name", CASES)
def test_kernel(benchmark, measured, bench_threads, rule, layout, n, name):
    arrays = data(rule, layout, n)
    benchmark.group = _group(rule, layout, n)
    benchmark(step(rule, layout, name, arrays))
    seconds = measured("median")
    gbps = layout.bytes_per_element(RULES[rule]) * n / seconds / 1e9
    benchmark.extra_info.update(threads=bench_threads, elements=n, GB_per_s=round(gbps, 2),
                                Gelem_per_s=round(n / seconds / 1e9, 3))
    if name == "momentum":
        # Below PARALLEL_FROM the kernels run on one thread, and so does their ceiling.
        ceiling = c_loop_gbps(rule, layout, n, bench_threads if n >= PARALLEL_FROM else 1)
        if ceiling is not None:
            benchmark.extra_info.update(c_loop_GB_per_s=round(ceiling, 2),
                                        pct_of_c_loop=round(100 * gbps / ceiling, 1))
