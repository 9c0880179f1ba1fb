"""The rule table: what every rule is, in one place.

Each :class:`Rule` names its arrays (in argument order, with whether the
kernel writes them and the PyTorch optimizer-state key of a state buffer),
its hyperparameters (in the order the kernels read them, with defaults and
checks), what may be given per tensor, and its formula.  Everything else
derives from this table: the kernel entry points and their C table (generated
at build time by ``setup.py``, which reads this file on its own, so it imports
nothing but the standard library), the argument checks and their messages,
``foreach``, the arena's blocks, the PyTorch state layout, the benchmark's
rows and the tests' parametrisation.

To add a rule: an entry here, its loops in ``_loops.pxi`` (one ``cdef``
function per rule, named as the rule, taking one typed pointer per array,
``n`` and ``const <rule>_hyper*``), and its specification in
:mod:`momentum.reference`; optionally its vector body in ``_vector16.h``.
See CONTRIBUTING.md.
"""
from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["Array", "Hyper", "Rule", "RULES", "DTYPES", "HALF_DTYPES", "ROUNDINGS",
           "STATE_ROUNDINGS", "MAX_ARRAYS", "MAX_HYPER", "ABI_VERSION", "itemsize", "kernel_name",
           "kernel_combos", "kernel_slots", "vector16_combos", "fingerprint"]

# The storage dtypes, in the order of their codes (a dtype's code is its index).
# float64 arrays compute in double and are never mixed with the others; any
# mix of float32 and the 16-bit dtypes computes in float32, each value
# rounded once, when it is stored.
DTYPES = ("float32", "float64", "bfloat16", "float16")
HALF_DTYPES = ("bfloat16", "float16")
# How a rule's ``param`` is stored when it is 16-bit (a task's ``rounding`` is
# the index): round to nearest even; stochastic rounding; nearest with a
# Kahan compensation buffer (``comp``, the parameter's dtype); a float32
# ``master`` the rule updates, the 16-bit parameter written as its rounding.
ROUNDINGS = ("nearest", "stochastic", "kahan", "master")
# How the rule's other written 16-bit arrays (its state) are stored.
STATE_ROUNDINGS = ("nearest", "stochastic")

# Room in a task for one rule's arrays and hyperparameters (the C ABI fixes it).
MAX_ARRAYS = 6
MAX_HYPER = 12
# Bumped whenever the C task or kernel-table layout changes (momentum.h).
ABI_VERSION = 2


