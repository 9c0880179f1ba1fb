"""Facts about the machine and the build, for the report's header."""
from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path

from momentum import _config

SIMD_FLAGS = ("sse2", "avx2", "fma", "f16c", "avx512f", "avx512_bf16")
PEER_MODULES = ("numpy", "torch", "numba", "numexpr")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _caches() -> dict[str, str]:
    """Cache sizes per level of CPU 0, from sysfs (empty where absent)."""
    sizes: dict[str, str] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction":
            sizes[f"L{level}"] = size
    return sizes


def _version(module: str) -> str | None:
    """``module.__version__`` or None when it is not installed."""
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def machine() -> dict:
    """CPU, cores, caches, SIMD flags, build configuration and peer versions."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    return {
        "cpu": cpu.get("model name", platform.processor() or platform.machine()),
        "cores": os.cpu_count(),
        "caches": _caches(),
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "build": _config.config(),
        "versions": {m: _version(m) for m in PEER_MODULES},
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _load(facts: dict) -> str:
    """The load average at start, with a warning when other work holds a core."""
    load = facts["load_average_1min"]
    if load is None:
        return "load unknown"
    busy = load >= 0.5 and facts["cores"] and load > facts["cores"] - 1
    return (f"load average {load:.1f} at start"
            + (" (other work is running: multi-thread rows will be slow and noisy)" if busy else ""))


def header_lines(facts: dict) -> list[str]:
    """The machine facts as the report's first lines."""
    build = facts["build"]
    caches = ", ".join(f"{k} {v}" for k, v in facts["caches"].items()) or "unknown"
    versions = ", ".join(f"{m} {v or 'not installed'}"
                         for m, v in facts["versions"].items())
    return [
        f"CPU      {facts['cpu']} ({facts['cores']} cores; caches {caches})",
        f"SIMD     {' '.join(facts['simd']) or 'none seen'} in /proc/cpuinfo; "
        f"kernels {build['kernels']} (built: {build['available']}; "
        f"baseline {build['baseline isa']})",
        f"build    momentum {build['momentum']}, {build['compiler']}, "
        f"{build['cflags']}, OpenMP {'on' if build['openmp'] else 'off'}",
        f"threads  {build['threads']} by default; {_load(facts)}",
        f"peers    python {build['python']}, {versions}",
    ]
