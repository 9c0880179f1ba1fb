"""16-bit storage: every mix of float32, bfloat16 and float16 arrays, every
rounding, bitwise equal to momentum.reference on every ISA build and thread
count; the roundings' own contract (NaN stays NaN, -0.0, overflow, nearest
even, unbiased stochastic rounding keyed on the element, not on the split);
and bad input refused with nothing written."""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

import momentum
from momentum import foreach, reference
from momentum.dtypes import numpy_dtypes
from momentum.rules import RULES, vector16_combos
from conftest import ARGS, assert_bitwise_equal, busiest, case_id, flag_cases, untouched

# The dtypes NumPy holds here (bfloat16 needs ml_dtypes: its cases are
# skipped, with the reason, where it is missing).
HAVE = numpy_dtypes()
SINGLE = ("float32", "bfloat16", "float16")
HALF = ("bfloat16", "float16")


def dtype_param(name: str) -> Any:
    return pytest.param(name, id=name, marks=pytest.mark.skipif(
        name not in HAVE, reason="bfloat16 through NumPy needs ml_dtypes"))


def combo_params(rule: str) -> list[Any]:
    """Every combination of float32 and 16-bit dtypes for ``rule``'s arrays."""
    out = []
    for combo in itertools.product(SINGLE, repeat=len(RULES[rule].arrays)):
        marks = [] if all(d in HAVE for d in combo) else [pytest.mark.skip(
            reason="bfloat16 through NumPy needs ml_dtypes")]
        out.append(pytest.param(combo, id=",".join(combo), marks=marks))
    return out


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