@dataclass(frozen=True)
class Array:
    """One array of a rule.

    ``written``: the kernel writes it (so it must be writable and may not
    overlap anything).  ``when``: the name of a hyperparameter that must be
    nonzero for the rule to use the array at all (sgd without momentum has
    no buffer); None means always used.  ``state_key``: the key of this
    buffer in a PyTorch optimizer's per-parameter state; None for the
    parameter and the gradient.
    """

    name: str
    written: bool
    when: str | None = None
    state_key: str | None = None

    @property
    def plural(self) -> str:
        """The name of the sequence ``foreach`` takes: ``params``, ``grads``, ``bufs``."""
        return self.name + "s"


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter, read by the kernels as a double.

    ``check``: ``"rate"`` (finite and >= 0), ``"unit"`` (in [0, 1]),
    ``"beta"`` (in [0, 1), as torch checks Adam's betas), ``"count"`` (a
    whole number >= 1, such as a step count) or ``"flag"`` (a bool, 1.0 or
    0.0 for the kernel).  ``default`` None means
    the argument is required.  ``requires``: for a flag, a condition on the
    other hyperparameters that must hold when the flag is set, as PyTorch
    checks it: terms ``name op number`` (op one of ``>``, ``>=``, ``==``)
    joined by ``and``.
    """

    name: str
    check: str
    default: float | bool | None = None
    requires: str | None = None
    # Whether its default and another value take different paths in the
    # kernel (weight_decay's 0 skips a term): Rule.cases tries both only then.
    branch: bool = True

    @property
    def terms(self) -> list[tuple[str, str, float]]:
        """``requires`` parsed: ``(name, op, number)`` per term; empty without one."""
        if not self.requires:
            return []
        terms = []
        for term in self.requires.split(" and "):
            name, op, value = term.split()
            if op not in _OPERATORS:
                raise ValueError(f"{self.name}: unknown operator {op!r} in {self.requires!r}")
            terms.append((name, op, float(value)))
        return terms


@dataclass(frozen=True)
class Rule:
    """One update rule: its arrays, hyperparameters and formula.

    ``per_tensor``: hyperparameters that ``foreach`` also takes as one value
    per tensor (a flag, or a count such as Adam's step).  ``elementwise``: each element's update reads only that
    element of each array (so a call may be split anywhere, and arrays laid
    end to end in an arena step as one).  ``formula``: the per-element
    update, in the reference's order of operations (docstrings quote it).
    ``vector16``: ``_vector16.h`` has the rule's hand-vectorised body for
    the common 16-bit layouts (:func:`vector16_combos`), which the AVX-512
    builds run (bfloat16 ones only with AVX512-BF16); without one they run
    the float loop through the chunked driver, as every other mix does.
    """

    name: str
    arrays: tuple[Array, ...]
    hypers: tuple[Hyper, ...]
    formula: str
    summary: str
    notes: str = ""
    per_tensor: tuple[str, ...] = ()
    elementwise: bool = True
    vector16: bool = False
    # The arguments a typical call passes: the benchmark times these.
    typical: dict[str, float] = field(default_factory=dict)

    def array(self, name: str) -> Array:
        """The array called ``name``."""
        return next(a for a in self.arrays if a.name == name)

    def hyper(self, name: str) -> Hyper:
        """The hyperparameter called ``name``."""
        return next(h for h in self.hypers if h.name == name)

    @property
    def written(self) -> tuple[str, ...]:
        """The names of the arrays the kernel writes."""
        return tuple(a.name for a in self.arrays if a.written)

    @property
    def elements_moved(self) -> int:
        """Array elements read or written per element, all arrays in use:
        every array is read, the written ones are written back."""
        return len(self.arrays) + len(self.written)

    def allows(self, hyper: Mapping[str, float | bool]) -> bool:
        """Whether ``hyper`` (every hyperparameter's value) meets every flag's
        condition: the checks refuse exactly the combinations it does not."""
        return all(not hyper[h.name] or _OPERATORS[op](float(hyper[name]), value)
                   for h in self.hypers for name, op, value in h.terms)

    def cases(self, nonzero: Mapping[str, float]) -> Iterator[dict[str, float | bool]]:
        """Every combination the checks allow of: each flag False or True, each
        optional value that is a ``branch`` its default or ``nonzero[name]``,
        every other value ``nonzero[name]``: every branch of the kernel."""
        choices = [[False, True] if h.check == "flag" else
                   [nonzero[h.name]] if h.default is None or not h.branch else
                   [h.default, nonzero[h.name]]
                   for h in self.hypers]
        for values in itertools.product(*choices):
            hyper = dict(zip((h.name for h in self.hypers), values))
            if self.allows(hyper):
                yield hyper

    @property
    def param(self) -> int | None:
        """Index of the array named ``param``, the one ``rounding`` (kahan,
        master, stochastic) applies to; None for a rule without one."""
        return next((i for i, a in enumerate(self.arrays) if a.name == "param"), None)

    @property
    def state_keys(self) -> dict[str, str]:
        """Array name -> PyTorch state key, for the state buffers."""
        return {a.name: a.state_key for a in self.arrays if a.state_key}


_OPERATORS = {">": operator.gt, ">=": operator.ge, "==": operator.eq}


_MOMENTUM_BUFFER = "momentum_buffer"

# Adam's and AdamW's arrays and hyperparameters, in the order the kernels read them.
_ADAM_ARRAYS = (Array("param", written=True),
                Array("grad", written=False),
                Array("exp_avg", written=True, state_key="exp_avg"),
                Array("exp_avg_sq", written=True, state_key="exp_avg_sq"),
                Array("max_exp_avg_sq", written=True, when="amsgrad",
                      state_key="max_exp_avg_sq"))
_ADAM_HYPERS = (Hyper("lr", "rate"),
                Hyper("beta1", "beta", 0.9, branch=False),
                Hyper("beta2", "beta", 0.999, branch=False),
                Hyper("eps", "rate", 1e-8, branch=False),
                Hyper("weight_decay", "rate", 0.0),
                Hyper("amsgrad", "flag", False),
                Hyper("maximize", "flag", False),
                Hyper("step", "count", 1, branch=False))
_ADAM_NOTES = ("``step`` is the tensor's step count after this step (1 on the first); "
               "the bias corrections are formed in double, once per call.  With "
               "``amsgrad`` False ``max_exp_avg_sq`` is not touched and may be None.  "
               "``max`` is NaN where either side is.  ")


def _adam_formula(decay: str) -> str:
    """Adam's per-element update, with ``decay`` as its weight-decay line."""
    return f"""\
bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step    # in double
g = -grad if maximize else grad
{decay}
exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
v = exp_avg_sq
if amsgrad: max_exp_avg_sq = v = max(max_exp_avg_sq, exp_avg_sq)
param = param - (lr / bias1) * (exp_avg / (sqrt(v) * (1 / sqrt(bias2)) + eps))"""

RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule(
        name="update_buffer",
        summary="Update a momentum buffer in place.",
        arrays=(Array("buf", written=True, state_key=_MOMENTUM_BUFFER),
                Array("grad", written=False)),
        hypers=(Hyper("momentum", "rate"),
                Hyper("dampening", "unit", 0.0)),
        formula="buf = momentum * buf + (1 - dampening) * grad",
        notes="The EMA form is ``dampening=momentum``.",
        typical={"momentum": 0.9},
        vector16=True,
    ),
    Rule(
        name="sgd",
        summary="One torch.optim.SGD step for one tensor, in place.",
        arrays=(Array("param", written=True),
                Array("grad", written=False),
                Array("buf", written=True, when="momentum", state_key=_MOMENTUM_BUFFER)),
        hypers=(Hyper("lr", "rate"),
                Hyper("momentum", "rate", 0.0),
                Hyper("dampening", "unit", 0.0),
                Hyper("weight_decay", "rate", 0.0),
                Hyper("nesterov", "flag", False,
                      requires="momentum > 0 and dampening == 0"),
                Hyper("maximize", "flag", False),
                Hyper("first_step", "flag", False)),
        per_tensor=("first_step",),
        notes="With ``momentum == 0`` ``buf`` is not touched and may be None. "
              "``first_step=True`` starts the buffer as the gradient, as "
              "PyTorch's first step does.",
        formula="""\
g = -grad if maximize else grad
if weight_decay != 0: g = g + weight_decay * param
if momentum != 0:
    buf = g if first_step else momentum * buf + (1 - dampening) * g
    g = g + momentum * buf if nesterov else buf
param = param - lr * g""",
        typical={"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        vector16=True,
    ),
    Rule(
        name="heavy_ball",
        summary="One heavy-ball step for one tensor, the step size inside the buffer.",
        arrays=(Array("param", written=True),
                Array("grad", written=False),
                Array("buf", written=True, state_key=_MOMENTUM_BUFFER)),
        hypers=(Hyper("lr", "rate"),
                Hyper("momentum", "rate"),
                Hyper("weight_decay", "rate", 0.0),
                Hyper("nesterov", "flag", False, requires="momentum > 0"),
                Hyper("maximize", "flag", False)),
        formula="""\
g = -grad if maximize else grad
if weight_decay != 0: g = g + weight_decay * param
buf = momentum * buf + lr * g
param = param - (momentum * buf + lr * g) if nesterov else param - buf""",
        notes="Keras's ``velocity`` is ``-buf``.",
        typical={"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        vector16=True,
    ),

    Rule(
        name="adam",
        summary="One torch.optim.Adam step for one tensor, in place.",
        arrays=_ADAM_ARRAYS,
        hypers=_ADAM_HYPERS,
        per_tensor=("step",),
        formula=_adam_formula("if weight_decay != 0: g = g + weight_decay * param"),
        notes=_ADAM_NOTES + "Weight decay is L2: added to the gradient.",
        typical={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "weight_decay": 1e-2, "step": 10},
        vector16=True,
    ),
    Rule(
        name="adamw",
        summary="One torch.optim.AdamW step for one tensor, in place.",
        arrays=_ADAM_ARRAYS,
        hypers=_ADAM_HYPERS,
        per_tensor=("step",),
        formula=_adam_formula("if weight_decay != 0: param = param * (1 - lr * weight_decay)"),
        notes=_ADAM_NOTES + "Weight decay is decoupled: the parameter shrinks first.",
        typical={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "weight_decay": 1e-2, "step": 10},
        vector16=True,
    ),
    Rule(
        name="lion",
        summary="One Lion step (Chen et al. 2023) for one tensor, in place.",
        arrays=(Array("param", written=True),
                Array("grad", written=False),
                Array("exp_avg", written=True, state_key="exp_avg")),
        hypers=(Hyper("lr", "rate"),
                Hyper("beta1", "unit", 0.9, branch=False),
                Hyper("beta2", "unit", 0.99, branch=False),
                Hyper("weight_decay", "rate", 0.0),
                Hyper("maximize", "flag", False)),
        formula="""\
g = -grad if maximize else grad
c = beta1 * exp_avg + (1 - beta1) * g
if weight_decay != 0: param = param * (1 - lr * weight_decay)
param = param - lr * sign(c)
exp_avg = beta2 * exp_avg + (1 - beta2) * g""",
        notes="``sign(0) = 0`` as in the paper and lion-pytorch (DeepSpeed's CPU Lion "
              "steps by ``lr`` where ``c == 0``); ``sign(NaN)`` is NaN.",
        typical={"lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 1e-2},
        vector16=True,
    ),
)}


def itemsize(dtype: str) -> int:
    """Bytes per element of a storage dtype: ``"bfloat16"`` -> 2."""
    return int(dtype.removeprefix("b").removeprefix("float")) // 8


def kernel_combos(rule: Rule) -> list[tuple[str, ...]]:
    """The storage dtypes the kernels are built for, one per array of
    ``rule``: every array float64, or each array independently float32 or
    one of the 16-bit dtypes."""
    single = [d for d in DTYPES if d != "float64"]
    return [("float64",) * len(rule.arrays)] + list(
        itertools.product(single, repeat=len(rule.arrays)))


def vector16_combos(rule: Rule) -> list[tuple[str, ...]]:
    """The dtype combinations a ``vector16`` rule's body in ``_vector16.h``
    runs (the rest run through the chunked driver): for each 16-bit dtype h,
    every array h; the param and grad h with float32 state; and a float32
    param and state with an h grad (ZeRO-Offload's, whose master rounding
    writes the 16-bit copy in the same pass).  Each also with its optional
    arrays (``when``) of the first array's dtype: the slot of a call that
    leaves them out (the checks count an unused array as the first used
    one).  Empty without ``vector16``."""
    if not rule.vector16:
        return []
    combos: list[tuple[str, ...]] = []
    for half in HALF_DTYPES:
        for param, grad, state in ((half, half, half), (half, half, "float32"),
                                   ("float32", half, "float32")):
            combo = tuple(param if a.name == "param" else grad if a.name == "grad" else state
                          for a in rule.arrays)
            unused = tuple(combo[0] if a.when else d for a, d in zip(rule.arrays, combo))
            for c in (combo, unused):
                if c not in combos:
                    combos.append(c)
    return combos


def kernel_name(rule: Rule, dtypes: tuple[str, ...]) -> str:
    """The name of a kernel in the C table: ``"sgd:float32,float32,float32"``."""
    return f"{rule.name}:{','.join(dtypes)}"


def kernel_slots() -> list[tuple[Rule, tuple[str, ...]]]:
    """Every slot of the kernel table, in order: for each rule, one slot per
    combination of array dtypes (dtype code ``c_i`` of array ``i`` gives
    slot ``first + sum(c_i * len(DTYPES) ** i)``), so that a caller finds a
    kernel by arithmetic.  Combinations not built stay empty (NULL)."""
    slots = []
    for rule in RULES.values():
        n = len(rule.arrays)
        for index in range(len(DTYPES) ** n):
            slots.append((rule, tuple(DTYPES[index // len(DTYPES) ** i % len(DTYPES)]
                                      for i in range(n))))
    return slots


def fingerprint() -> str:
    """A digest of everything the build derives from this table (the rules,
    the dtypes, the room in a task): a build made from another table refuses
    to import (momentum._dispatch compares it with the one built in)."""
    text = repr((ABI_VERSION, MAX_ARRAYS, MAX_HYPER, DTYPES, ROUNDINGS, STATE_ROUNDINGS,
                 list(RULES.values()),
                 [(r.name, d) for r, d in kernel_slots()], [kernel_combos(r) for r in RULES.values()]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
