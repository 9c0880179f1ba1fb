"""Step time of momentum.torch.AdamW against torch.optim.AdamW's three modes,
on the parameter sets of the README's table.

    python bench/torch_adamw_steps.py [ROUNDS]

float32, lr 1e-3, weight_decay 1e-2, one thread (torch and momentum).  Each
round times every optimizer once (5 steps, after warm steps), in an order
that rotates between rounds; the table gives each one's median time per
step over the rounds and its time relative to ours (below 1: faster than
ours).  Speed is compared here, never asserted in tests.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

import momentum
import momentum.torch as mt

SETS = {
    "MLP 64-128-10 (4 tensors)": [(128, 64), (128,), (10, 128), (10,)],
    "200 tensors of 32x32": [(32, 32)] * 200,
    "1,000 tensors of 1,024 (many-small)": [(1024,)] * 1000,
    "one 1024x1024": [(1024, 1024)],
}
OPTIMIZERS = {
    "momentum.torch.AdamW": lambda ps: mt.AdamW(ps, lr=1e-3, weight_decay=1e-2),
    "torch for-loop": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2,
                                                   foreach=False),
    "torch foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2,
                                                  foreach=True),
    "torch fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2, fused=True),
}
STEPS = 5


def _optimizer(make, shapes):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-2
    opt = make(params)
    for _ in range(3):
        opt.step()
    return opt


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 15
    torch.set_num_threads(1)
    momentum.set_num_threads(1)
    names = list(OPTIMIZERS)
    print(f"| parameters | {' | '.join(names)} |")
    print("|" + " --- |" * (len(names) + 1))
    for label, shapes in SETS.items():
        opts = {name: _optimizer(make, shapes) for name, make in OPTIMIZERS.items()}
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                for _ in range(STEPS):
                    opts[name].step()
                times[name].append((time.perf_counter() - t) / STEPS)
        ours = statistics.median(times[names[0]])
        medians = [statistics.median(times[n]) for n in names]
        cells = [f"{m * 1e6:.0f} µs ({m / ours:.2f})" for m in medians]
        print(f"| {label} | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
