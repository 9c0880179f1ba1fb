"""Shared helpers: special-value data, bitwise comparison, snapshots, and a
step that runs a rule in ``momentum`` and in ``momentum.reference`` side by side.

Bitwise equality, as used throughout the suite: two arrays are equal when they
have the same dtype and shape, NaN at the same positions, and the same bit
pattern at every other position (so ``-0.0 != 0.0``).  NaN payload and sign
are not compared: IEEE 754 leaves the payload of an operation's NaN result
unspecified, and NumPy and C compilers do not agree on it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

import momentum
from momentum import reference
from momentum.rules import RULES

SEED = 20240611

# The arrays of each rule, in positional order.
ARGS: dict[str, tuple[str, ...]] = {name: tuple(a.name for a in rule.arrays)
                                    for name, rule in RULES.items()}

# A nonzero value for each hyperparameter the cases vary, chosen inexact in
# float32 so that the rounding of every scalar to the arrays' dtype shows.
NONZERO = {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-2}
BY_CHECK = {"rate": 0.25, "unit": 0.3, "beta": 0.95, "count": 3}


def flag_cases(rule: str) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """Every valid combination of ``rule``'s flags, each optional value zero
    or not (momentum.rules.Rule.cases), and each array the combination does
    not use given or None: ``(hyperparameters, names of the arrays passed as
    None)``."""
    spec = RULES[rule]
    nonzero = {h.name: NONZERO.get(h.name, BY_CHECK.get(h.check)) for h in spec.hypers}
    cases = []
    for hyper in spec.cases(nonzero):
        unused = tuple(a.name for a in spec.arrays if a.when and not hyper[a.when])
        cases.append((hyper, ()))
        if unused:
            cases.append((hyper, unused))
    return cases


# Every rule's flag cases: (rule, hyperparameters, arrays passed as None).
CASES = [(rule, hyper, absent) for rule in RULES for hyper, absent in flag_cases(rule)]


def case_id(case: tuple[str, dict[str, Any], tuple[str, ...]]) -> str:
    rule, hyper, absent = case
    flags = [f"{k}={v}" for k, v in hyper.items() if v is not False]
    return "-".join([rule, *flags] + [f"{name}=None" for name in absent])


def busiest(rule: str) -> dict[str, Any]:
    """The valid case of ``rule`` with the most nonzero hyperparameters (and
    no per-tensor flag set): most branches of the kernel at once."""
    spec = RULES[rule]
    flags = [name for name in spec.per_tensor if spec.hyper(name).check == "flag"]
    return max((hyper for hyper, absent in flag_cases(rule)
                if not absent and not any(hyper[name] for name in flags)),
               key=lambda hyper: sum(bool(v) for v in hyper.values()))


@pytest.fixture(params=momentum.available_isas())
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each available kernel build in turn (avx512bf16 has the bfloat16
    instruction, avx2 and avx512 F16C); the default is restored after."""
    before = momentum.get_isa()
    momentum.set_isa(request.param)
    yield request.param
    momentum.set_isa(before)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch's own thread pool on the torch tests' tiny tensors only spins
    against the other processes of a shared machine (50x slower on two busy
    cores): a module that uses this runs torch on one thread."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    """A generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(SEED)


def specials(dtype: np.dtype) -> np.ndarray:
    """NaN, ±inf, ±0, subnormals and the extremes of ``dtype``."""
    info = np.finfo(dtype)
    sub = info.smallest_subnormal
    return np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, sub, -sub,
                     sub * 7, info.tiny / 2, -info.tiny / 3, info.tiny,
                     info.max, -info.max, info.eps], dtype=dtype)


def values(rng: np.random.Generator, shape: int | tuple[int, ...],
           dtype: np.dtype | type, special_fraction: float = 0.1) -> np.ndarray:
    """Random values of many magnitudes, with specials mixed in at random places."""
    dtype = np.dtype(dtype)
    a = rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 20, shape)
    a = np.asarray(a, dtype=dtype)
    mask = rng.random(a.shape) < special_fraction
    a[mask] = rng.choice(specials(dtype), size=int(mask.sum()))
    return a