def assert_same_bits(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Same dtype and every bit the same, NaN payloads included: the 16-bit
    stores make NaNs deterministically, so they are compared too."""
    assert actual.dtype == expected.dtype, what
    bad = np.flatnonzero(bits(actual) != bits(expected))
    assert bad.size == 0, (f"{what}: {bad.size} of {actual.size} differ, first at {bad[:5]}: "
                           f"{bits(actual).ravel()[bad[:5]]} != {bits(expected).ravel()[bad[:5]]}")


# 16-bit NaNs with payloads (signalling ones among them), which astype from
# float32 does not make: bfloat16's quiet NaN is 0x7fc0 whatever the payload.
NAN_PAYLOADS = {"bfloat16": [0x7F81, 0xFFA5, 0x7FC1, 0xFFFF],
                "float16": [0x7C01, 0xFE05, 0x7E01, 0xFDFF]}


def make(rng: np.random.Generator, n: int, dtype: str, special: float = 0.05) -> np.ndarray:
    """Values of many magnitudes (subnormal to overflowing in 16 bits) with
    NaN (in 16 bits, half of them with a payload), infinities and signed
    zeros mixed in, stored as ``dtype``."""
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 18, n)).astype(np.float32)
    mask = rng.random(n) < special
    a[mask] = rng.choice(np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40,
                                   -3e-39, 65504, 65520, 3.4e38], np.float32), mask.sum())
    with np.errstate(all="ignore"):
        out = a.astype(HAVE[dtype])
    if dtype in NAN_PAYLOADS:
        nan = np.flatnonzero(np.isnan(a))[::2]
        out.view(np.uint16)[nan] = rng.choice(NAN_PAYLOADS[dtype], nan.size)
    return out


def arrays_for(rule: str, combo: tuple[str, ...], n: int, rng: np.random.Generator,
               special: float = 0.05) -> dict[str, np.ndarray]:
    return {name: make(rng, n, d, special) for name, d in zip(ARGS[rule], combo)}


def run_both(rule: str, ours: dict[str, Any], hyper: dict[str, Any], what: str = "",
             **storage: Any) -> None:
    """``momentum.<rule>`` on ``ours``, the reference on copies; every array
    (and master/comp) bitwise equal after (a NaN made by the arithmetic,
    such as inf - inf, may differ in sign and payload: see conftest)."""
    theirs = {k: None if v is None else v.copy() for k, v in ours.items()}
    extra = {k: ours.pop(k) for k in ("master", "comp") if k in ours}
    spec_extra = {k: theirs.pop(k) for k in ("master", "comp") if k in theirs}
    with np.errstate(all="ignore"):
        getattr(momentum, rule)(*(ours[k] for k in ARGS[rule]), **hyper, **storage, **extra)
        getattr(reference, rule)(*(theirs[k] for k in ARGS[rule]), **hyper, **storage,
                                 **spec_extra)
    for k in ARGS[rule]:
        if ours[k] is not None:
            assert_bitwise_equal(ours[k], theirs[k], f"{rule} '{k}' {what}")
    for k in extra:
        assert_bitwise_equal(extra[k], spec_extra[k], f"{rule} '{k}' {what}")


ROUNDED = [(rule, combo) for rule in RULES for combo in combo_params(rule)]


# ------------------------------------------------------------------ parity

@pytest.mark.parametrize("case", [c for rule in RULES for c in
                                  [(rule, h, a) for h, a in flag_cases(rule)]], ids=case_id)
@pytest.mark.parametrize("combo", [dtype_param("bfloat16"), dtype_param("float16")])
def test_every_flag_case_in_each_16_bit_dtype_matches_reference(case, combo, rng):
    rule, hyper, absent = case
    for n in (33, 129):
        ours = arrays_for(rule, (combo,) * len(ARGS[rule]), n, rng)
        ours.update(dict.fromkeys(absent))
        run_both(rule, ours, hyper, f"n {n}")


@pytest.mark.parametrize("rule", RULES)
def test_every_mix_of_dtypes_matches_reference(rule, rng):
    hyper = busiest(rule)
    for combo in itertools.product(SINGLE, repeat=len(ARGS[rule])):
        if not all(d in HAVE for d in combo):
            continue
        run_both(rule, arrays_for(rule, combo, 97, rng), hyper, f"{combo}")


SIZES = [0, 1, 2, 3, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 511, 512, 513,
         4099]


@pytest.mark.parametrize("state", ["float32", "same"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "kahan", "master"])
@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_every_build_and_size_matches_reference(isa, rounding, dtype, state, rng):
    """Sizes straddle the 16-bit vector widths and the chunk size, on each
    ISA build (the hardware conversions run where the build has them), with
    a float32 buffer and with a 16-bit one rounded stochastically."""
    rule = "sgd"
    hyper = busiest(rule)
    for n in SIZES:
        ours = arrays_for(rule, (dtype, dtype, "float32" if state == "float32" else dtype), n,
                          rng)
        storage: dict[str, Any] = {"rounding": rounding, "state_rounding": "stochastic",
                                   "seed": 11, "step": 3, "tensor": 5}
        if rounding == "kahan":
            ours["comp"] = make(rng, n, dtype, 0.0) * HAVE[dtype].type(1e-3)
        if rounding == "master":
            ours["master"] = ours["param"].astype(np.float32) * np.float32(1.0001)
        run_both(rule, ours, hyper, f"isa {isa} n {n}", **storage)


# The layouts _vector16.h has bodies for (momentum.rules.vector16_combos),
# (dtype of param, grad, state; rounding): rounded to nearest or with a
# master by the body, stochastically or with Kahan by the chunked driver.
VECTOR16 = [("half", "half", "half", "nearest"), ("half", "half", "half", "stochastic"),
            ("half", "half", "float32", "nearest"), ("half", "half", "float32", "stochastic"),
            ("float32", "half", "float32", "nearest"), ("half", "half", "float32", "master"),
            ("half", "half", "float32", "state stochastic"),   # float32 state: still the body's
            ("half", "half", "half", "kahan"), ("half", "half", "float32", "kahan"),
            ("other", "half", "float32", "master")]    # master's copy the other 16-bit dtype


def layout_dtypes(spec: Any, layout: tuple[str, ...], dtype: str) -> tuple[str, ...]:
    """The dtype of each of ``spec``'s arrays in a VECTOR16 layout, ``dtype``
    its 16-bit dtype ("other": the other one)."""
    param, grad, state, _ = layout
    names = {"half": dtype, "other": next(d for d in HALF if d != dtype), "float32": "float32"}
    by_name = {"param": param, "grad": grad}
    return tuple(names[by_name.get(a.name, state)] for a in spec.arrays)


def vector16_cases() -> list[Any]:
    """Each rule's flag cases in each of its VECTOR16 layouts (a rule without
    a param: one per state dtype, no param rounding)."""
    out = []
    for rule in RULES:
        for layout in VECTOR16:
            param, _, state, rounding = layout
            if RULES[rule].param is None and (rounding in ("master", "kahan") or param != state):
                continue
            out += [pytest.param((rule, h, a), layout, id=f"{case_id((rule, h, a))}-{'-'.join(layout)}")
                    for h, a in flag_cases(rule)]
    return out


@pytest.mark.parametrize("special", [0.0, 0.01])
@pytest.mark.parametrize(("case", "layout"), vector16_cases())
@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_vector16_layouts_match_reference_on_every_build(isa, dtype, case, layout, special, rng):
    """The common 16-bit layouts: where the build has AVX-512 (and for
    bfloat16 AVX512-BF16), _vector16.h's body runs the whole 16-element
    vectors with the hardware conversions (master's 16-bit copy in the same
    pass), a vector holding a NaN or a subnormal on the portable ones, and
    the chunked driver the rest and the stochastic and Kahan roundings.
    Fewer specials (more vectors on the hardware path; float16's magnitudes
    alone make some subnormals and infinities) and more; a bfloat16 NaN (made from one with a payload) is
    stored as ml_dtypes stores it, 0x7fc0 with its sign, not with the
    payload vcvtneps2bf16 keeps."""
    rule, hyper, absent = case
    rounding = layout[-1]
    spec = RULES[rule]
    combo = layout_dtypes(spec, layout, dtype)
    if not all(d in HAVE for d in combo):
        pytest.skip("bfloat16 through NumPy needs ml_dtypes")
    storage: dict[str, Any] = {"seed": 7, "tensor": 3}
    if rounding in ("stochastic", "state stochastic"):
        storage["state_rounding"] = "stochastic"
        if spec.param is not None and rounding == "stochastic":
            storage["rounding"] = "stochastic"
    elif rounding in ("master", "kahan"):
        storage["rounding"] = rounding
    if "step" not in hyper:
        storage["step"] = 5
    for n in (17, 48, 4099):
        ours = arrays_for(rule, combo, n, rng, special)
        if rounding == "master":
            ours["master"] = make(rng, n, "float32", special)
        if rounding == "kahan":
            ours["comp"] = make(rng, n, dtype, 0.0) * HAVE[dtype].type(1e-3)
        ours.update(dict.fromkeys(absent))
        run_both(rule, ours, hyper, f"isa {isa} n {n}", **storage)
        for a in spec.arrays:
            name = a.name
            if (a.written and (a.when is None or hyper[a.when]) and ours[name] is not None
                    and ours[name].dtype.name == "bfloat16"):
                nan = bits(ours[name])[np.isnan(ours[name].astype(np.float32))]
                assert (nan & 0x7FFF == 0x7FC0).all(), (name, np.unique(nan))


def test_vector16_combos_list_the_slot_each_layout_picks():
    """The slot each VECTOR16 case's call picks (as _checks.check_task picks
    it: an array the call leaves out counts as the first used array's
    dtype) is one whose entry runs the body: e.g. Adam without amsgrad, its
    max_exp_avg_sq absent, on 16-bit param and grad with float32 moments."""
    for param in vector16_cases():
        (rule, hyper, _), layout = param.values
        spec = RULES[rule]
        if layout[-1] == "master":   # master's float32 copy takes the param's place in the slot
            layout = ("float32", *layout[1:])
        for dtype in HALF:
            combo = layout_dtypes(spec, layout, dtype)
            used = [a.when is None or bool(hyper[a.when]) for a in spec.arrays]
            first = combo[used.index(True)]
            slot = tuple(d if u else first for d, u in zip(combo, used))
            assert slot in vector16_combos(spec), (rule, hyper, slot)


@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_uniform_16_bit_stores_round_as_numpy_astype_for_every_pattern(isa, dtype):
    """update_buffer with every array 16-bit: buf = 1 * buf + 2**-8 * grad
    over every 16-bit grad and buffers of several magnitudes, so the results
    carry bits below the 16-bit ones (ties among them), infinities, NaN
    payloads and subnormals: the stores round as NumPy's astype, bit for bit."""
    grad = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(HAVE[dtype])
    for start in (1.0, -3.0, 2.0 ** -10, 60000.0, 0.0):
        buf = np.full(grad.size, start, HAVE[dtype])
        want = buf.copy()
        with np.errstate(all="ignore"):
            momentum.update_buffer(buf, grad, momentum=1.0, dampening=1 - 2.0 ** -8)
            reference.update_buffer(want, grad, momentum=1.0, dampening=1 - 2.0 ** -8)
        assert_same_bits(buf, want, f"buf {start}")


