"""Train a small MLP on scikit-learn's digits with momentum.torch.SGD or AdamW.

The digits data set (1,797 8x8 images, 10 classes) ships with scikit-learn,
so nothing is downloaded.  The script trains the same network from the same
seed with each optimizer of one table and prints loss and test accuracy per
epoch for the first, the final accuracy of each, and the median time of one
``optimizer.step()`` of each.

``--optimizer sgd`` (the default): ``momentum.torch.SGD`` (per tensor, and
with ``flat=True``: one arena, one kernel call), ``torch.optim.SGD`` (its
for-loop on CPU) and ``torch.optim.SGD(fused=True)``.

``--optimizer adamw``: ``momentum.torch.AdamW``, ``torch.optim.AdamW``
(for-loop) and ``torch.optim.AdamW(fused=True)``, and the ZeRO-Offload
layout at the PyTorch level: the model in bfloat16 (so its gradients come
in bfloat16), ``momentum.torch.AdamW(state_dtype=torch.float32,
rounding="master")`` keeping a float32 master copy and float32 moments and
writing the bfloat16 parameters from the master, in one pass per step::

    PYTHONPATH=src python examples/train_digits.py --epochs 20
    PYTHONPATH=src python examples/train_digits.py --optimizer adamw --epochs 20
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import momentum.torch

Make = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
# Per --optimizer: its hyperparameters and, by name, each optimizer with the
# dtype the model is trained in (bfloat16: the ZeRO-Offload layout).
HYPERS = {"sgd": dict(lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True),
          "adamw": dict(lr=3e-3, betas=(0.9, 0.999), weight_decay=1e-2)}
SGD, ADAMW = HYPERS["sgd"], HYPERS["adamw"]
OPTIMIZERS: dict[str, dict[str, tuple[Make, torch.dtype]]] = {
    "sgd": {
        "momentum.torch.SGD": (lambda ps: momentum.torch.SGD(ps, **SGD), torch.float32),
        "momentum.torch.SGD(flat=True)": (lambda ps: momentum.torch.SGD(ps, **SGD, flat=True),
                                          torch.float32),
        "torch.optim.SGD (for-loop)": (lambda ps: torch.optim.SGD(ps, **SGD), torch.float32),
        "torch.optim.SGD(fused=True)": (lambda ps: torch.optim.SGD(ps, **SGD, fused=True),
                                        torch.float32),
    },
    "adamw": {
        "momentum.torch.AdamW": (lambda ps: momentum.torch.AdamW(ps, **ADAMW), torch.float32),
        "torch.optim.AdamW (for-loop)": (lambda ps: torch.optim.AdamW(ps, **ADAMW),
                                         torch.float32),
        "torch.optim.AdamW(fused=True)": (lambda ps: torch.optim.AdamW(ps, **ADAMW, fused=True),
                                          torch.float32),
        # ZeRO-Offload: bfloat16 model, gradients and parameters; float32
        # master copy and moments in the optimizer state; one pass a step.
        "momentum.torch.AdamW, bf16 + master": (
            lambda ps: momentum.torch.AdamW(ps, **ADAMW, state_dtype=torch.float32,
                                            rounding="master"), torch.bfloat16),
    },
}


def digits(seed: int) -> tuple[torch.Tensor, ...]:
    """Train and test images (pixels scaled to [0, 1]) and labels."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=seed, stratify=y)
    return (torch.tensor(x_train, dtype=torch.float32), torch.tensor(x_test, dtype=torch.float32),
            torch.tensor(y_train), torch.tensor(y_test))


def train(make_optimizer: Make, dtype: torch.dtype, epochs: int, batch_size: int, seed: int,
          verbose: bool) -> tuple[float, list[float]]:
    """Train from ``seed`` with the model in ``dtype``; return the final test
    accuracy and every step's time (s)."""
    x_train, x_test, y_train, y_test = (t.to(dtype) if t.is_floating_point() else t
                                        for t in digits(seed))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10)).to(dtype)
    opt = make_optimizer(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    step_times: list[float] = []
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x_train))
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            began = time.perf_counter()
            opt.step()
            step_times.append(time.perf_counter() - began)
            total += loss.item() * len(batch)
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        if verbose:
            print(f"epoch {epoch:3d}  loss {total / len(x_train):.4f}  "
                  f"test accuracy {accuracy:6.1%}")
    return accuracy, step_times


def main(epochs: int = 20, batch_size: int = 64, seed: int = 0,
         optimizer: str = "sgd") -> dict[str, tuple[float, float]]:
    """Train with each optimizer of ``OPTIMIZERS[optimizer]``; print and
    return ``{name: (accuracy, median step µs)}``."""
    torch.set_num_threads(1)  # the model is tiny: threads would only add overhead
    results = {}
    for i, (name, (make, dtype)) in enumerate(OPTIMIZERS[optimizer].items()):
        if i == 0:
            print(f"{name}, {epochs} epochs, batch {batch_size}, {HYPERS[optimizer]}")
        accuracy, times = train(make, dtype, epochs, batch_size, seed, verbose=i == 0)
        results[name] = (accuracy, statistics.median(times) * 1e6)
    ours = next(iter(results.values()))[1]
    print("\nfinal test accuracy, median optimizer.step() time:")
    for name, (accuracy, micros) in results.items():
        print(f"  {name:36} {accuracy:6.1%}  {micros:8.1f} us  ({micros / ours:.2f}x ours)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    args = parser.parse_args()
    main(args.epochs, args.batch_size, args.seed, args.optimizer)
