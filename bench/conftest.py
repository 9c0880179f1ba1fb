"""pytest-benchmark set-up for ``pytest bench/``.

``--bench-threads N`` runs momentum and its peers on N threads (default 1,
so that saved results compare across runs on a shared machine); the build
configuration goes into the saved JSON's ``machine_info``.
"""
import math

import pytest

import momentum
from momentum import _config
from momentum._bench.peers import set_threads


def pytest_addoption(parser):
    parser.addoption("--bench-threads", type=int, default=1,
                     help="threads for momentum and its peers (0: library default)")


@pytest.fixture(scope="session", autouse=True)
def bench_threads(request):
    """The thread count of every benchmark; restored to the default afterwards."""
    set_threads(request.config.getoption("--bench-threads"))
    yield momentum.get_num_threads()
    set_threads(0)


@pytest.fixture
def measured(benchmark):
    """``measured("median")``: that statistic of the benchmark's timed rounds,
    in seconds.  Under ``--benchmark-disable`` (CI's smoke run: each
    benchmarked function is called once, untimed) it is NaN, so the code
    that derives ``extra_info`` from it still runs."""
    def stat(name: str) -> float:
        return getattr(benchmark.stats.stats, name) if benchmark.enabled else math.nan
    return stat


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["momentum"] = _config.config()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    # Keep the summary statistics, drop every raw sample: a saved baseline
    # stays small enough to commit, and --benchmark-compare needs only these.
    for bench in output_json["benchmarks"]:
        bench["stats"].pop("data", None)
