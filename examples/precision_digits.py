"""What each rounding mode buys: an MLP on scikit-learn's digits kept in bfloat16.

The network (64 -> 128 -> 10, ReLU, softmax cross-entropy) keeps its
parameters, gradients and momentum buffers in bfloat16; the forward and
backward passes run in float32 on the bfloat16 values, and each gradient is
rounded once to bfloat16.  Every run starts from the same bfloat16 weights,
sees the same batches and takes the same SGD steps (momentum 0.9) with
``momentum.foreach.sgd``; only the way a new parameter value is stored
differs:

- ``nearest``: ``param = round(param - lr * buf)``, nearest even;
- ``stochastic``: rounded up with probability the fraction it drops;
- ``kahan``: a bfloat16 buffer ``comp`` carries what each rounding dropped;
- ``master``: a float32 master is stepped; ``param = round(master)``;
- ``float64``: everything (weights, passes, buffers) in float64: the truth.

At checkpoints each run is scored on the training set (loss evaluated in
float64 from its stored weights, so the number measures the weights, not the
pass), on the test set (accuracy), and against the float64 run: the relative
L2 distance ``|p - p64| / |p64|`` over all weights, and the fraction of
elements equal to ``p64`` rounded to bfloat16 (the best any bfloat16 copy of
the truth can do; its own distance is printed as the rounding floor)::

    PYTHONPATH=src python examples/precision_digits.py --steps 1000 --plot docs/precision_digits.png
    PYTHONPATH=src python examples/precision_digits.py --sweep   # how the lr was picked
"""
from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import momentum.foreach
from momentum.dtypes import numpy_dtype
from momentum.rules import ROUNDINGS

BF16 = numpy_dtype("bfloat16")
MODES = ROUNDINGS + ("float64",)
SIZES = (64, 128, 10)
BATCH = 64
MOMENTUM = 0.9
# Picked with ``--sweep`` (README, "bfloat16 weights"): the smaller lr, the more of
# each step falls below half a bfloat16 ulp.  At 0.002 float64 still learns
# (loss 0.25, 93 % test accuracy in 1,000 steps) while "nearest" stalls (0.89:
# 4 % of its weights move in the last 50 steps, 44 % of float64's rounded).
LR = 0.002


@dataclass
class Data:
    """Digits, pixels scaled to [0, 1], split 75/25 (stratified)."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @classmethod
    def load(cls, seed: int = 0) -> Data:
        x, y = load_digits(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(
            x / 16.0, y, test_size=0.25, random_state=seed, stratify=y)
        return cls(x_train, y_train, x_test, y_test)


@dataclass
class Record:
    """One run's scores at each checkpoint step."""
    mode: str
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    rel_l2: list[float] = field(default_factory=list)
    equal: list[float] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)  # all weights, flat, float64


def init_weights(seed: int) -> list[np.ndarray]:
    """He-uniform weights and zero biases, rounded to bfloat16: W1, b1, W2, b2."""
    rng = np.random.default_rng(seed)
    out = []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        bound = np.sqrt(6.0 / fan_in)
        out += [rng.uniform(-bound, bound, (fan_in, fan_out)).astype(BF16),
                np.zeros(fan_out, BF16)]
    return out


def batches(n: int, steps: int, seed: int) -> np.ndarray:
    """Row indices of each step's batch (``steps x BATCH``): epochs of shuffles."""
    rng = np.random.default_rng(seed + 1)
    epochs = -(-steps * BATCH // n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[:steps * BATCH].reshape(
        steps, BATCH)


