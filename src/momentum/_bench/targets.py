"""The speed targets of the 16-bit storage issue, checked on a run's sgd rows.

Each check gives, per matching row (layout, size, threads), the measured
value, its bound and whether it is met; a target whose rows the run did not
measure (a quick run has no 32 Mi rows) yields nothing.
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

from momentum.rules import HALF_DTYPES

MI = 1 << 20
LARGE = 32 * MI
IN_CACHE = (64 << 10, 1 * MI)
SHORT = {"bfloat16": "bf16", "float16": "f16"}
ALL16 = tuple(f"{s}/{s}/{s}" for s in (SHORT[d] for d in HALF_DTYPES))
MIXED = tuple(f"{s}/{s}/f32" for s in (SHORT[d] for d in HALF_DTYPES))
STOCHASTIC = ("bf16/bf16/bf16 stochastic", "bf16/bf16/bf16 stochastic + stochastic state")
KAHAN_MASTER = ("bf16/bf16/bf16 kahan", "f32>bf16/bf16/f32")
TORCH_SLOW = ("torch for-loop", "torch foreach")


class Check(NamedTuple):
    target: str
    layout: str
    n: int
    threads: int
    value: float
    bound: float
    at_most: bool   # the value must be <= bound (else >=)

    @property
    def met(self) -> bool:
        return self.value <= self.bound if self.at_most else self.value >= self.bound


def _time(row: dict, name: str = "momentum") -> float:
    return row["results"][name]["median_s"]


def checks(rows: list[dict]) -> Iterator[Check]:
    """Every target on every sgd row it applies to."""
    sgd = {(r["layout"], r["n"], r["threads"]): r
           for r in rows if r["rule"] == "sgd" and "results" in r}

    def each(layouts, sizes, target, value: Callable[[dict], float | None], bound, at_most=False):
        for (layout, n, threads), r in sgd.items():
            if layout in layouts and n in sizes:
                v = value(r)
                if v is not None:
                    yield Check(target, layout, n, threads, v, bound, at_most)

    every = {n for _, n, _ in sgd}
    yield from each(ALL16, {LARGE}, "x float32 step", lambda r: r["x_float32"], 1.8)
    yield from each(ALL16, {LARGE}, "of the C loop", lambda r: r["pct_of_c_loop"] / 100, 0.95)
    yield from each(MIXED, {LARGE}, "x float32 step", lambda r: r["x_float32"], 1.35)
    for mode in TORCH_SLOW:
        speed = (lambda r, m=mode: _time(r, m) / _time(r) if m in r["results"] else None)
        yield from each(ALL16[:1], {LARGE}, f"x {mode}", speed, 2.2)
        yield from each(ALL16, every, f"x {mode}", speed, 1.0)
    yield from each(ALL16 + MIXED, set(IN_CACHE), "x float32 step (in cache)",
                    lambda r: r["x_float32"], 1.0)

    def over_nearest(r: dict) -> float | None:
        nearest = sgd.get((ALL16[0], r["n"], r["threads"]))
        return _time(r) / _time(nearest) - 1 if nearest else None
    yield from each(STOCHASTIC, {LARGE}, "cost over nearest", over_nearest, 0.15, at_most=True)
    yield from each(KAHAN_MASTER, {LARGE}, "of the C loop", lambda r: r["pct_of_c_loop"] / 100,
                    0.95)


# The Adam issue's targets, on adam's rows (adamw's and lion's alike where they apply).
ADAM_F32 = "f32/f32/f32/f32"
ADAM_BF16 = "bf16/bf16/bf16/bf16"
ADAM_MIXED = "bf16/bf16/f32/f32"
DEEPSPEED = "DeepSpeedCPUAdam"
# (size, candidate, bound): momentum's speed over the candidate's.
ADAM_PEERS = ((LARGE, "torch fused", 1.0), (LARGE, DEEPSPEED, 1.0),
              (64 << 10, DEEPSPEED, 1.2), (64 << 10, "torch fused", 2.5),
              (MI, DEEPSPEED, 1.0), (MI, "torch fused", 2.0))


def adam_checks(rows: list[dict]) -> Iterator[Check]:
    """Every Adam-issue target on every adam, adamw and lion row it applies to."""
    for r in rows:
        if r.get("rule") not in ("adam", "adamw", "lion") or "results" not in r:
            continue
        name = f"{r['rule']} {r['layout']}"
        n, threads = r["n"], r["threads"]
        speed = (lambda peer: _time(r, peer) / _time(r) if peer in r["results"] else None)
        f32 = r["layout"] in (ADAM_F32, "f32/f32/f32")
        if f32 and n == LARGE and r["pct_of_c_loop"] is not None:
            yield Check("of the C loop", name, n, threads, r["pct_of_c_loop"] / 100, 0.95, False)
        for size, peer, bound in ADAM_PEERS if r["layout"] == ADAM_F32 else ():
            if n == size and speed(peer) is not None:
                yield Check(f"x {peer}", name, n, threads, speed(peer), bound, False)
        if r["layout"] == ADAM_BF16 and n == LARGE:
            for peer, bound in (("torch fused", 2.2), (DEEPSPEED, 1.2)):
                if speed(peer) is not None:
                    yield Check(f"x {peer} (bf16 states)", name, n, threads, speed(peer), bound,
                                False)
        if r["layout"] == ADAM_MIXED and speed(DEEPSPEED) is not None:
            yield Check(f"x {DEEPSPEED} (same layout)", name, n, threads, speed(DEEPSPEED), 1.0,
                        False)
