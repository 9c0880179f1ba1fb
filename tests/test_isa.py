"""Every kernel build this CPU runs (baseline, AVX2, AVX-512) gives the
reference's bits, at sizes that straddle every vector width and at odd
element offsets, so each build's peel and remainder loops are exercised."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from conftest import ARGS, copies, offset_view, step_both, values
import momentum
from conftest import case_id
from test_parity import CASES, DTYPES

SIZES = [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 97, 1000]


@pytest.fixture(params=momentum.available_isas())
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each available kernel build in turn; the default is restored after."""
    before = momentum.get_isa()
    momentum.set_isa(request.param)
    yield request.param
    momentum.set_isa(before)


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
                for k, off in zip(ARGS[rule], (1, 2, 3))}
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
