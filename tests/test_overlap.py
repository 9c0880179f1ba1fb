"""The overlap check of momentum.foreach against a brute-force oracle.

Each case is a random batch whose arrays are views into two shared byte
buffers (laid out apart or at random, so some overlap and some only touch),
with empty arrays, arrays in buffers of their own, and gradients passed to
several triples among them.  A plain-Python oracle says from the arrays'
addresses whether the call is legal (README, "Many tensors in one call"):

* within a triple no two arrays share a byte;
* a written array (param and buf; for update_buffer the buf) shares no byte
  with any array of another triple; reading one gradient from several
  triples is legal;
* an empty array holds no bytes, so it overlaps nothing.

With momentum 0 sgd does not use a buf it is given: the call does not look
at it at all (momentum.rules: an array used only ``when`` a hyperparameter
is nonzero), so it takes part in no overlap.

An illegal call must raise ValueError naming two arrays that share a byte
illegally, and leave every byte of every buffer as it was; a legal one must
give bitwise what the reference gives applied triple by triple.  Each batch
runs in the order made, in address order and shuffled; a legal one runs
again (the check remembers the last batch it passed), then with one written
view moved onto another triple's array (which must raise), then again as
it was.
"""
from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

import momentum.foreach as fe
from momentum.rules import RULES
from conftest import flag_cases, values
from momentum import reference

CASES = 300
SHARED = {"A": 4096, "B": 512}          # bytes
# The sequences of each call, in the order of its reference's arguments.
# foreach's sequences of each call, from the rule table (and sgd in groups).
ROLES = {name: tuple(a.plural for a in rule.arrays) for name, rule in RULES.items()}
ROLES["sgd_groups"] = ROLES["sgd"]

Where = tuple  # ("A" | "B", byte offset), ("own", name) or ("grad of", triple)
Key = tuple[int, str]   # (triple, role)


def block(nbytes: int) -> np.ndarray:
    """``nbytes`` zero bytes starting on a 64-byte boundary."""
    raw = np.zeros(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes]


@dataclass
class Triple:
    dtype: np.dtype
    n: int
    group: int
    first_step: bool
    where: dict[str, Where | None] = field(default_factory=dict)  # None: no array

    @property
    def nbytes(self) -> int:
        return self.n * self.dtype.itemsize


@dataclass
class Case:
    rule: str
    groups: list[dict[str, Any]]   # hyperparameters; sgd's "first_step" is per triple
    per_tensor: list[bool]         # per group: first_step passed as a sequence
    triples: list[Triple]
    sizes: dict[str, int]          # bytes of every buffer

    def hyper(self, i: int) -> dict[str, Any]:
        h = self.groups[self.triples[i].group]
        return dict(h, first_step=self.triples[i].first_step) if self.sgd else h

    @property
    def sgd(self) -> bool:
        return self.rule in ("sgd", "sgd_groups")

    def used(self, key: Key) -> bool:
        """The call uses this array: the table's ``when`` holds (sgd's buf
        only with momentum)."""
        i, role = key
        spec = RULES["sgd" if self.rule == "sgd_groups" else self.rule]
        array = next(a for a in spec.arrays if a.plural == role)
        return array.when is None or bool(self.hyper(i).get(array.when, 0))

    def written(self, key: Key) -> bool:
        spec = RULES["sgd" if self.rule == "sgd_groups" else self.rule]
        return self.used(key) and next(a for a in spec.arrays if a.plural == key[1]).written


def hyperparameters(rng: np.random.Generator, rule: str) -> dict[str, Any]:
    """One group's hyperparameters: a random valid flag case of the rule
    (conftest.flag_cases, from the table: sgd's momentum 0 or not, ...),
    its per-tensor flags left to the triples."""
    spec = RULES["sgd" if rule == "sgd_groups" else rule]
    cases = [hyper for hyper, absent in flag_cases(spec.name) if not absent]
    hyper = dict(cases[int(rng.integers(len(cases)))])
    for name in spec.per_tensor:
        del hyper[name]
    return hyper


