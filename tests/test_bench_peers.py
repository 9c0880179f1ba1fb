"""Every candidate the benchmark times performs the rule it is labelled with."""
import numpy as np
import pytest

from momentum import reference
from momentum._bench import workloads
from momentum._bench.peers import ours, peers
from momentum._bench.rules import RULES, TIMED, args, arrays


def _reference_step(rule, data):
    expected = [a.copy() for a in data]
    getattr(reference, rule)(*args(rule, *expected), **TIMED[rule])
    return expected


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_peer_takes_one_reference_step(rule, dtype):
    data = arrays(1000, dtype)
    expected = _reference_step(rule, data)
    runners, missing = peers(rule, *data)
    for name in [*runners, "momentum", "reference"]:
        # Each candidate runs once on its own copy of the data.
        got = [a.copy() for a in data]
        {**peers(rule, *got)[0], **ours(rule, *got)}[name](1)
        tol = 0 if name in ("momentum", "reference") else 1e-6
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=tol, atol=0, err_msg=name)
    assert rule == "sgd" or set(missing) >= {"torch for-loop", "torch foreach", "torch fused"}


def test_workload_candidates_each_take_one_reference_step():
    shapes = [(3, 4), (5,), (2, 2, 2)]
    data = workloads.tensors(shapes)
    expected = [[a.copy() for a in group] for group in data]
    for p, g, b in zip(*expected):
        reference.sgd(p, g, b, **TIMED["sgd"])
    for name in workloads.runners(*data)[0]:
        got = [[a.copy() for a in group] for group in data]
        workloads.runners(*got)[0][name](1)
        for mine, spec in zip(got, expected):
            for a, b in zip(mine, spec):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=0, err_msg=name)
