"""The digits example runs, learns, and its optimizers agree."""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


def test_train_digits_one_epoch(capsys):
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(epochs=1)
    out = capsys.readouterr().out
    assert "epoch   1" in out and "median optimizer.step() time" in out
    accuracies = [accuracy for accuracy, _ in results.values()]
    assert accuracies[0] > 0.5  # ten classes: chance is 0.1
    # Same seed and rule; float32 rounding may flip a borderline test image.
    assert max(accuracies) - min(accuracies) <= 0.01
    assert all(micros > 0 for _, micros in results.values())


def test_train_digits_adamw_and_the_zero_offload_layout(capsys):
    """--optimizer adamw: ours and torch's AdamW agree, and the bfloat16
    model stepped from a float32 master copy and moments learns too."""
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with warnings.catch_warnings():
        # a fallback to torch's arithmetic warns: the kernels must step every run
        warnings.simplefilter("error", RuntimeWarning)
        results = example.main(epochs=1, optimizer="adamw")
    assert "epoch   1" in capsys.readouterr().out
    wide = [accuracy for name, (accuracy, _) in results.items() if "bf16" not in name]
    assert len(wide) == 3 and wide[0] > 0.5 and max(wide) - min(wide) <= 0.01
    assert results["momentum.torch.AdamW, bf16 + master"][0] > 0.5