def make_case(rng: np.random.Generator, rule: str) -> Case:
    """A random batch of 1-8 triples (see the module docstring)."""
    ngroups = int(rng.integers(1, 4)) if rule == "sgd_groups" else 1
    case = Case(rule, [hyperparameters(rng, rule) for _ in range(ngroups)],
                [bool(rng.integers(2)) for _ in range(ngroups)], [], dict(SHARED))
    flags = [bool(rng.integers(2)) for _ in range(ngroups)]
    packed = rng.random() < 0.5      # laid out apart in A, then perhaps one moved
    for i in range(int(rng.integers(1, 9))):
        g = int(rng.integers(ngroups))
        dtype = np.dtype(rng.choice([np.float32, np.float64]))
        n = 0 if rng.random() < 0.15 else int(rng.integers(1, 14))
        first = bool(rng.integers(2)) if case.per_tensor[g] else flags[g]
        t = Triple(dtype, n, g, first)
        same = [j for j, u in enumerate(case.triples) if (u.dtype, u.n) == (dtype, n)]
        for role in ROLES[rule]:
            if (role == "bufs" and case.sgd and case.groups[g]["momentum"] == 0
                    and rng.random() < 0.4):
                t.where[role] = None
            elif role == "grads" and same and rng.random() < 0.3:
                t.where[role] = ("grad of", int(rng.choice(same)))
            elif packed or rng.random() < 0.6:
                t.where[role] = ("A", 0)            # offset set below
            elif rng.random() < 0.4:
                t.where[role] = ("B", 0)
            else:
                name = f"own {i} {role}"
                case.sizes[name] = t.nbytes
                t.where[role] = ("own", name)
        case.triples.append(t)
    if packed:
        lay_out_apart(rng, case)
    else:
        # At random in a window of its buffer: small windows overlap a lot.
        window = {"A": int(rng.choice([64, 256, 4096])), "B": SHARED["B"]}
        for t in case.triples:
            for role, w in t.where.items():
                if w is not None and w[0] in SHARED:
                    room = min(window[w[0]], SHARED[w[0]]) - t.nbytes
                    t.where[role] = (w[0], place(rng, max(room, 0), t.dtype.itemsize))
    return case


