"""Train a small MLP on scikit-learn's digits with momentum.torch.SGD.

The digits data set (1,797 8x8 images, 10 classes) ships with scikit-learn,
so nothing is downloaded.  The script trains the same network from the same
seed four times -- with ``momentum.torch.SGD`` (per tensor, and with
``flat=True``: one arena, one kernel call), with ``torch.optim.SGD`` (its
default per-tensor for-loop on CPU) and with ``torch.optim.SGD(fused=True)``
-- and prints loss and test accuracy per epoch for the first, the final
accuracy of each, and the median time of one ``optimizer.step()`` of each::

    PYTHONPATH=src python examples/train_digits.py --epochs 20
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

HYPER = dict(lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True)
OPTIMIZERS: dict[str, Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "momentum.torch.SGD": lambda ps: momentum.torch.SGD(ps, **HYPER),
    "momentum.torch.SGD(flat=True)": lambda ps: momentum.torch.SGD(ps, **HYPER, flat=True),
    "torch.optim.SGD (for-loop)": lambda ps: torch.optim.SGD(ps, **HYPER),
    "torch.optim.SGD(fused=True)": lambda ps: torch.optim.SGD(ps, **HYPER, fused=True),
}


def digits(seed: int) -> tuple[torch.Tensor, ...]:
    """Train and test images (pixels scaled to [0, 1]) and labels."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=seed, stratify=y)
    return (torch.tensor(x_train, dtype=torch.float32), torch.tensor(x_test, dtype=torch.float32),
            torch.tensor(y_train), torch.tensor(y_test))


def train(make_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
          epochs: int, batch_size: int, seed: int, verbose: bool
          ) -> tuple[float, list[float]]:
    """Train from ``seed``; return the final test accuracy and every step's time (s)."""
    x_train, x_test, y_train, y_test = digits(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
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


def main(epochs: int = 20, batch_size: int = 64, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Train with each optimizer; print and return ``{name: (accuracy, median step µs)}``."""
    torch.set_num_threads(1)  # the model is tiny: threads would only add overhead
    results = {}
    for i, (name, make) in enumerate(OPTIMIZERS.items()):
        if i == 0:
            print(f"{name}, {epochs} epochs, batch {batch_size}, {HYPER}")
        accuracy, times = train(make, epochs, batch_size, seed, verbose=i == 0)
        results[name] = (accuracy, statistics.median(times) * 1e6)
    ours = results["momentum.torch.SGD"][1]
    print("\nfinal test accuracy, median optimizer.step() time:")
    for name, (accuracy, micros) in results.items():
        print(f"  {name:31} {accuracy:6.1%}  {micros:8.1f} us  ({micros / ours:.2f}x ours)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.batch_size, args.seed)