@pytest.mark.parametrize("daz", [False, True], ids=["", "flush-denormal"])
@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_every_16_bit_pattern_copies_through_an_all_16_bit_step(isa, dtype, daz):
    """sgd's first step with every array 16-bit copies the gradient into the
    buffer (no arithmetic): every pattern keeps its bits as NumPy's astype
    keeps them (a float16 signalling NaN unquieted, a bfloat16 NaN quieted
    to 0x7fc0, subnormals kept), also under denormals-are-zero
    (torch.set_flush_denormal(True)), where the hardware conversions'
    checks must not call a subnormal zero."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(HAVE[dtype])
    with np.errstate(invalid="ignore"):
        want = every.astype(np.float32).astype(HAVE[dtype])
    torch = pytest.importorskip("torch") if daz else None
    if torch is not None and not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    momentum.set_num_threads(1)  # the setting is the calling thread's
    try:
        buf = np.zeros(every.size, HAVE[dtype])
        momentum.sgd(np.zeros(every.size, HAVE[dtype]), every, buf, lr=0.0, momentum=0.5,
                     first_step=True)
    finally:
        if torch is not None:
            torch.set_flush_denormal(False)
        momentum.set_num_threads(0)
    assert_same_bits(buf, want)


@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_stochastic_stores_of_every_16_bit_pattern_match_reference(isa, dtype):
    """update_buffer with every array 16-bit and the buffer rounded
    stochastically: buf = 0.75 * grad over every 16-bit grad (NaN payloads,
    infinities, subnormals among them), bit for bit as the reference (a
    bfloat16 NaN quieted to 0x7fc0 with its sign)."""
    grad = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(HAVE[dtype])
    buf = np.zeros(grad.size, HAVE[dtype])
    want = buf.copy()
    keys = {"state_rounding": "stochastic", "seed": 3, "step": 9, "tensor": 1}
    with np.errstate(all="ignore"):
        momentum.update_buffer(buf, grad, momentum=0.0, dampening=0.25, **keys)
        reference.update_buffer(want, grad, momentum=0.0, dampening=0.25, **keys)
    assert_same_bits(buf, want)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_thread_count_changes_no_bit(threads, dtype, rng):
    """Above the threading threshold, each thread count gives the reference's bits."""
    n = (1 << 17) + 77
    momentum.set_num_threads(threads)
    try:
        for rounding in ("nearest", "stochastic"):
            ours = arrays_for("heavy_ball", (dtype, dtype, dtype), n, rng, special=0.001)
            run_both("heavy_ball", ours, busiest("heavy_ball"), f"{threads} threads",
                     rounding=rounding, state_rounding=rounding, seed=1, step=2)
    finally:
        momentum.set_num_threads(0)


