"""The storage layouts the benchmark times: the dtype each array is stored in,
how a 16-bit parameter is rounded, and the bytes that moves.

A :class:`Layout` gives a dtype per array *name* (``param``, ``grad``,
``buf``); every state array of a rule without a ``buf`` (Adam's ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``, Lion's ``exp_avg``) takes ``buf``'s
dtype, so one layout applies to every rule of the table.  Its rounding adds arrays: ``"kahan"`` a compensation buffer ``comp``
(the parameter's dtype, read and written), ``"master"`` a float32 ``master``
the rule updates in the parameter's place, the 16-bit ``param`` then only
written.  Bytes per element are the item sizes of the arrays read plus those
written, read/written taken from :mod:`momentum.rules`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from momentum.dtypes import numpy_dtype
from momentum.rules import HALF_DTYPES, ROUNDINGS, Rule, itemsize, kernel_combos

SHORT = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}


class Stored(NamedTuple):
    """One array of a call: its name, storage dtype, and whether it is read and written."""

    name: str
    dtype: str
    read: bool
    written: bool


@dataclass(frozen=True)
class Layout:
    """How one call stores its arrays: a dtype per array name, the parameter's
    ``rounding`` and the state's ``state_rounding`` (momentum.rules.ROUNDINGS)."""

    dtypes: tuple[tuple[str, str], ...]
    rounding: str = "nearest"
    state_rounding: str = "nearest"

    def dtype(self, array: str) -> str:
        """The storage dtype of the array called ``array`` (a state array not
        named in the layout: ``buf``'s)."""
        roles = dict(self.dtypes)
        return roles[array] if array in roles else roles["buf"]

    def applies(self, rule: Rule) -> bool:
        """Whether ``rule`` can run in this layout: a param rounding other than
        nearest needs a 16-bit param (a rule without one ignores stochastic),
        stochastic state a written 16-bit array besides the param."""
        if rule.param is None:
            if self.rounding in ("kahan", "master"):
                return False
        elif self.rounding != "nearest" and self.dtype("param") not in HALF_DTYPES:
            return False
        return self.state_rounding == "nearest" or any(
            a.written and a.name != "param" and self.dtype(a.name) in HALF_DTYPES
            for a in rule.arrays)

    def arrays(self, rule: Rule) -> list[Stored]:
        """Every array a typical call of ``rule`` reads or writes (not Adam's
        ``max_exp_avg_sq`` without amsgrad), the rounding's own included."""
        out = []
        for a in used(rule):
            if a.name == "param" and self.rounding == "master":
                out += [Stored("master", "float32", True, True),
                        Stored("param", self.dtype("param"), False, True)]
            else:
                out.append(Stored(a.name, self.dtype(a.name), True, a.written))
        if self.rounding == "kahan":
            out.append(Stored("comp", self.dtype("param"), True, True))
        return out

    def bytes_per_element(self, rule: Rule) -> int:
        """Bytes read plus bytes written per element by one call of ``rule``."""
        return sum(itemsize(s.dtype) * (s.read + s.written) for s in self.arrays(rule))

    def label(self, rule: Rule) -> str:
        """``'bf16/bf16/f32'``: the dtypes of ``rule``'s arrays in argument
        order (``f32>bf16`` for a float32 master written to a bfloat16
        param), then the rounding where it is not nearest."""
        cells = [f"f32>{SHORT[self.dtype(a.name)]}"
                 if a.name == "param" and self.rounding == "master" else SHORT[self.dtype(a.name)]
                 for a in used(rule)]
        modes = [self.rounding] if rule.param is not None and self.rounding in (
            "stochastic", "kahan") else []
        modes += [f"{self.state_rounding} state"] if self.state_rounding != "nearest" else []
        return " ".join(["/".join(cells), " + ".join(modes)]).strip()

    def uniform(self, rule: Rule) -> str | None:
        """The dtype of all of ``rule``'s arrays when they share one, rounded to
        nearest (the layouts torch.optim.SGD can step); None otherwise."""
        names = {self.dtype(a.name) for a in used(rule)}
        plain = self.rounding == self.state_rounding == "nearest"
        return names.pop() if len(names) == 1 and plain else None


