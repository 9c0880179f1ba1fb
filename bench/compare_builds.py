"""Two builds of momentum side by side: the rows the reshaping must not slow.

    python bench/compare_builds.py OLD_SRC NEW_SRC [ROUNDS]

OLD_SRC and NEW_SRC are ``src`` folders of two checkouts built in place
(``python setup.py build_ext --inplace``).  Each round runs one subprocess per
build, alternating, and each subprocess times every row (median of several
samples); the table gives the median over rounds of each build's time and
new/old.  Rows: single-array sgd (float32) at 16 elements, 4 Ki, 1 Mi and
32 Mi; the four tensors of a 64-128-10 MLP and the three workloads through
foreach.sgd, Arena.sgd, momentum.torch.SGD and flat=True,
torch.optim.SGD(fused=True), momentum.torch.AdamW and
torch.optim.AdamW(fused=True); at 1 and 2 threads.  Speed is compared here,
never asserted in tests.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

ROW_SCRIPT = r'''
import json, statistics, sys, time
import numpy as np
import momentum
from momentum import foreach
from momentum._workloads import load_workload

def med(f, k, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(k):
            f()
        ts.append((time.perf_counter() - t) / k)
    return statistics.median(ts)

H = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
rows = {}
for threads in (1, 2):
    momentum.set_num_threads(threads)
    for n, k, reps in ((16, 20000, 7), (4096, 2000, 7), (1 << 20, 20, 7), (32 << 20, 2, 5)):
        if n < (1 << 20) and threads == 2:
            continue
        p, g, b = (np.full(n, v, np.float32) for v in (1.0, 1e-3, 0.0))
        rows[f"sgd {n} elements, {threads} thr"] = med(lambda: momentum.sgd(p, g, b, **H), k, reps)
        del p, g, b
    import torch
    import momentum.torch as mt
    torch.set_num_threads(threads)
    # the MLP of examples/train_digits.py: a step there is mostly fixed cost
    mlp = [(128, 64), (128,), (10, 128), (10,)]
    for name in ("mlp", "many-small", "resnet50", "gpt2-small"):
        shapes = mlp if name == "mlp" else load_workload(name)["shapes"]
        small = name in ("mlp", "many-small")
        k, reps = (200 if name == "mlp" else 20, 7) if small else (2, 5)
        ps = [np.full(s, 1.0, np.float32) for s in shapes]
        gs = [np.full(s, 1e-3, np.float32) for s in shapes]
        bs = [np.zeros(s, np.float32) for s in shapes]
        rows[f"{name} foreach, {threads} thr"] = med(lambda: foreach.sgd(ps, gs, bs, **H), k, reps)
        del ps, gs, bs
        arena = momentum.Arena(shapes)
        arena.grads.fill(1e-3)
        rows[f"{name} arena, {threads} thr"] = med(lambda: arena.sgd(**H), k, reps)
        del arena
        for label, cls, extra in (("momentum.torch.SGD", mt.SGD, {}),
                                  ("flat=True", mt.SGD, {"flat": True}),
                                  ("torch fused", torch.optim.SGD, {"fused": True})):
            params = [torch.nn.Parameter(torch.ones(s)) for s in shapes]
            opt = cls(params, **H, **extra)
            for q in params:
                q.grad = torch.full(q.shape, 1e-3)
            opt.step()
            rows[f"{name} {label}, {threads} thr"] = med(opt.step, k, reps)
            del opt, params
        for label, cls, extra in (("momentum.torch.AdamW", mt.AdamW, {}),
                                  ("torch fused AdamW", torch.optim.AdamW, {"fused": True})):
            params = [torch.nn.Parameter(torch.ones(s)) for s in shapes]
            opt = cls(params, lr=1e-3, **extra)
            for q in params:
                q.grad = torch.full(q.shape, 1e-3)
            opt.step()
            rows[f"{name} {label}, {threads} thr"] = med(opt.step, k, reps)
            del opt, params
print(json.dumps(rows))
'''


def run(src: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run([sys.executable, "-c", ROW_SCRIPT], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    old, new = argv[0], argv[1]
    rounds = int(argv[2]) if len(argv) > 2 else 3
    samples: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for r in range(rounds):
        for name, src in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
            samples[name].append(run(src))
            print(f"round {r + 1}/{rounds}: {name} done", file=sys.stderr, flush=True)
    print("| row | old | new | new/old |\n|---|---|---|---|")
    for row in samples["old"][0]:
        o = statistics.median(s[row] for s in samples["old"])
        n = statistics.median(s[row] for s in samples["new"])
        unit, scale = ("µs", 1e6) if o < 1e-3 else ("ms", 1e3)
        print(f"| {row} | {o * scale:.3g} {unit} | {n * scale:.3g} {unit} | {n / o:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
