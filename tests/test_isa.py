"""Every kernel build this CPU runs (baseline, AVX2, AVX-512) gives the
reference's bits, at sizes that straddle every vector width and at odd
element offsets, so each build's peel and remainder loops are exercised.
The default is the best build the CPU (read from /proc/cpuinfo) and the
install offer, and a build that was made but does not load is an error."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from conftest import ARGS, copies, offset_view, specials, step_both, values
import momentum
import momentum._dispatch
from conftest import case_id
from test_parity import CASES, DTYPES

SIZES = [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 97, 1000]


def test_baseline_is_always_available():
    assert momentum.available_isas()[0] == "baseline"


def test_unknown_isa_is_refused():
    with pytest.raises(ValueError, match="'sse9' is not available"):
        momentum.set_isa("sse9")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_build_matches_reference(isa, case, dtype, rng):
    rule, hyper, absent = case
    assert momentum.get_isa() == isa
    for n in SIZES:
        ours = {k: offset_view(values(rng, n, dtype), off)
                for off, k in enumerate(ARGS[rule], start=1)}
        ours.update(dict.fromkeys(absent))
        step_both(rule, ours, copies(ours), hyper, f"isa {isa} n {n}")


def _isa_at_import(value: str) -> subprocess.CompletedProcess:
    code = "import momentum; print(momentum.get_isa())"
    env = dict(os.environ, MOMENTUM_ISA=value)
    return subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("name", momentum.available_isas())
def test_environment_variable_chooses_the_build(name):
    result = _isa_at_import(name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name


def test_environment_variable_with_unknown_build_fails_loudly():
    result = _isa_at_import("sse9")
    assert result.returncode != 0
    assert "MOMENTUM_ISA='sse9' is not available" in result.stderr


# The x86-64 micro-architecture levels (the psABI's), as /proc/cpuinfo names
# their flags, and the build each one runs.
X86_64_LEVELS = [
    ("avx2", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ("avx512", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("avx512bf16", {"avx512_bf16"}),
]


def _cpu_runs() -> list[str]:
    """The builds this CPU runs, oldest first, read from /proc/cpuinfo
    independently of momentum's own detection."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["baseline"]
    try:
        with open("/proc/cpuinfo") as f:
            line = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags to check the CPU against")
    flags = set(line.split(":", 1)[1].split())
    runs = ["baseline"]
    for name, needs in X86_64_LEVELS:
        if not needs <= flags:
            break
        runs.append(name)
    return runs


def _fresh_import(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter, without MOMENTUM_ISA unless given."""
    environment = {k: v for k, v in os.environ.items() if k != "MOMENTUM_ISA"}
    return subprocess.run([sys.executable, "-c", code], env=environment | env,
                          capture_output=True, text=True)


def test_default_is_the_best_build_the_cpu_runs():
    result = _fresh_import("import json, momentum, momentum._dispatch as d; print(json.dumps("
                           "[momentum.get_isa(), momentum.available_isas(), d.BUILT_ISAS]))")
    assert result.returncode == 0, result.stderr
    default, available, built = json.loads(result.stdout)
    assert default == available[-1]
    assert available == [isa for isa in _cpu_runs() if isa in built]


def test_a_built_build_that_does_not_load_is_an_error():
    runs = [isa for isa in _cpu_runs() if isa in momentum._dispatch.BUILT_ISAS]
    if len(runs) == 1:
        pytest.skip("this CPU runs no build beyond baseline")
    best = runs[-1]
    module = momentum._dispatch.ISAS[best][0]
    # None in sys.modules makes importing that module fail, as a broken or
    # missing shared object would.
    result = _fresh_import(f"import sys; sys.modules[{module!r}] = None; import momentum")
    assert result.returncode != 0, "momentum imported without its " + best + " kernels"
    assert "ImportError" in result.stderr
    assert f"the {best} kernels were built but do not load" in result.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lion_sign_of_special_values_matches_reference_on_every_build(isa, dtype):
    """sign(c) of NaN, infinities, signed zeros and subnormals inside each
    build's vector loop (4,099 elements, not only its scalar tail), with and
    without weight decay, bitwise as momentum.reference computes it."""
    rng = np.random.default_rng(7)
    special = specials(np.dtype(dtype))
    n = 4099
    for weight_decay in (0.0, 0.01):
        arrays = [rng.standard_normal(n).astype(dtype), rng.choice(special, n),
                  rng.choice(special, n)]
        ours = dict(zip(ARGS["lion"], arrays))
        with np.errstate(all="ignore"):
            step_both("lion", ours, copies(ours), {"lr": 0.1, "weight_decay": weight_decay},
                      f"{isa} weight_decay {weight_decay}")
