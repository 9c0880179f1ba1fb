"""What this build of momentum is: compiler, flags, threads, versions."""
from __future__ import annotations

import platform
import sys

import numpy as np

from momentum import _schedule


def config() -> dict:
    """The build and run-time configuration as a dict (see :func:`show_config`)."""
    from momentum import __version__
    return {
        "momentum": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
        "compiler": _schedule.BUILD["compiler"],
        "cflags": _schedule.BUILD["cflags"],
        "baseline isa": _schedule.BUILD["isa"],
        "kernels": _schedule.get_isa(),
        "available": ", ".join(_schedule.available_isas()),
        "openmp": _schedule.BUILD["openmp"],
        "threads": _schedule.get_num_threads(),
    }


def show_config() -> None:
    """Print how the extension was built and how it will run."""
    for key, value in config().items():
        print(f"{key:>12}: {value}")
