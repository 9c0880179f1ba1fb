"""What this build of momentum is: compiler, flags, threads, versions."""
from __future__ import annotations

import platform
import sys

import numpy as np

from momentum import _build, _dispatch, _threads


def config() -> dict:
    """The build and run-time configuration as a dict (see :func:`show_config`)."""
    from momentum import __version__
    return {
        "momentum": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
        "compiler": _build.BUILD["compiler"],
        "cflags": _build.BUILD["cflags"],
        "baseline isa": _build.BUILD["isa"],
        "kernels": _dispatch.get_isa(),
        "available": ", ".join(_dispatch.available_isas()),
        "openmp": _build.BUILD["openmp"],
        "threads": _threads.get_num_threads(),
    }


def show_config() -> None:
    """Print how the extension was built and how it will run."""
    for key, value in config().items():
        print(f"{key:>12}: {value}")