def place(rng: np.random.Generator, room: int, itemsize: int) -> int:
    """A random offset in [0, room], a multiple of ``itemsize``."""
    return int(rng.integers(0, room // itemsize + 1)) * itemsize


def lay_out_apart(rng: np.random.Generator, case: Case) -> None:
    """Put the arrays placed in A one after another (in triple order or
    shuffled), each 0-3 elements after the last (so some touch); empty ones
    anywhere.  Then, half the time, move one non-empty array by 1-3 elements."""
    keys = [(i, role) for i, t in enumerate(case.triples) for role, w in t.where.items()
            if w is not None and w[0] == "A"]
    if rng.random() < 0.5:
        keys = [keys[k] for k in rng.permutation(len(keys))]
    end = 0
    for i, role in keys:
        t = case.triples[i]
        if t.n == 0:
            t.where[role] = ("A", place(rng, SHARED["A"], t.dtype.itemsize))
            continue
        size = t.dtype.itemsize
        at = -(-end // size) * size + int(rng.integers(0, 4)) * size
        t.where[role] = ("A", at)
        end = at + t.nbytes
    assert end <= SHARED["A"]
    moved = [(i, role) for i, role in keys if case.triples[i].n > 0]
    if moved and rng.random() < 0.5:
        i, role = moved[int(rng.integers(len(moved)))]
        t = case.triples[i]
        at = t.where[role][1] + int(rng.choice([-3, -2, -1, 1, 2, 3])) * t.dtype.itemsize
        t.where[role] = ("A", min(max(at, 0), SHARED["A"] - t.nbytes))


def buffers(case: Case, seed: int) -> dict[str, np.ndarray]:
    """Every buffer of ``case``, filled with finite float32 values.

    Read as float64 such bytes are finite too (the top half of each double
    is a finite float32), and the rules' hyperparameters cannot overflow
    them, so no NaN arises and results compare byte for byte."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, size in case.sizes.items():
        out[name] = block(size)
        out[name][...] = values(rng, size // 4, np.float32, special_fraction=0.0).view(np.uint8)
    return out


def view(base: np.ndarray, offset: int, t: Triple) -> np.ndarray:
    return base[offset:offset + t.nbytes].view(t.dtype)


def materialize(case: Case, bases: dict[str, np.ndarray]) -> list[dict[str, np.ndarray | None]]:
    """The arrays of every triple, as views into ``bases``."""
    out: list[dict[str, np.ndarray | None]] = []
    for t in case.triples:
        arrays: dict[str, np.ndarray | None] = {}
        for role, w in t.where.items():
            if w is None:
                arrays[role] = None
            elif w[0] == "grad of":
                arrays[role] = out[w[1]]["grads"]       # the very same object
            elif w[0] == "own":
                arrays[role] = view(bases[w[1]], 0, t)
            else:
                arrays[role] = view(bases[w[0]], w[1], t)
        out.append(arrays)
    return out


# ------------------------------------------------------------------ oracle

def byte_span(a: np.ndarray) -> tuple[int, int]:
    lo = a.__array_interface__["data"][0]
    return lo, lo + a.nbytes


def share_a_byte(a: np.ndarray, b: np.ndarray) -> bool:
    (a_lo, a_hi), (b_lo, b_hi) = byte_span(a), byte_span(b)
    return a_lo < a_hi and b_lo < b_hi and a_lo < b_hi and b_lo < a_hi


def forbidden(case: Case, arrays: list[dict]) -> set[frozenset[Key]]:
    """Every pair of arrays that may not share a byte and does."""
    keys = [(i, role) for i, t in enumerate(arrays) for role, a in t.items()
            if a is not None and case.used((i, role))]
    return {frozenset((x, y)) for x, y in itertools.combinations(keys, 2)
            if share_a_byte(arrays[x[0]][x[1]], arrays[y[0]][y[1]])
            and (x[0] == y[0] or case.written(x) or case.written(y))}


# -------------------------------------------------------------------- calls

def call_of(case: Case, arrays: list[dict], order: list[int]
            ) -> tuple[Callable[[], None], dict[str, Key]]:
    """The foreach call over ``arrays``' triples in ``order``, and the name
    it gives each array.  With groups, the groups come in the order their
    first triple does, each holding its triples in ``order``."""
    rule, names = case.rule, {}
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(case.triples[i].group if rule == "sgd_groups" else 0, []).append(i)
    calls = []
    for k, (g, members) in enumerate(groups.items()):
        lists: dict[str, Any] = {}
        for role in ROLES[rule]:
            lists[role] = [arrays[i][role] for i in members]
            for j, i in enumerate(members):
                names[f"groups[{k}].{role}[{j}]" if rule == "sgd_groups"
                      else f"{role}[{j}]"] = (i, role)
        if case.sgd and all(b is None for b in lists["bufs"]):
            lists["bufs"] = None
        hyper = dict(case.groups[g])
        if case.sgd:
            flags = [case.triples[i].first_step for i in members]
            hyper["first_step"] = flags if case.per_tensor[g] else flags[0]
        calls.append(dict(lists, **hyper))
    if rule == "sgd_groups":
        return lambda: fe.sgd_groups(calls), names
    (kwargs,) = calls
    lists = [kwargs.pop(role) for role in ROLES[rule]]
    return lambda: getattr(fe, rule)(*lists, **kwargs), names


def reference_of(case: Case, arrays: list[dict], order: list[int]) -> None:
    """The reference applied triple by triple in ``order``."""
    func = getattr(reference, "sgd" if case.sgd else case.rule)
    for i in order:
        func(*(arrays[i][r] for r in ROLES[case.rule]), **case.hyper(i))


def orders(case: Case, arrays: list[dict], rng: np.random.Generator) -> dict[str, list[int]]:
    """The triples as made, in address order, and shuffled."""
    def lowest(i: int) -> int:
        spans = [byte_span(a)[0] for a in arrays[i].values() if a is not None and a.nbytes]
        return min(spans, default=0)
    made = list(range(len(case.triples)))
    return {"as made": made, "in address order": sorted(made, key=lowest),
            "shuffled": [int(i) for i in rng.permutation(made)]}


def raw(bases: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: b.tobytes() for k, b in bases.items()}


class Runner:
    """Runs one case's calls and checks each against the oracle."""

    def __init__(self, case: Case, seed: int, what: str):
        self.case, self.what = case, what
        self.ours, self.theirs = buffers(case, seed), buffers(case, seed)
        self.func = "foreach." + case.rule

    def legal(self, call: Callable[[], None], theirs: Callable[[], None], how: str) -> None:
        """``call`` succeeds, and leaves the buffers as ``theirs`` leaves the reference's."""
        call()
        theirs()
        assert raw(self.ours) == raw(self.theirs), f"{self.what}, {how}: results differ"

    def illegal(self, call: Callable[[], None], names: dict[str, Key],
                pairs: set[frozenset[Key]], how: str) -> None:
        """``call`` raises ValueError naming one of ``pairs``, writing nothing."""
        before = raw(self.ours)
        example = sorted(next(iter(pairs)))
        with pytest.raises(ValueError) as e:
            call()
            pytest.fail(f"{self.what}, {how}: accepted, but {example} "
                        f"({[n for n, k in names.items() if k in example]}) share a byte")
        found = re.fullmatch(rf"{re.escape(self.func)}\(\): '(.+)' and '(.+)' "
                             rf"overlap in memory", str(e.value))
        assert found, f"{self.what}, {how}: unexpected error {e.value}"
        assert frozenset((names[found[1]], names[found[2]])) in pairs, (
            f"{self.what}, {how}: {e.value}, but those two may share bytes")
        assert raw(self.ours) == before, f"{self.what}, {how}: written before raising"


def run_case(rule: str, seed: int) -> tuple[bool, bool]:
    """Every call of one case, checked; (legal?, one view moved?)."""
    rng = np.random.default_rng(seed)
    case = make_case(rng, rule)
    r = Runner(case, seed, f"{rule} case {seed}")
    fill = raw(r.ours)
    legal = moved = False
    for how, order in orders(case, materialize(case, r.ours), rng).items():
        for bases in (r.ours, r.theirs):
            for name, b in bases.items():
                b[...] = np.frombuffer(fill[name], np.uint8)
        ours, theirs = materialize(case, r.ours), materialize(case, r.theirs)
        call, names = call_of(case, ours, order)
        pairs = forbidden(case, ours)
        if pairs:
            r.illegal(call, names, pairs, how)
            continue
        legal = True
        step = lambda: reference_of(case, theirs, order)    # noqa: E731
        r.legal(call, step, how)
        r.legal(call, step, how + ", again")
        changed = move_a_written_view(case, ours, r.ours, rng)
        if changed is not None:
            moved = True
            bad, names = call_of(case, changed, order)
            pairs = forbidden(case, changed)
            assert pairs, "the moved view shares no byte with the array it was put on"
            r.illegal(bad, names, pairs, how + ", one view moved")
            r.legal(call, step, how + ", as it was")
    return legal, moved


def move_a_written_view(case: Case, arrays: list[dict], bases: dict[str, np.ndarray],
                        rng: np.random.Generator) -> list[dict] | None:
    """``arrays`` with one written array of one triple replaced by a view of
    the same dtype and length onto another triple's non-empty array in A or
    B that the call uses; None when there is no such pair."""
    writers = [(i, r) for i, t in enumerate(arrays) for r, a in t.items()
               if a is not None and a.nbytes and case.written((i, r))]
    targets = [(j, r, w) for j, t in enumerate(case.triples) if t.n
               for r, w in t.where.items()
               if w is not None and w[0] in SHARED and case.used((j, r))]
    pairs = [(x, y) for x in writers for y in targets if y[0] != x[0]]
    if not pairs:
        return None
    (i, role), (j, _, (name, offset)) = pairs[int(rng.integers(len(pairs)))]
    t, target = case.triples[i], case.triples[j]
    byte = offset + int(rng.integers(target.nbytes))
    at = min(byte // t.dtype.itemsize * t.dtype.itemsize,
             (SHARED[name] - t.nbytes) // t.dtype.itemsize * t.dtype.itemsize)
    new = view(bases[name], at, t)
    if not share_a_byte(new, view(bases[name], offset, target)):
        return None
    changed = [dict(a) for a in arrays]
    changed[i][role] = new
    return changed


# -------------------------------------------------------------------- tests

@pytest.mark.parametrize("rule", list(ROLES))
def test_overlap_check_agrees_with_the_oracle(rule):
    outcomes = Counter(run_case(rule, seed) for seed in range(CASES))
    legal = sum(n for (ok, _), n in outcomes.items() if ok)
    moved = sum(n for (_, m), n in outcomes.items() if m)
    # The cases must exercise both verdicts, and the remembered batch.
    assert CASES / 5 < legal < CASES * 4 / 5, outcomes
    assert moved > CASES / 10, outcomes


def test_an_unused_buf_is_not_looked_at():
    # sgd with momentum 0 never touches bufs[1]: it may lie anywhere, even
    # over another triple's param, or be no array at all ...
    shared = np.ones(6)
    params, grads = [shared[0:4], np.ones(4)], [np.ones(4), np.ones(4)]
    fe.sgd(params, grads, [None, shared[2:6]], lr=0.5)
    assert (shared[0:4] == 0.5).all() and (params[1] == 0.5).all()
    fe.sgd([np.ones(4)], [np.ones(4)], ["not an array"], lr=0.5)
    # ... while with momentum it is a written array like any other.
    shared = np.ones(6)
    with pytest.raises(ValueError, match=re.escape(
            "foreach.sgd(): 'params[0]' and 'bufs[1]' overlap in memory")):
        fe.sgd([shared[0:4], np.ones(4)], grads, [np.ones(4), shared[2:6]], lr=0.5,
               momentum=0.9)
    assert (shared == 1).all(), "written before raising"
