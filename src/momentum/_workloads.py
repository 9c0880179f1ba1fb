"""The model workloads shipped with the package: parameter shapes of real models.

Each workload is a JSON file in ``momentum/workloads/`` with ``name``,
``source``, ``total_elements`` and ``shapes`` (one list of ints per tensor).
They are read with :mod:`importlib.resources`, so they work from a wheel or a
zip as well as from a source tree.
"""
from __future__ import annotations

import json
from importlib import resources

__all__ = ["load_workload", "workload_names"]


def _directory() -> resources.abc.Traversable:
    # Through the parent package: "workloads" is a data directory, not a package.
    return resources.files("momentum").joinpath("workloads")


def workload_names() -> list[str]:
    """The names of the shipped workloads, sorted (e.g. ``"resnet50"``)."""
    return sorted(entry.name[:-len(".json")]
                  for entry in _directory().iterdir()
                  if entry.name.endswith(".json"))


def load_workload(name: str) -> dict:
    """The workload ``name`` as a dict; ``shapes`` is a list of tuples.

    Raises ValueError naming the known workloads if ``name`` is not one.
    """
    names = workload_names()
    if name not in names:
        raise ValueError(f"load_workload(): unknown workload {name!r}; "
                         f"known: {', '.join(names)}")
    text = _directory().joinpath(f"{name}.json").read_text("utf-8")
    workload = json.loads(text)
    workload["shapes"] = [tuple(shape) for shape in workload["shapes"]]
    return workload