def forward(weights: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hidden activations ``h = relu(x W1 + b1)`` and logits ``h W2 + b2``."""
    w1, b1, w2, b2 = weights
    h = np.maximum(x @ w1 + b1, 0)
    return h, h @ w2 + b2


def loss_and_grads(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray
                   ) -> tuple[float, list[np.ndarray]]:
    """Mean softmax cross-entropy and its gradients, in the weights' dtype::

        dz = (softmax(z) - onehot(y)) / B;  dW2 = h^T dz;  db2 = sum(dz)
        dh = (dz W2^T) * (h > 0);           dW1 = x^T dh;  db1 = sum(dh)
    """
    h, z = forward(weights, x)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = float(-np.log(p[rows, y]).mean())
    dz = p
    dz[rows, y] -= 1
    dz /= len(y)
    dh = (dz @ weights[2].T) * (h > 0)
    return loss, [x.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]


def evaluate(weights: list[np.ndarray], data: Data) -> tuple[float, float]:
    """Training loss (float64, from the stored weights) and test accuracy."""
    wide = [w.astype(np.float64) for w in weights]
    loss, _ = loss_and_grads(wide, data.x_train, data.y_train)
    _, logits = forward(wide, data.x_test)
    return loss, float((logits.argmax(axis=1) == data.y_test).mean())


def train(mode: str, data: Data, *, lr: float = LR, steps: int = 1000, seed: int = 0,
          every: int = 50, truth: Record | None = None, rounding_seed: int = 0) -> Record:
    """Train from ``init_weights(seed)`` on ``batches(..., seed)`` for ``steps``
    steps in ``mode``; score every ``every`` steps (and the last), against
    ``truth`` if given (the float64 run's record, scored at the same steps).
    ``rounding_seed`` keys the random bits of stochastic rounding."""
    init = init_weights(seed)
    order = batches(len(data.x_train), steps, seed)
    wide = mode == "float64"
    compute = np.float64 if wide else np.float32
    params = [w.astype(np.float64) for w in init] if wide else [w.copy() for w in init]
    bufs = [np.zeros_like(p) for p in params]
    extra = {}
    if mode == "kahan":
        extra["comps"] = [np.zeros_like(p) for p in params]
    elif mode == "master":
        extra["masters"] = [w.astype(np.float32) for w in init]
    x_train = data.x_train.astype(compute)
    record = Record(mode)
    for t in range(steps + 1):
        if t % every == 0 or t == steps:
            score(record, t, params, data, truth)
        if t == steps:
            break
        rows = order[t]
        _, grads = loss_and_grads([p.astype(compute) for p in params], x_train[rows],
                                  data.y_train[rows])
        grads = [g.astype(params[0].dtype) for g in grads]
        momentum.foreach.sgd(params, grads, bufs, lr=lr, momentum=MOMENTUM, first_step=t == 0,
                             rounding="nearest" if wide else mode, seed=rounding_seed, step=t,
                             **extra)
    return record


def score(record: Record, t: int, params: list[np.ndarray], data: Data,
          truth: Record | None) -> None:
    """Append step ``t``'s scores to ``record``."""
    loss, accuracy = evaluate(params, data)
    flat = np.concatenate([p.astype(np.float64).ravel() for p in params])
    record.steps.append(t)
    record.loss.append(loss)
    record.accuracy.append(accuracy)
    record.weights.append(flat)
    if truth is None:
        return
    ref = truth.weights[truth.steps.index(t)]
    record.rel_l2.append(float(np.linalg.norm(flat - ref) / np.linalg.norm(ref)))
    record.equal.append(float((flat == ref.astype(BF16).astype(np.float64)).mean()))


def experiment(data: Data, *, lr: float = LR, steps: int = 1000, seed: int = 0,
               every: int = 50, modes: tuple[str, ...] = ROUNDINGS) -> dict[str, Record]:
    """The float64 run, then each mode scored against it, by mode name."""
    truth = train("float64", data, lr=lr, steps=steps, seed=seed, every=every)
    floor = Record("float64 rounded to bfloat16", steps=truth.steps)
    for ref in truth.weights:
        rounded = ref.astype(BF16).astype(np.float64)
        floor.rel_l2.append(float(np.linalg.norm(rounded - ref) / np.linalg.norm(ref)))
    out = {mode: train(mode, data, lr=lr, steps=steps, seed=seed, every=every, truth=truth)
           for mode in modes}
    return out | {"float64": truth, "floor": floor}


def table(records: dict[str, Record], checkpoints: list[int]) -> str:
    """Markdown table of each run's scores at ``checkpoints``."""
    head = ("mode", "step", "train loss", "test accuracy", "rel. L2 to float64",
            "equal to bf16(float64)")
    lines = [f"| {' | '.join(head)} |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name, rec in records.items():
        if name == "floor":
            continue
        for t in checkpoints:
            i = rec.steps.index(t)
            dist = (f"{rec.rel_l2[i]:.2e} | {rec.equal[i]:6.1%}" if rec.rel_l2
                    else f"{records['floor'].rel_l2[i]:.2e} (rounding floor) | 100.0%")
            lines.append(f"| {name} | {t} | {rec.loss[i]:.4f} | {rec.accuracy[i]:6.1%} | {dist} |")
    return "\n".join(lines)


def plot(records: dict[str, Record], path: str, lr: float) -> None:
    """Training loss and distance to float64 vs step, one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    style: dict[str, dict[str, Any]] = {
        "float64": {"color": "0.7", "linewidth": 5, "zorder": 0},  # under the runs matching it
        "floor": {"color": "black", "linestyle": "--"}}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    for name, rec in records.items():
        if name != "floor":
            left.plot(rec.steps, rec.loss, label=name, **style.get(name, {}))
        if rec.rel_l2:  # from the 2nd checkpoint: all start at one point (0 is off a log axis)
            right.plot(rec.steps[1:], rec.rel_l2[1:], **style.get(name, {}),
                       label="float64 rounded to bf16" if name == "floor" else name)
    left.set(xlabel="step", ylabel="training loss", yscale="log",
             title=f"bfloat16 MLP on digits: SGD, lr {lr}, momentum {MOMENTUM}")
    right.set(xlabel="step", ylabel="|p - p64| / |p64|", yscale="log",
              title="distance of the weights to the float64 run")
    for ax in (left, right):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def moved(record: Record, bf16: bool = False) -> float:
    """Fraction of weights whose bfloat16 value changed over the last
    checkpoint interval (``bf16``: of the weights rounded to bfloat16)."""
    before, after = record.weights[-2], record.weights[-1]
    if bf16:
        before, after = before.astype(BF16), after.astype(BF16)
    return float((before != after).mean())


def sweep(data: Data, steps: int, seed: int) -> None:
    """Per lr: final loss and accuracy of float64 and nearest, the share of
    float64's loss decrease that nearest achieves, and the fraction of weights
    each moved over the last 50 steps (float64: rounded to bfloat16)."""
    print("| lr | float64 loss, accuracy | nearest loss, accuracy | nearest's share of "
          "the decrease | moved in the last 50 steps: nearest, bf16(float64) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for lr in (0.1, 0.03, 0.01, 0.005, 0.002, 0.001):
        recs = experiment(data, lr=lr, steps=steps, seed=seed, every=50, modes=("nearest",))
        ref, near = recs["float64"], recs["nearest"]
        share = (near.loss[0] - near.loss[-1]) / (ref.loss[0] - ref.loss[-1])
        print(f"| {lr} | {ref.loss[-1]:.4f}, {ref.accuracy[-1]:.1%} | {near.loss[-1]:.4f}, "
              f"{near.accuracy[-1]:.1%} | {share:.0%} | {moved(near):.1%}, "
              f"{moved(ref, bf16=True):.1%} |")


def main(steps: int = 1000, lr: float = LR, seed: int = 0, every: int = 25,
         plot_path: str | None = None) -> dict[str, Record]:
    """Run every mode, print the table at steps/10, steps/2 and steps; optionally plot."""
    data = Data.load(seed)
    records = experiment(data, lr=lr, steps=steps, seed=seed, every=every)
    marks = [t for t in records["float64"].steps if t in (steps // 10, steps // 2, steps)]
    print(f"bfloat16 MLP {SIZES} on digits, {steps} SGD steps, lr {lr}, momentum {MOMENTUM}, "
          f"batch {BATCH}, seed {seed}\n")
    print(table(records, marks))
    if plot_path:
        plot(records, plot_path, lr)
        print(f"\nwrote {plot_path}")
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="PNG", help="write the figure here")
    parser.add_argument("--sweep", action="store_true", help="final losses for a range of lr")
    args = parser.parse_args()
    if args.sweep:
        sweep(Data.load(args.seed), args.steps, args.seed)
    else:
        main(args.steps, args.lr, args.seed, plot_path=args.plot)