def test_foreach_and_groups_match_reference_with_each_tensor_keyed(rng):
    """foreach keys tensor i on i (or on ``tensors``); the same tensors
    through _groups keep one running index."""
    shapes = [(3, 7), (0,), (129,), (5,)]
    ps = [make(rng, int(np.prod(s)), "float16").reshape(s) for s in shapes]
    gs = [make(rng, p.size, "float16").reshape(p.shape) for p in ps]
    bs = [make(rng, p.size, "float32").reshape(p.shape) for p in ps]
    spec = [[a.copy() for a in seq] for seq in (ps, gs, bs)]
    with np.errstate(all="ignore"):
        foreach.sgd(ps, gs, bs, lr=0.1, momentum=0.9, rounding="stochastic", seed=4, step=9,
                    tensors=[10, 11, 12, 13])
        for i, (p, g, b) in enumerate(zip(*spec)):
            reference.sgd(p, g, b, lr=0.1, momentum=0.9, rounding="stochastic", seed=4, step=9,
                          tensor=10 + i)
    for a, b in zip(ps, spec[0]):
        assert_same_bits(a, b)
    # _groups: the second group's tensors are keyed 2, 3 (the running index)
    again = [[a.copy() for a in seq] for seq in spec]
    with np.errstate(all="ignore"):
        foreach.sgd_groups([
            {"params": again[0][:2], "grads": again[1][:2], "bufs": again[2][:2], "lr": 0.1,
             "momentum": 0.9, "rounding": "stochastic", "seed": 4, "step": 10},
            {"params": again[0][2:], "grads": again[1][2:], "bufs": again[2][2:], "lr": 0.1,
             "momentum": 0.9, "rounding": "stochastic", "seed": 4, "step": 10}])
        for i, (p, g, b) in enumerate(zip(*spec)):
            reference.sgd(p, g, b, lr=0.1, momentum=0.9, rounding="stochastic", seed=4,
                          step=10, tensor=i)
    for a, b in zip(again[0], spec[0]):
        assert_same_bits(a, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_adam_tensors_with_other_steps_and_betas_keep_their_own_bias_corrections(threads, rng):
    """The kernels keep the last bias corrections each thread computed (a
    16-bit tensor's chunks share them): tensors interleaving other step
    counts and betas, in one batch across threads, each get their own."""
    n, steps = (1 << 17) + 300, [1, 7, 1, 1000, 7]
    ps = [make(rng, n, "bfloat16", special=0.0) for _ in steps]
    gs = [make(rng, n, "bfloat16", special=0.0) for _ in steps]
    ms = [make(rng, n, "float32", special=0.0) for _ in steps]
    vs = [np.abs(make(rng, n, "float32", special=0.0)) for _ in steps]
    spec = [[a.copy() for a in seq] for seq in (ps, gs, ms, vs)]
    groups = [{"params": ps[:3], "grads": gs[:3], "exp_avgs": ms[:3], "exp_avg_sqs": vs[:3],
               "max_exp_avg_sqs": [None] * 3, "lr": 1e-2, "step": steps[:3]},
              {"params": ps[3:], "grads": gs[3:], "exp_avgs": ms[3:], "exp_avg_sqs": vs[3:],
               "max_exp_avg_sqs": [None] * 2, "lr": 1e-2, "step": steps[3:],
               "beta1": 0.5, "beta2": 0.9}]
    momentum.set_num_threads(threads)
    try:
        foreach.adam_groups(groups)
    finally:
        momentum.set_num_threads(0)
    for i, (p, g, m, v) in enumerate(zip(*spec)):
        betas = {} if i < 3 else {"beta1": 0.5, "beta2": 0.9}
        reference.adam(p, g, m, v, None, lr=1e-2, step=steps[i], **betas)
        assert_same_bits(ps[i], p, f"tensor {i}")
        assert_same_bits(vs[i], v, f"tensor {i}")


# ------------------------------------------------------- the roundings' contract

def copy_through(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 ``values`` stored into a ``dtype`` buffer by sgd's first step
    (``buf = grad``: no arithmetic, so the store alone is seen)."""
    buf = np.zeros(values.size, HAVE[dtype])
    momentum.sgd(np.zeros(values.size, np.float32), values, buf, lr=0.0, momentum=0.5,
                 first_step=True)
    return buf


def float32s(patterns: list[int]) -> np.ndarray:
    return np.array(patterns, np.uint32).view(np.float32)


@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_nan_stays_nan_where_truncation_would_make_infinity(isa, dtype):
    # NaNs whose payload lies only in the bits a 16-bit store drops:
    # truncating (or adding half and truncating) gives infinity.
    nans = float32s([0x7F800001, 0xFF800001, 0x7F80FFFF, 0x7F801FFF, 0x7FFFFFFF, 0x7FC00000])
    out = copy_through(nans, dtype).astype(np.float32)
    assert np.isnan(out).all(), out
    assert list(np.signbit(out)) == [False, True, False, False, False, False]


@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_stores_round_as_numpy_astype_on_boundary_patterns(isa, dtype):
    """Every float32 whose low 16 bits are one of the rounding boundaries
    (ties, just below and above), for every high half: nearest even,
    subnormals kept, overflow to infinity, -0.0 kept, as NumPy's astype.
    (Every one of the 2**32 patterns was checked once on each build.)"""
    high = np.arange(1 << 16, dtype=np.uint32) << 16
    lows = [0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x7FFF, 0x8000, 0x8001, 0xFFFF]
    patterns = (high[:, None] | np.array(lows, np.uint32)[None, :]).ravel()
    x = patterns.view(np.float32)
    with np.errstate(all="ignore"):
        want = x.astype(HAVE[dtype])
    assert_same_bits(copy_through(x, dtype), want)


@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_loads_are_exact_for_every_16_bit_pattern(isa, dtype):
    """Every 16-bit pattern widens exactly (a NaN's payload kept), as NumPy's astype."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(HAVE[dtype])
    param = np.zeros(every.size, np.float32)
    buf = np.zeros(every.size, np.float32)
    momentum.sgd(param, every, buf, lr=0.0, momentum=0.5, first_step=True)
    assert_same_bits(buf, every.astype(np.float32))


@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_conversions_ignore_the_cpus_flush_to_zero_setting(isa, dtype):
    """Under denormals-are-zero (``torch.set_flush_denormal(True)``, which a
    training script may set) every subnormal still widens and rounds as
    NumPy's astype: the conversions' tests are integer ones (vfpclassps, for
    one, calls a subnormal zero there, and vcvtneps2bf16 would flush it)."""
    torch = pytest.importorskip("torch")
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    momentum.set_num_threads(1)  # the setting is the calling thread's
    try:
        tiny = np.arange(1, 1 << 23, 997, dtype=np.uint32)
        x = np.concatenate([tiny, tiny | 0x80000000]).view(np.float32)   # float32 subnormals
        assert_same_bits(copy_through(x, dtype), x.astype(HAVE[dtype]))
        every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(HAVE[dtype])
        buf = np.zeros(every.size, np.float32)
        momentum.sgd(np.zeros(every.size, np.float32), every, buf, lr=0.0, momentum=0.5,
                     first_step=True)
        assert_same_bits(buf, every.astype(np.float32))
    finally:
        torch.set_flush_denormal(False)
        momentum.set_num_threads(0)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "kahan", "master"])
@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_signed_zero_and_infinity_survive_a_step(dtype, rounding):
    start = np.array([-0.0, 0.0, np.inf, -np.inf], np.float32)
    p = start.astype(HAVE[dtype])
    g = np.zeros(4, HAVE[dtype])
    extra = ({"comp": np.zeros(4, HAVE[dtype])} if rounding == "kahan" else
             {"master": start.copy()} if rounding == "master" else {})
    momentum.sgd(p, g, None, lr=0.5, rounding=rounding, **extra)
    assert list(bits(p)) == list(bits(start.astype(HAVE[dtype])))
    if rounding == "kahan":
        assert not bits(extra["comp"]).any()


@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_kahan_overflow_gives_infinity_and_no_nan_after(dtype):
    big = np.float32(60000.0 if dtype == "float16" else 3.0e38)
    p = np.full(4, big, np.float32).astype(HAVE[dtype])
    comp = np.zeros(4, HAVE[dtype])
    g = np.full(4, -big, np.float32).astype(HAVE[dtype])
    for _ in range(2):
        momentum.sgd(p, g, None, lr=1.0, rounding="kahan", comp=comp)
        assert np.isposinf(p.astype(np.float32)).all() and not bits(comp).any()


@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_stochastic_rounding_is_unbiased_and_exact_on_representable_values(dtype):
    """Over many keys a value between two neighbours rounds up with the
    probability of its distance; a representable value never moves."""
    n = 1 << 16
    lo = np.float32(np.array(1.0, np.float32).astype(HAVE[dtype]).astype(np.float32))
    ulp = np.float32(2.0 ** (-7 if dtype == "bfloat16" else -10))
    x = np.full(n, lo + np.float32(0.3) * ulp, np.float32)
    ups = []
    for step in range(4):
        buf = np.zeros(n, HAVE[dtype])
        momentum.update_buffer(buf, x, momentum=0.0, state_rounding="stochastic", seed=1,
                               step=step)
        ups.append(np.mean(buf.astype(np.float32) > lo))
    assert abs(np.mean(ups) - 0.3) < 0.01, ups
    exact = np.full(n, lo, np.float32)
    buf = np.zeros(n, HAVE[dtype])
    momentum.update_buffer(buf, exact, momentum=0.0, state_rounding="stochastic")
    assert (buf.astype(np.float32) == lo).all()


def test_stochastic_rounding_depends_on_seed_step_and_tensor_only(rng):
    n = 1000
    x = (rng.standard_normal(n) * 1e-3 + 1).astype(np.float32)

    def rounded(**key):
        buf = np.zeros(n, np.float16)
        momentum.update_buffer(buf, x, momentum=0.0, state_rounding="stochastic", **key)
        return bits(buf)

    base = rounded(seed=1, step=2, tensor=3)
    assert np.array_equal(base, rounded(seed=1, step=2, tensor=3))
    for other in ({"seed": 2, "step": 2, "tensor": 3}, {"seed": 1, "step": 3, "tensor": 3},
                  {"seed": 1, "step": 2, "tensor": 4}):
        assert not np.array_equal(base, rounded(**other)), other
    # a slice of the tensor is not the same tensor: its elements are keyed
    # on their own indices, so the caller passes whole tensors
    half = np.zeros(n // 2, np.float16)
    momentum.update_buffer(half, x[n // 2:], momentum=0.0, state_rounding="stochastic",
                           seed=1, step=2, tensor=3)
    assert np.array_equal(bits(half), bits(reference_update(x[n // 2:], 1, 2, 3)))


def reference_update(x: np.ndarray, seed: int, step: int, tensor: int) -> np.ndarray:
    buf = np.zeros(x.size, np.float16)
    reference.update_buffer(buf, x, momentum=0.0, state_rounding="stochastic", seed=seed,
                            step=step, tensor=tensor)
    return buf


@pytest.mark.parametrize("dtype", [dtype_param(d) for d in HALF])
def test_kahan_and_master_keep_updates_nearest_loses(dtype):
    """lr * grad at a tenth of the parameter's last bit: nearest never moves
    it, kahan and master follow a float64 run to within one 16-bit rounding."""
    n, steps, lr = 256, 200, 1e-3
    start = np.ones(n, np.float32)
    g = np.full(n, (2.0 ** (-8 if dtype == "bfloat16" else -11)) / 10 / lr, np.float32)
    plain = start.astype(HAVE[dtype])
    kahan, comp = plain.copy(), np.zeros(n, HAVE[dtype])
    master16, master = plain.copy(), start.copy()
    for _ in range(steps):
        gh = g.astype(HAVE[dtype])
        momentum.sgd(plain, gh, None, lr=lr)
        momentum.sgd(kahan, gh, None, lr=lr, rounding="kahan", comp=comp)
        momentum.sgd(master16, gh, None, lr=lr, rounding="master", master=master)
    truth = 1.0 - steps * lr * g.astype(HAVE[dtype]).astype(np.float64)
    assert (plain.astype(np.float32) == 1.0).all()
    ulp = 2.0 ** (-7 if dtype == "bfloat16" else -10)
    for got in (kahan, master16):
        assert np.abs(got.astype(np.float64) - truth).max() <= ulp / 2 * 1.001
    assert np.abs(master.astype(np.float64) - truth).max() < 1e-5


# ----------------------------------------------------------------- bad input

def good(dtype: str = "float16", n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"param": make(rng, n, dtype, 0.0), "grad": make(rng, n, dtype, 0.0),
            "buf": make(rng, n, "float32", 0.0)}


BAD = [
    ({"rounding": "kahan"}, TypeError, "rounding='kahan' needs 'comp'"),
    ({"rounding": "master"}, TypeError, "rounding='master' needs 'master'"),
    ({"comp": np.zeros(8, np.float16)}, TypeError, "'comp' is given but rounding is 'nearest'"),
    ({"master": np.zeros(8, np.float32)}, TypeError, "'master' is given but rounding"),
    ({"rounding": "kahan", "comp": np.zeros(8, np.float32)}, TypeError,
     "'comp' has dtype float32 but 'param' has dtype float16"),
    ({"rounding": "kahan", "comp": np.zeros(9, np.float16)}, ValueError, "'comp' has shape"),
    ({"rounding": "kahan", "comp": np.zeros(8, np.float16)[::-1]}, ValueError,
     "'comp' is not C-contiguous"),
    ({"rounding": "master", "master": np.zeros(8, np.float16)}, TypeError,
     "rounding='master' needs a float32 'master'"),
    ({"rounding": "master", "master": np.zeros(8, np.float64)}, TypeError, "float64"),
    ({"rounding": "Nearest"}, ValueError, "'rounding' must be one of"),
    ({"rounding": None}, ValueError, "'rounding' must be one of"),
    ({"state_rounding": "kahan"}, ValueError, "'state_rounding' must be one of"),
    ({"seed": -1}, ValueError, "'seed' must be in [0, 2**64)"),
    ({"step": 1 << 64}, ValueError, "'step' must be in [0, 2**64)"),
    ({"tensor": 1.5}, TypeError, "'tensor' must be an int"),
    ({"seed": True}, TypeError, "'seed' must be an int"),
]


@pytest.mark.parametrize("storage, error, fragment", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_rounding_arguments_are_refused_writing_nothing(storage, error, fragment):
    arrays = good()
    extra = {k: v for k, v in storage.items() if isinstance(v, np.ndarray)}
    with untouched({**arrays, **extra}), pytest.raises(error, match=f"^sgd\\(\\): .*"
                                                       + fragment.replace("(", "\\(")
                                                       .replace(")", "\\)").replace("[", "\\[")
                                                       .replace("*", "\\*")):
        momentum.sgd(*arrays.values(), lr=0.1, momentum=0.9, **storage)


def test_kahan_needs_a_16_bit_param_and_master_a_16_bit_copy():
    arrays = good("float32")
    with untouched(arrays), pytest.raises(TypeError, match="needs a 16-bit 'param'"):
        momentum.sgd(*arrays.values(), lr=0.1, momentum=0.9, rounding="kahan",
                     comp=np.zeros(8, np.float32))
    with untouched(arrays), pytest.raises(TypeError, match="needs a 16-bit 'param'"):
        momentum.sgd(*arrays.values(), lr=0.1, momentum=0.9, rounding="master",
                     master=np.zeros(8, np.float32))


def test_a_master_sharing_memory_with_another_array_is_refused():
    arrays = good()
    with untouched(arrays), pytest.raises(ValueError, match="'master' and 'buf' overlap"):
        momentum.sgd(*arrays.values(), lr=0.1, momentum=0.9, rounding="master",
                     master=arrays["buf"])


def test_float64_is_not_mixed_with_16_bit():
    arrays = good()
    arrays["buf"] = arrays["buf"].astype(np.float64)
    with untouched(arrays), pytest.raises(TypeError, match="float64 arrays are not mixed"):
        momentum.sgd(*arrays.values(), lr=0.1, momentum=0.9)


def test_a_rule_without_param_takes_no_param_rounding():
    buf, grad = np.zeros(4, np.float16), np.ones(4, np.float16)
    with pytest.raises(TypeError, match="rounding"):
        momentum.update_buffer(buf, grad, momentum=0.9, rounding="stochastic")


def test_foreach_bad_comp_of_the_last_tensor_writes_nothing():
    ps = [np.ones(5, np.float16) for _ in range(3)]
    gs = [np.ones(5, np.float16) for _ in range(3)]
    comps = [np.zeros(5, np.float16), np.zeros(5, np.float16), np.zeros(5, np.float32)]
    with untouched({f"p{i}": p for i, p in enumerate(ps)}), pytest.raises(
            TypeError, match=r"'comps\[2\]' has dtype float32 but 'params\[2\]'"):
        foreach.sgd(ps, gs, None, lr=0.1, rounding="kahan", comps=comps)
    with pytest.raises(ValueError, match="'comps' has 2 items but 'params' has 3"):
        foreach.sgd(ps, gs, None, lr=0.1, rounding="kahan", comps=comps[:2])
    with pytest.raises(ValueError, match="'tensors' has 1 items"):
        foreach.sgd(ps, gs, None, lr=0.1, tensors=[0])


def test_foreach_extras_may_be_none_for_a_float32_param_only(rng):
    """A group mixing float32 and 16-bit params: the float32 ones take None
    for comp/master and step to nearest; a 16-bit one may not."""
    p16, p32 = make(rng, 40, "float16", 0.0), make(rng, 40, "float32", 0.0)
    g16, g32 = make(rng, 40, "float16", 0.0), make(rng, 40, "float32", 0.0)
    comp = np.zeros(40, np.float16)
    spec = [a.copy() for a in (p16, p32, comp)]
    foreach.sgd([p16, p32], [g16, g32], None, lr=0.1, rounding="kahan", comps=[comp, None])
    reference.sgd(spec[0], g16, None, lr=0.1, rounding="kahan", comp=spec[2])
    reference.sgd(spec[1], g32, None, lr=0.1)
    for a, b in zip((p16, p32, comp), spec):
        assert_same_bits(a, b)
    with untouched({"p16": p16, "p32": p32}), pytest.raises(
            TypeError, match=r"'comps\[0\]' is None but 'params\[0\]' is float16"):
        foreach.sgd([p16, p32], [g16, g32], None, lr=0.1, rounding="kahan",
                    comps=[None, None])
    with untouched({"p16": p16}), pytest.raises(
            TypeError, match=r"'masters\[0\]' is None but 'params\[0\]' is float16"):
        foreach.sgd([p16], [g16], None, lr=0.1, rounding="master", masters=[None])
    with pytest.raises(TypeError, match="'comps' is given but rounding is 'nearest'"):
        foreach.sgd([p16], [g16], None, lr=0.1, comps=[comp])
    with pytest.raises(TypeError, match="rounding='master' needs 'masters'"):
        foreach.sgd([p16], [g16], None, lr=0.1, rounding="master")


# --------------------------------------------------------------------- arena

@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "kahan", "master"])
def test_arena_steps_as_foreach_over_its_views(rounding, rng):
    shapes = [(3, 5), (0,), (130,), (1,)]
    arrays = [make(rng, int(np.prod(s)), "float16", 0.0).reshape(s) for s in shapes]
    arena = momentum.Arena.from_arrays(arrays, dtypes={"buf": np.float32}, rounding=rounding,
                                       state_rounding="nearest")
    for v in arena.grad_views:
        v[...] = make(rng, v.size, "float16", 0.0).reshape(v.shape)
    ps, gs, bs = ([v.copy() for v in views] for views in
                  (arena.param_views, arena.grad_views, arena.buf_views))
    extra = {}
    if rounding == "master":
        extra["masters"] = [v.copy() for v in arena.master_views]
        assert_same_bits(np.concatenate([m.ravel() for m in extra["masters"]]),
                         np.concatenate([p.ravel() for p in ps]).astype(np.float32))
    if rounding == "kahan":
        extra["comps"] = [v.copy() for v in arena.comp_views]
    for step in range(3):
        arena.sgd(lr=0.1, momentum=0.9, weight_decay=0.01, seed=7, step=step)
        foreach.sgd(ps, gs, bs, lr=0.1, momentum=0.9, weight_decay=0.01, rounding=rounding,
                    seed=7, step=step, **extra)
    for a, b in zip(arena.param_views, ps):
        assert_same_bits(a, b)
    assert arena.dtypes["buf"] == np.float32 and arena.params.dtype == np.float16


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_arena_tensors_key_stochastic_rounding_as_foreach(dtype, rng):
    # An arena holding tensors 5, 9, 2 and 40 of a model rounds them as
    # foreach over the whole model does; the default keys (0..3) round
    # otherwise.
    shapes, keys = [(3, 50), (0,), (129,), (1,)], [5, 9, 2, 40]
    arrays = [make(rng, int(np.prod(s)), dtype, 0.0).reshape(s) for s in shapes]
    arenas = [momentum.Arena.from_arrays(arrays, rounding="stochastic",
                                         state_rounding="stochastic", **keyed)
              for keyed in ({"tensors": keys}, {})]
    grads = [make(rng, int(np.prod(s)), dtype, 0.0).reshape(s) for s in shapes]
    for arena in arenas:
        for view, g in zip(arena.grad_views, grads):
            view[...] = g
    assert arenas[0].tensors == tuple(keys) and arenas[1].tensors == (0, 1, 2, 3)
    ps, gs, bs = ([v.copy() for v in views] for views in
                  (arenas[0].param_views, arenas[0].grad_views, arenas[0].buf_views))
    for step in range(3):
        for arena in arenas:
            arena.sgd(lr=0.1, momentum=0.9, first_step=step == 0, seed=3, step=step)
        foreach.sgd(ps, gs, bs, lr=0.1, momentum=0.9, first_step=step == 0,
                    rounding="stochastic", state_rounding="stochastic", seed=3, step=step,
                    tensors=keys)
    for views, expected in ((arenas[0].param_views, ps), (arenas[0].buf_views, bs)):
        for a, b in zip(views, expected):
            assert_same_bits(a, b)
    assert arenas[0].params.tobytes() != arenas[1].params.tobytes()


def test_arena_refuses_bad_tensors():
    with pytest.raises(ValueError, match="'tensors' has 1 keys for 2 shapes"):
        momentum.Arena([(3,), (4,)], np.float16, tensors=[0])
    with pytest.raises(TypeError, match=r"'tensors\[1\]' must be an int, not float"):
        momentum.Arena([(3,), (4,)], np.float16, tensors=[0, 1.0])
    with pytest.raises(ValueError, match=r"'tensors\[0\]' must be in \[0, 2\*\*64\)"):
        momentum.Arena([(3,)], np.float16, tensors=[-1])


def test_arena_refuses_bad_storage():
    with pytest.raises(TypeError, match="float64 blocks are not mixed"):
        momentum.Arena([(3,)], np.float16, dtypes={"buf": np.float64})
    with pytest.raises(ValueError, match="'dtypes' has 'moment'"):
        momentum.Arena([(3,)], np.float16, dtypes={"moment": np.float32})
    with pytest.raises(ValueError, match="'rounding' must be one of"):
        momentum.Arena([(3,)], np.float16, rounding="up")
    with pytest.raises(TypeError, match="'dtype' must be one of"):
        momentum.Arena([(3,)], ">f2")