def offset_view(a: np.ndarray, offset: int) -> np.ndarray:
    """A C-contiguous copy of ``a`` that starts ``offset`` elements into a larger array."""
    big = np.empty(a.size + offset + 1, dtype=a.dtype)
    view = big[offset:offset + a.size].reshape(a.shape)
    view[...] = a
    return view


def assert_bitwise_equal(actual: Any, expected: np.ndarray, what: str = "") -> None:
    """Same dtype, shape, NaN mask, and bit pattern outside NaNs (see module doc)."""
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan), f"NaN mask differs {what}"
    uint = np.dtype(f"u{expected.dtype.itemsize}")
    bad = np.flatnonzero((actual.view(uint) != expected.view(uint)) & ~nan)
    assert bad.size == 0, (
        f"{what}: {bad.size} of {expected.size} elements differ, first at {bad[:5]}: "
        f"got {actual.ravel()[bad[:5]]!r}, expected {expected.ravel()[bad[:5]]!r}")


def raw_bytes(obj: Any) -> bytes | None:
    """The bytes of the whole memory block behind ``obj`` (for a view, its
    base array, so a write just outside the view shows too); None when
    ``obj`` exports no buffer."""
    if isinstance(obj, np.ndarray):
        while isinstance(obj.base, np.ndarray):
            obj = obj.base
        return obj.tobytes()
    try:
        return bytes(memoryview(obj).cast("B"))
    except TypeError:
        return None


def snapshot(objs: Mapping[str, Any]) -> dict[str, bytes | None]:
    """:func:`raw_bytes` of every object in ``objs``."""
    return {k: raw_bytes(v) for k, v in objs.items()}


@contextlib.contextmanager
def untouched(objs: Mapping[str, Any]) -> Iterator[None]:
    """Assert on exit that every array in ``objs`` kept exactly its bytes."""
    before = snapshot(objs)
    yield
    after = snapshot(objs)
    for k in before:
        assert after[k] == before[k], f"'{k}' was written"


def reads_only(rule: str, hyper: Mapping[str, Any]) -> tuple[str, ...]:
    """The arrays a call must leave bit for bit untouched: those the rule
    reads, and those it does not use with these hyperparameters."""
    return tuple(a.name for a in RULES[rule].arrays
                 if not a.written or (a.when and not hyper.get(a.when, 0)))


def reference_step(rule: str, arrays: Mapping[str, np.ndarray], hyper: Mapping[str, Any]) -> None:
    """One step of ``momentum.reference.<rule>`` on ``arrays``, quietly."""
    with np.errstate(all="ignore"):
        getattr(reference, rule)(*(arrays[k] for k in ARGS[rule]), **hyper)


def assert_same_arrays(rule: str, ours: Mapping[str, Any],
                       theirs: Mapping[str, np.ndarray | None], what: str = "") -> None:
    """Every array of ``rule`` in ``ours`` is bitwise equal to ``theirs``."""
    for k in ARGS[rule]:
        if theirs[k] is not None:
            assert_bitwise_equal(np.asarray(memoryview(ours[k])), theirs[k],
                                 f"{rule} '{k}' {what}")


def step_both(rule: str, ours: Mapping[str, Any], theirs: Mapping[str, np.ndarray],
              hyper: Mapping[str, Any], what: str = "") -> None:
    """One step of ``rule``: ``momentum`` on ``ours``, the reference on
    ``theirs``; then every array must match bitwise and the read-only ones
    must keep their bytes."""
    with untouched({k: ours[k] for k in reads_only(rule, hyper)}):
        getattr(momentum, rule)(*(ours[k] for k in ARGS[rule]), **hyper)
    reference_step(rule, theirs, hyper)
    assert_same_arrays(rule, ours, theirs, what)


def copies(arrays: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray | None]:
    """Independent copies of ``arrays`` for the reference to work on."""
    return {k: None if v is None else np.array(v, copy=True) for k, v in arrays.items()}