def used(rule: Rule) -> tuple:
    """``rule``'s arrays its typical call uses (an array with a ``when`` flag
    off in ``rule.typical``, as Adam's ``max_exp_avg_sq``, is not)."""
    return tuple(a for a in rule.arrays if not a.when or rule.typical.get(a.when))


def _by_role(param: str, grad: str, buf: str, **rounding: str) -> Layout:
    return Layout((("param", param), ("grad", grad), ("buf", buf)), **rounding)


# The layouts every run reports: each dtype alone, 16-bit parameter and
# gradient with a float32 buffer, the master (ZeRO-Offload) and Kahan layouts,
# and stochastic rounding.
NAMED = (
    *(_by_role(d, d, d) for d in ("float32", "float64", *HALF_DTYPES)),
    *(_by_role(d, d, "float32") for d in HALF_DTYPES),
    _by_role("bfloat16", "bfloat16", "float32", rounding="master"),
    _by_role("bfloat16", "bfloat16", "bfloat16", rounding="kahan"),
    _by_role("bfloat16", "bfloat16", "bfloat16", rounding="stochastic"),
    _by_role("bfloat16", "bfloat16", "bfloat16", rounding="stochastic",
             state_rounding="stochastic"),
)


def layouts(rule: Rule, every: bool = False) -> list[Layout]:
    """The layouts of ``rule`` a run reports: the NAMED ones that apply, and
    with ``every`` each dtype combination the kernels are built for
    (momentum.rules.kernel_combos), a 16-bit parameter in every rounding;
    one layout per distinct label."""
    candidates = list(NAMED)
    for combo in kernel_combos(rule) if every else ():
        roles = tuple(zip((a.name for a in rule.arrays), combo))
        half = rule.param is not None and combo[rule.param] in HALF_DTYPES
        candidates += [Layout(roles, rounding)
                       for rounding in ("nearest", *(ROUNDINGS[1:] if half else ()))]
    out: dict[str, Layout] = {}
    for layout in candidates:
        if layout.applies(rule):
            out.setdefault(layout.label(rule), layout)
    return list(out.values())


def make(layout: Layout, n: int, seed: int = 0,
         rule: Rule | None = None) -> dict[str, np.ndarray]:
    """Every array of the layout (or of ``rule`` in it), by name, ``n``
    standard normal values each (rounded to its dtype; squared for a second
    moment, ``*_sq``, which Adam keeps non-negative): ``param``, ``grad``,
    ``buf`` or the rule's state arrays, and ``master`` (float32, ``param``
    its rounding) or ``comp`` (zeros) for those roundings.
    Raises ImportError for bfloat16 without ml_dtypes."""
    rng = np.random.default_rng(seed)
    names = [a.name for a in rule.arrays] if rule else [name for name, _ in layout.dtypes]
    out = {}
    for name in names:
        x = rng.standard_normal(n, dtype=np.float32)
        out[name] = (x * x if name.endswith("_sq") else x).astype(numpy_dtype(layout.dtype(name)))
    if layout.rounding == "master":
        out["master"] = rng.standard_normal(n, dtype=np.float32)
        out["param"][...] = out["master"].astype(out["param"].dtype)
    if layout.rounding == "kahan":
        out["comp"] = np.zeros(n, numpy_dtype(layout.dtype("param")))
    return out


def call(rule: Rule, layout: Layout, arrays: dict[str, np.ndarray]) -> tuple[tuple, dict]:
    """The positional arrays and storage keywords of one call of ``rule`` on ``arrays``."""
    positional = tuple(arrays.get(a.name) for a in rule.arrays)
    keywords: dict = {"state_rounding": layout.state_rounding}
    if rule.param is not None:
        keywords["rounding"] = layout.rounding
        if layout.rounding == "master":
            keywords["master"] = arrays["master"]
        if layout.rounding == "kahan":
            keywords["comp"] = arrays["comp"]
    return positional, keywords
