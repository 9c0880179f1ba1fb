"""The input contract: every bad argument raises TypeError or ValueError with
a message naming it, and leaves every array passed exactly as it was."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import momentum
from conftest import ARGS, untouched
from momentum.rules import RULES

SHAPE = (3, 4)
DTYPE = np.float32
# A valid call of each rule: the arguments the benchmark times.
HYPER: dict[str, dict[str, Any]] = {name: dict(rule.typical) for name, rule in RULES.items()}
WRITTEN = {name: rule.written for name, rule in RULES.items()}
RATES = {name: tuple(h.name for h in rule.hypers if h.check == "rate")
         for name, rule in RULES.items()}
UNITS = {name: tuple(h.name for h in rule.hypers if h.check == "unit")
         for name, rule in RULES.items()}
BETAS = {name: tuple(h.name for h in rule.hypers if h.check == "beta")
         for name, rule in RULES.items()}
COUNTS = {name: tuple(h.name for h in rule.hypers if h.check == "count")
          for name, rule in RULES.items()}


def good_arrays(rule: str) -> dict[str, Any]:
    """Valid, distinct arrays for ``rule``."""
    size = int(np.prod(SHAPE))
    return {k: np.arange(i * size, (i + 1) * size, dtype=DTYPE).reshape(SHAPE) / 7
            for i, k in enumerate(ARGS[rule])}


def assert_rejected(rule: str, arrays: dict[str, Any], hyper: dict[str, Any],
                    exc: type[Exception], *fragments: str) -> None:
    """The call raises ``exc`` whose message holds every fragment, and writes nothing."""
    with untouched(arrays):
        with pytest.raises(exc) as info:
            getattr(momentum, rule)(*(arrays[k] for k in ARGS[rule]), **hyper)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def torch_tensor(a: np.ndarray) -> Any:
    return pytest.importorskip("torch").from_numpy(a)


def misaligned(a: np.ndarray) -> np.ndarray:
    """A writable copy of ``a`` one byte past an aligned address."""
    raw = np.zeros(a.nbytes + a.itemsize, dtype=np.uint8)
    out = raw[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


# name: (make the bad value from a good array, exception, message fragment)
BAD_ARRAYS: dict[str, tuple[Callable[[np.ndarray], Any], type[Exception], str]] = {
    "list": (lambda a: a.tolist(), TypeError, "must be a NumPy array"),
    "str": (lambda a: "0.1", TypeError, "must be a NumPy array"),
    "None": (lambda a: None, TypeError, "None"),
    "torch": (torch_tensor, TypeError, "must be a NumPy array"),
    "int64": (lambda a: a.astype(np.int64), TypeError, "dtype"),
    "int16": (lambda a: a.astype(np.int16), TypeError, "dtype"),
    "big-endian-float16": (lambda a: a.astype(">f2"), TypeError, "dtype"),
    "complex64": (lambda a: a.astype(np.complex64), TypeError, "dtype"),
    "big-endian": (lambda a: a.astype(">f4"), TypeError, "dtype"),
    "other-float": (lambda a: a.astype(np.float64), TypeError, "dtype"),
    "other-shape": (lambda a: a.reshape(SHAPE[::-1]).copy(), ValueError, "shape"),
    "other-size": (lambda a: a[:-1].copy(), ValueError, "shape"),
    "transposed": (lambda a: np.asfortranarray(a), ValueError, "C-contiguous"),
    "strided": (lambda a: np.repeat(a, 2, axis=-1)[..., ::2], ValueError, "C-contiguous"),
    "misaligned": (misaligned, ValueError, "aligned"),
}
# Only for arrays that are written.
BAD_WRITTEN: dict[str, tuple[Callable[[np.ndarray], Any], type[Exception], str]] = {
    "read-only": (read_only, ValueError, "read-only"),
    "read-only-buffer": (lambda a: memoryview(a.tobytes()).cast("f", a.shape),
                         ValueError, "read-only"),
}


def array_cases() -> list[Any]:
    cases = []
    for rule, names in ARGS.items():
        for name in names:
            kinds = dict(BAD_ARRAYS, **(BAD_WRITTEN if name in WRITTEN[rule] else {}))
            cases += [pytest.param(rule, name, *v, id=f"{rule}-{name}-{k}")
                      for k, v in kinds.items()]
    return cases


def using(rule: str, name: str) -> dict[str, Any]:
    """HYPER[rule], with the flag that makes the rule use array ``name`` set
    (adam's amsgrad for max_exp_avg_sq): an unused array is not looked at."""
    when = RULES[rule].array(name).when
    return dict(HYPER[rule], **({when: True} if when and not HYPER[rule].get(when) else {}))


@pytest.mark.parametrize("rule, name, make, exc, fragment", array_cases())
def test_bad_array(rule, name, make, exc, fragment):
    arrays = good_arrays(rule)
    arrays[name] = make(arrays[name])
    assert_rejected(rule, arrays, using(rule, name), exc, f"'{name}'", fragment)


def overlapping(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays of SHAPE sharing memory: the same one, views one element
    apart, or views sharing only their last/first element."""
    size = int(np.prod(SHAPE))
    big = np.arange(2 * size, dtype=DTYPE)
    shift = {"same": 0, "shifted": 1, "touching": size - 1}[kind]
    return big[:size].reshape(SHAPE), big[shift:shift + size].reshape(SHAPE)


def pair_cases() -> list[Any]:
    return [pytest.param(rule, a, b, kind, id=f"{rule}-{a}-{b}-{kind}")
            for rule, names in ARGS.items()
            for i, a in enumerate(names) for b in names[i + 1:]
            for kind in ("same", "shifted", "touching")]


@pytest.mark.parametrize("rule, a, b, kind", pair_cases())
def test_overlapping_arrays(rule, a, b, kind):
    arrays = good_arrays(rule)
    arrays[a], arrays[b] = overlapping(kind)
    hyper = dict(using(rule, a), **using(rule, b))
    assert_rejected(rule, arrays, hyper, ValueError, f"'{a}'", f"'{b}'", "overlap")


# A whole number too large for a double: finite, but no finite float.
HUGE_INT = 10**400
BAD_RATES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "-1": -1.0,
             "-1e-300": -1e-300, "10**400": HUGE_INT}
BAD_UNITS = {"-0.1": -0.1, "1.5": 1.5, "nan": np.nan, "-inf": -np.inf,
                  "10**400": HUGE_INT}
# Adam's betas as torch checks them: in [0, 1), so 1.0 too.
BAD_BETAS = dict(BAD_UNITS, **{"1": 1.0})
# A step count: a whole number >= 1.
BAD_COUNTS = {"0": 0, "-1": -1, "1.5": 1.5, "nan": np.nan, "inf": np.inf, "2**60": 2**60}
NOT_REAL = {"str": "0.1", "complex": 0.1j, "None": None, "list": [0.1]}


def hyper_cases() -> list[Any]:
    cases = []
    for rule in ARGS:
        for name in RATES[rule] + UNITS[rule] + BETAS[rule] + COUNTS[rule]:
            bad = (BAD_UNITS if name in UNITS[rule] else BAD_BETAS if name in BETAS[rule]
                   else BAD_COUNTS if name in COUNTS[rule] else BAD_RATES)
            cases += [pytest.param(rule, name, v, ValueError, id=f"{rule}-{name}-{k}")
                      for k, v in bad.items()]
            cases += [pytest.param(rule, name, v, TypeError, id=f"{rule}-{name}-{k}")
                      for k, v in NOT_REAL.items()]
    return cases


@pytest.mark.parametrize("rule, name, value, exc", hyper_cases())
def test_bad_hyperparameter(rule, name, value, exc):
    hyper = dict(HYPER[rule], **{name: value})
    assert_rejected(rule, good_arrays(rule), hyper, exc, f"'{name}'")


def requirement_cases() -> list[Any]:
    """For every flag with a condition in the table, one call per term of the
    condition that breaks just that term: the flag set, momentum 0 or
    dampening nonzero (a term 'x > 0' or 'x == 0' is broken by x = 0 or 0.5)."""
    cases = []
    for rule, spec in RULES.items():
        for h in spec.hypers:
            for name, op, _ in h.terms:
                hyper = dict(HYPER[rule], **{h.name: True, name: 0.0 if op == ">" else 0.5})
                cases.append(pytest.param(rule, h.name, hyper, id=f"{rule}-{h.name}-{name}"))
    return cases


@pytest.mark.parametrize("rule, flag, hyper", requirement_cases())
def test_flag_conditions_are_checked(rule, flag, hyper):
    assert_rejected(rule, good_arrays(rule), hyper, ValueError, f"{flag}=True needs")


def test_sgd_with_momentum_needs_buf():
    # None is "not an array", hence TypeError, as for heavy_ball's buf.
    arrays = dict(good_arrays("sgd"), buf=None)
    assert_rejected("sgd", arrays, dict(lr=0.1, momentum=0.9), TypeError, "'buf'", "momentum")


@pytest.mark.parametrize("rule", list(ARGS))
def test_read_only_grad_is_accepted(rule):
    arrays = good_arrays(rule)
    arrays["grad"] = read_only(arrays["grad"])
    with untouched({"grad": arrays["grad"]}):
        getattr(momentum, rule)(*(arrays[k] for k in ARGS[rule]), **HYPER[rule])


@pytest.mark.parametrize("rule", list(ARGS))
def test_the_checks_refuse_exactly_what_the_table_disallows(rule):
    # Every combination of flags, with each optional value zero or not: the
    # call succeeds exactly when Rule.allows says so (the tests' and the
    # bench's cases come from Rule.cases, which trusts it).
    spec = RULES[rule]
    # (a count has no zero: its other value is 2)
    choices = [[False, True] if h.check == "flag" else
               [HYPER[rule][h.name], 0.0] if h.default is None else
               [h.default, 2 if h.check == "count" else 0.5]
               for h in spec.hypers]
    seen = set()
    for values in itertools.product(*choices):
        hyper = dict(zip((h.name for h in spec.hypers), values))
        arrays = good_arrays(rule)
        if spec.allows(hyper):
            getattr(momentum, rule)(*(arrays[k] for k in ARGS[rule]), **hyper)
            seen.add(True)
        else:
            assert_rejected(rule, arrays, hyper, ValueError, "=True needs")
            seen.add(False)
    assert seen == ({True, False} if any(h.requires for h in spec.hypers) else {True})
