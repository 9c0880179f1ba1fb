"""The plain C loops each storage layout is held to (momentum._probe).

Every layout's ceiling moves its rule's bytes in that layout.  Adam's and
AdamW's are _probe_adam.h's loops: read param, grad, exp_avg, exp_avg_sq,
write all but grad (28 bytes per element in float32), a plain float32 Adam
step; Lion moves sgd's bytes and every other rule is held to sgd's loops:
read param, grad, buf, write param, buf, each array in its storage width (a 16-bit array as a
bfloat16 widened by a shift and rounded to nearest: see _probe16.h), plus
the Kahan layout's compensation buffer or the master layout's float32 master
and written-only 16-bit param.  Each loop is timed in one nogil block on its
own arrays of the row's size.  A 16-bit layout has up to three: the
portable build's, the same loops built for AVX-512 with AVX512-BF16, and
those again rounding with vcvtneps2bf16; the row is held to the fastest.
"""
from __future__ import annotations

import importlib

import numpy as np

from momentum import _dispatch, _probe
from momentum._bench.storage import Layout
from momentum._bench.timing import Runner
from momentum._bench.peers import C_LOOP
from momentum.rules import HALF_DTYPES, RULES, itemsize

PORTABLE = "C loop"
AVX512 = "C loop avx512bf16"
HARDWARE = "C loop vcvtneps2bf16"


def hardware_probe():
    """The probe module built with AVX512-BF16, or None where it is not built
    or this CPU has no such instructions (momentum._dispatch decides, as for
    the kernels)."""
    if "avx512bf16" not in _dispatch.available_isas():
        return None
    try:
        return importlib.import_module("momentum._probe_avx512bf16")
    except ImportError:
        return None


def as_sgd(layout: Layout) -> Layout:
    """The layout with a param (a rule without one, update_buffer, has its
    ceiling's param stored as its buffer): the sgd call whose bytes the C loops move."""
    roles = dict(layout.dtypes)
    if "exp_avg" in roles:    # Lion's moment, in sgd's buffer's place
        roles["buf"] = roles.pop("exp_avg")
    roles.setdefault("param", roles["buf"])
    return Layout(tuple(roles.items()), layout.rounding, layout.state_rounding)


def _like(width: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` standard normal values as float32, or as bfloat16 bit patterns (uint16)."""
    x = rng.standard_normal(n, dtype=np.float32)
    return x if width == 4 else (x.view(np.uint32) >> 16).astype(np.uint16)


# The rules held to the Adam loops; the layouts those loops cover: float32,
# and 16-bit param and grad with moments of either width, rounded to nearest
# or stochastically (priced as nearest), or the master layout.
ADAM = ("adam", "adamw")


def adam_covers(layout: Layout) -> bool:
    """Whether _probe_adam.h has a loop moving ``layout``'s bytes."""
    d = {a: layout.dtype(a) for a in ("param", "grad", "exp_avg")}
    if layout.rounding == "master":
        return True
    half = (d["param"] in HALF_DTYPES) + (d["grad"] in HALF_DTYPES)
    return (layout.rounding != "kahan" and d["exp_avg"] == layout.dtype("exp_avg_sq")
            and (set(d.values()) == {"float32"} or half == 2))


def _adam_loops(layout: Layout, n: int, threads: int) -> dict[str, Runner]:
    rng = np.random.default_rng(1)
    hardware = hardware_probe()
    if layout.rounding == "master":
        data = (_like(4, n, rng), _like(2, n, rng), _like(4, n, rng), np.abs(_like(4, n, rng)),
                _like(2, n, rng))
        timer = "time_adam_master"
    else:
        data = tuple(_like(itemsize(layout.dtype(a)), n, rng) for a in ("param", "grad", "exp_avg"))
        data += (_like(itemsize(layout.dtype("exp_avg_sq")), n, rng),)
        if data[3].dtype == np.float32:
            data[3][...] = np.abs(data[3])   # a second moment is not negative
        timer = "time_adam"
    modules = {PORTABLE: _probe, **({AVX512: hardware} if hardware is not None else {})}
    out = {name: (lambda k, f=getattr(m, timer): f(*data, k, threads))
           for name, m in modules.items()}
    if hardware is not None and any(x.itemsize == 2 for x in data):
        out[HARDWARE] = lambda k, f=getattr(hardware, timer + "_hw"): f(*data, k, threads)
    return out


def loops(layout: Layout, n: int, threads: int, rule: str = "sgd") -> dict[str, Runner]:
    """The C loops of ``rule`` in ``layout`` at ``n`` elements and ``threads``
    threads, by name (none for an Adam layout _probe_adam.h has no loop for)."""
    if rule in ADAM:
        return _adam_loops(layout, n, threads) if adam_covers(layout) else {}
    rng = np.random.default_rng(1)
    if not any(d in HALF_DTYPES for _, d in layout.dtypes) and layout.rounding != "master":
        dtype = np.dtype(as_sgd(layout).dtype("buf"))
        data = tuple(rng.standard_normal(n).astype(dtype) for _ in range(3))
        return {C_LOOP: lambda k: _probe.time_fused(*data, k, threads)}
    if layout.rounding == "kahan":
        data, timer = tuple(_like(2, n, rng) for _ in range(4)), "time_kahan"
    elif layout.rounding == "master":
        data = (_like(4, n, rng), _like(2, n, rng), _like(4, n, rng), _like(2, n, rng))
        timer = "time_master"
    else:
        data = tuple(_like(itemsize(as_sgd(layout).dtype(a)), n, rng)
                     for a in ("param", "grad", "buf"))
        timer = "time_sgd16"
    modules = {PORTABLE: _probe}
    hardware = hardware_probe()
    if hardware is not None:
        modules[AVX512] = hardware
    out = {name: (lambda k, f=getattr(m, timer): f(*data, k, threads))
           for name, m in modules.items()}
    if hardware is not None:
        out[HARDWARE] = lambda k, f=getattr(hardware, timer + "_hw"): f(*data, k, threads)
    return out


def bytes_per_element(layout: Layout, rule: str = "sgd") -> int:
    """Bytes the layout's C loops move per element: those of Adam's typical
    call for the Adam family, else of sgd, in that layout."""
    if rule in ADAM:
        return layout.bytes_per_element(RULES[rule])
    return as_sgd(layout).bytes_per_element(RULES["sgd"])
