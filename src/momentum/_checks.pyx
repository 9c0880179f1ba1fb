# The checks every entry point shares, derived from momentum.rules: each
# raises TypeError or ValueError naming the function and the argument, and
# none writes anything.
#
# The hyperparameters are checked by read_hypers(); the arrays of one kernel
# call by check_task(), which sees each array as a Place (address, length,
# dtype code, writable, contiguous, shape) whatever holds it: numpy_place()
# makes one from a NumPy array (read straight from its C struct: typed
# memoryviews cost more than a whole small call), momentum.torch from a
# tensor.  check_task() also chooses the task's kernel.
cimport numpy as cnp
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.float cimport PyFloat_AsDouble, PyFloat_Check
from cpython.long cimport PyLong_Check
from cpython.object cimport PyObject, PyObject_IsTrue
from libc.math cimport isfinite
from libc.stddef cimport size_t
from libc.stdint cimport uintptr_t
from libc.string cimport memcmp

from momentum._dispatch cimport TABLE
from momentum._kernels cimport (
    MOMENTUM_FLOAT32, MOMENTUM_FLOAT64, MOMENTUM_NDTYPES, MOMENTUM_ROUND_KAHAN,
    MOMENTUM_ROUND_MASTER, MOMENTUM_ROUND_NEAREST, MOMENTUM_ROUND_STOCHASTIC, momentum_task)
from momentum.rules import DTYPES, RULES, ROUNDINGS, STATE_ROUNDINGS, itemsize

import numpy as np

cnp.import_array()

# Each dtype code's item size and NumPy type number (-1 for bfloat16 until
# an ml_dtypes array is first seen: NumPy gives a user dtype its number when
# it is registered, and momentum does not import ml_dtypes itself).
cdef size_t ITEMSIZE[MOMENTUM_NDTYPES]
cdef int NPY_TYPE[MOMENTUM_NDTYPES]
for _code, _name in enumerate(DTYPES):
    ITEMSIZE[_code] = itemsize(_name)
    NPY_TYPE[_code] = np.dtype(_name).num if _name in np.sctypeDict else -1
cdef str DTYPE_NAMES = ", ".join(DTYPES[:len(DTYPES) - 1]) + " or " + DTYPES[len(DTYPES) - 1]
cdef int BFLOAT16 = DTYPES.index("bfloat16")

# The rules, in the order of momentum.rules.RULES.
cdef RuleSpec SPECS[16]
# Per rule: the hyperparameters' names, and the text of each flag's
# condition by flag (for messages).
cdef list HYPER_NAMES = []
cdef list REQUIRES = []
# Per rule: its arrays' names (for the faces' messages).
ARRAY_NAMES = []

_CHECKS = {"rate": CHECK_RATE, "unit": CHECK_UNIT, "flag": CHECK_FLAG, "beta": CHECK_BETA,
           "count": CHECK_COUNT}
_OPS = {">": OP_GT, "==": OP_EQ, ">=": OP_GE}


def _build_specs():
    """Fill SPECS and the name lists from momentum.rules."""
    from momentum.rules import kernel_slots
    slots = kernel_slots()
    if len(RULES) > 16:
        raise ImportError("momentum._checks has room for 16 rules")
    for r, rule in enumerate(RULES.values()):
        names = [h.name for h in rule.hypers]
        SPECS[r].narrays = len(rule.arrays)
        SPECS[r].nhyper = len(rule.hypers)
        SPECS[r].first_slot = next(i for i, (s, _) in enumerate(slots) if s is rule)
        SPECS[r].param = -1 if rule.param is None else rule.param
        SPECS[r].step = names.index("step") if "step" in names else -1
        if all(array.when for array in rule.arrays):
            raise ImportError(f"rule {rule.name!r} needs an array it always uses")
        for i, array in enumerate(rule.arrays):
            SPECS[r].written[i] = array.written
            SPECS[r].when[i] = -1 if array.when is None else names.index(array.when)
        SPECS[r].nterms = 0
        for j, hyper in enumerate(rule.hypers):
            SPECS[r].check[j] = _CHECKS[hyper.check]
            for name, op, value in hyper.terms:
                t = SPECS[r].nterms
                if t == MAX_TERMS:
                    raise ImportError(f"rule {rule.name!r}: more than {MAX_TERMS} "
                                      f"terms in its flags' conditions")
                SPECS[r].term_flag[t] = j
                SPECS[r].term_hyper[t] = names.index(name)
                SPECS[r].term_op[t] = _OPS[op]
                SPECS[r].term_value[t] = value
                SPECS[r].nterms += 1
        HYPER_NAMES.append(tuple(names))
        ARRAY_NAMES.append(tuple(a.name for a in rule.arrays))
        REQUIRES.append({j: h.requires for j, h in enumerate(rule.hypers) if h.requires})


_build_specs()


cdef const RuleSpec* spec_of(int rule) noexcept:
    return &SPECS[rule]


# ------------------------------------------------------------ hyperparameters

cdef object COMPLEX = np.complexfloating


cdef str hyper_name(int index, int j):
    return (<tuple>HYPER_NAMES[index])[j]


cdef double real_arg(object value, int index, int j, str func) except? -1.0:
    """A hyperparameter (``j`` of rule ``index``) as a double, or TypeError
    naming it."""
    if type(value) is float:
        return <double>value
    cdef str name = hyper_name(index, j)
    # NumPy's complex scalars convert (with a ComplexWarning), dropping the
    # imaginary part: refuse them, as PyFloat_AsDouble refuses a complex.
    if not (PyFloat_Check(value) or PyLong_Check(value)) and isinstance(value, COMPLEX):
        raise TypeError(f"{func}(): '{name}' must be a real number, "
                        f"not {type(value).__name__}")
    try:
        return PyFloat_AsDouble(value)
    except TypeError:
        raise TypeError(f"{func}(): '{name}' must be a real number, "
                        f"not {type(value).__name__}") from None
    except ValueError as error:   # e.g. Decimal('sNaN'): a real, but no float
        raise ValueError(f"{func}(): '{name}' must be a real number; float() "
                         f"of it raised: {error}") from None
    except OverflowError:
        raise ValueError(f"{func}(): '{name}' must be finite, got a number "
                         f"too large for a double") from None


cdef inline bint holds(double a, int op, double b) noexcept:
    if op == OP_GT:
        return a > b
    if op == OP_EQ:
        return a == b
    return a >= b


cdef int read_hyper(int index, int j, object value, double* out, str func) except -1:
    """Check ``value`` as hyperparameter ``j`` of rule ``index`` and store it
    in ``out[j]`` as the kernels read it."""
    cdef const RuleSpec* rule = &SPECS[index]
    cdef double v
    if rule.check[j] == CHECK_FLAG:
        try:
            out[j] = 1.0 if PyObject_IsTrue(value) else 0.0
        except (TypeError, ValueError):
            # e.g. a NumPy array of several elements: name the flag
            raise TypeError(f"{func}(): '{hyper_name(index, j)}' must be a bool, "
                            f"not {type(value).__name__}") from None
        return 0
    v = real_arg(value, index, j, func)
    out[j] = v
    if rule.check[j] == CHECK_RATE:
        if not (isfinite(v) and v >= 0):
            raise ValueError(f"{func}(): '{hyper_name(index, j)}' must be finite and >= 0, "
                             f"got {v!r}")
    elif rule.check[j] == CHECK_BETA:
        if not (0 <= v < 1):
            raise ValueError(f"{func}(): '{hyper_name(index, j)}' must be in [0, 1), got {v!r}")
    elif rule.check[j] == CHECK_COUNT:
        # a whole number a double holds exactly
        if not (1 <= v <= 9007199254740992.0 and v == <double><long long>v):
            raise ValueError(f"{func}(): '{hyper_name(index, j)}' must be a whole number "
                             f">= 1, got {v!r}")
    elif not (0 <= v <= 1):
        raise ValueError(f"{func}(): '{hyper_name(index, j)}' must be in [0, 1], got {v!r}")
    return 0


cdef int check_requires(int index, const double* hyper, str func) except -1:
    """Every set flag of rule ``index`` meets its condition (after read_hyper)."""
    cdef const RuleSpec* rule = &SPECS[index]
    cdef int t, flag
    for t in range(rule.nterms):
        flag = rule.term_flag[t]
        if hyper[flag] != 0 and not holds(hyper[rule.term_hyper[t]], rule.term_op[t],
                                          rule.term_value[t]):
            raise ValueError(f"{func}(): {hyper_name(index, flag)}=True needs "
                             f"{REQUIRES[index][flag]}")
    return 0


cdef int read_hypers(const RuleSpec* rule, int index, tuple values, double* out,
                     str func) except -1:
    """read_hyper() for ``values`` (one per hyperparameter of rule ``index``,
    in the table's order), then check_requires()."""
    cdef int j
    for j in range(rule.nhyper):
        read_hyper_as(rule.check[j], index, j, values[j], out, func)
    return check_requires(index, out, func)


# ------------------------------------------------------------------ rounding

cdef str NEAREST = "nearest"


cdef int read_rounding(const RuleSpec* rule, object rounding, object state_rounding,
                       object seed, object step, object tensor, momentum_task* task,
                       str func) except -1:
    """Check and store in ``task`` how 16-bit arrays are rounded: the
    rule's param by ``rounding`` (one of momentum.rules.ROUNDINGS), its
    other written arrays by ``state_rounding`` (nearest or stochastic); the
    stochastic key ``seed``, ``step``, ``tensor`` (ints in [0, 2**64))."""
    cdef int i
    task.stochastic = 0
    task.reserved = 0
    if rounding is NEAREST and state_rounding is NEAREST:
        task.rounding = MOMENTUM_ROUND_NEAREST
    else:
        task.rounding = rounding_code(rounding, ROUNDINGS, "rounding", func)
        if task.rounding != MOMENTUM_ROUND_NEAREST and rule.param < 0:
            raise ValueError(f"{func}(): rounding={rounding!r} needs a 'param'; this rule "
                             f"has none (state_rounding rounds its state)")
        if task.rounding == MOMENTUM_ROUND_STOCHASTIC:
            task.stochastic |= 1u << rule.param
        if rounding_code(state_rounding, STATE_ROUNDINGS, "state_rounding", func):
            for i in range(rule.narrays):
                if rule.written[i] and i != rule.param:
                    task.stochastic |= 1u << i
    task.seed = key_part(seed, "seed", func)
    task.step = key_part(step, "step", func)
    task.tensor = key_part(tensor, "tensor", func)
    return 0


cdef int rounding_code(object value, tuple choices, str name, str func) except -1:
    if isinstance(value, str) and value in choices:
        return choices.index(value)
    raise ValueError(f"{func}(): '{name}' must be one of {', '.join(map(repr, choices))}, "
                     f"got {value!r}")


cdef unsigned long long key_part(object value, str name, str func) except? 0:
    if type(value) is int and 0 <= <object>value < (1 << 64):
        return <unsigned long long>value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{func}(): '{name}' must be an int, not {type(value).__name__}")
    value = value.__index__()
    if not 0 <= value < (1 << 64):
        raise ValueError(f"{func}(): '{name}' must be in [0, 2**64), got {value!r}")
    return <unsigned long long>value


cdef object pick_extra(const RuleSpec* rule, const momentum_task* task, object master,
                       object comp, str plural, str func):
    """The rounding's extra array (``comp`` for kahan, ``master`` for
    master), or None; TypeError for one given that the rounding does not
    use, or one it needs and is not given.  ``plural``: "s" where the
    arguments are sequences (foreach's ``comps``, ``masters``)."""
    if task.rounding < MOMENTUM_ROUND_KAHAN and master is None and comp is None:
        return None
    cdef str kind = ROUNDINGS[task.rounding]
    if comp is not None and task.rounding != MOMENTUM_ROUND_KAHAN:
        raise TypeError(f"{func}(): 'comp{plural}' is given but rounding is {kind!r}; "
                        f"pass rounding='kahan'")
    if master is not None and task.rounding != MOMENTUM_ROUND_MASTER:
        raise TypeError(f"{func}(): 'master{plural}' is given but rounding is {kind!r}; "
                        f"pass rounding='master'")
    if task.rounding == MOMENTUM_ROUND_KAHAN:
        if comp is None:
            raise TypeError(f"{func}(): rounding='kahan' needs 'comp{plural}' (compensation "
                            f"of the param's dtype, zeros to start)")
        return comp
    if master is None:
        raise TypeError(f"{func}(): rounding='master' needs 'master{plural}' (the "
                        f"param's float32 master copy)")
    return master


cdef tuple extra_names(const RuleSpec* rule, const momentum_task* task, tuple names,
                       object extra_name):
    """The names of a task's places, from the caller's ``names`` and the
    extra array's ``extra_name`` (see source_of)."""
    cdef tuple given = names + (extra_name,)
    return tuple([given[source_of(rule, task, i)] for i in range(rule.narrays + 1)])


# -------------------------------------------------------------------- arrays

cdef object as_array(object obj, str func, str name):
    """``obj`` as an ndarray sharing its memory, or TypeError."""
    if cnp.PyArray_Check(obj):
        return obj
    if PyObject_CheckBuffer(obj):
        return np.asarray(memoryview(obj))
    raise TypeError(f"{func}(): '{name}' must be a NumPy array or an object "
                    f"exporting a buffer, not {type(obj).__name__}")


cdef int numpy_place(object array, Place* place) except -1:
    """``place`` for the ndarray ``array`` (which the caller keeps alive)."""
    cdef cnp.ndarray a = <cnp.ndarray>array
    cdef int t = cnp.PyArray_TYPE(a), code
    place.dtype = NOT_A_DTYPE
    if cnp.PyArray_ISNOTSWAPPED(a):
        for code in range(MOMENTUM_NDTYPES):
            if t == NPY_TYPE[code]:
                place.dtype = code
        # 256: NPY_USERDEF, the first number NumPy gives a registered dtype
        if place.dtype == NOT_A_DTYPE and t >= 256 and is_bfloat16(a.dtype):
            NPY_TYPE[BFLOAT16] = t
            place.dtype = BFLOAT16
    place.address = cnp.PyArray_BYTES(a)
    place.length = <size_t>cnp.PyArray_SIZE(a)
    place.nbytes = <size_t>cnp.PyArray_NBYTES(a)
    place.writable = cnp.PyArray_ISWRITEABLE(a)
    place.contiguous = cnp.PyArray_IS_C_CONTIGUOUS(a)
    place.ndim = cnp.PyArray_NDIM(a)
    place.dims = <const Py_ssize_t*>cnp.PyArray_DIMS(a)
    place.source = <PyObject*>a
    return 0


cdef bint is_bfloat16(object dtype):
    """``dtype`` is ml_dtypes' bfloat16."""
    return (dtype.name == "bfloat16" and dtype.itemsize == 2
            and dtype.type.__module__.split(".")[0] == "ml_dtypes")


cdef str shape_of(const Place* p):
    return str(tuple((<object>p.source).shape))


cdef int check_place(const RuleSpec* rule, int i, Place* p, Place* q, bint written,
                     object names, int ref, str func) except -1:
    """Array ``i`` (``p``) against the first used one (``q``, index ``ref``)."""
    if not 0 <= p.dtype < MOMENTUM_NDTYPES:
        raise TypeError(f"{func}(): '{names[i]}' has dtype {(<object>p.source).dtype}; "
                        f"expected {DTYPE_NAMES} in native byte order")
    if (p.dtype == MOMENTUM_FLOAT64) != (q.dtype == MOMENTUM_FLOAT64):
        raise TypeError(f"{func}(): '{names[i]}' has dtype {(<object>p.source).dtype} "
                        f"but '{names[ref]}' has dtype {(<object>q.source).dtype}; float64 "
                        f"arrays are not mixed with other dtypes")
    if (p.length != q.length or p.ndim != q.ndim or (p.ndim > 0 and memcmp(
            p.dims, q.dims, p.ndim * sizeof(Py_ssize_t)))):
        raise ValueError(f"{func}(): '{names[i]}' has shape {shape_of(p)} but "
                         f"'{names[ref]}' has shape {shape_of(q)}")
    if not p.contiguous:
        raise ValueError(f"{func}(): '{names[i]}' is not C-contiguous; pass "
                         f"np.ascontiguousarray({names[i]}) and copy the result back")
    if <uintptr_t>p.address % ITEMSIZE[p.dtype]:
        raise ValueError(f"{func}(): '{names[i]}' is not aligned to its dtype")
    if written and not p.writable:
        raise ValueError(f"{func}(): '{names[i]}' is read-only but is written in place")
    return 0


cdef int check_task(const RuleSpec* rule, Place* places, momentum_task* task,
                    object names, str func) except -1:
    """Check the arrays of one kernel call and fill ``task`` with them and
    its kernel (``task.hyper`` and the rounding fields are already read).

    ``places[i]`` describes array ``i`` of the rule (ignored where the rule,
    with these hyperparameters, does not use it); with rounding kahan or
    master, ``places[narrays]`` is the extra array (comp, or the 16-bit
    parameter while ``places[param]`` is the float32 master).  ``names[i]``
    is each one's name for messages.  Checked: each dtype is one the
    kernels take, in native byte order, float64 not mixed with others; the
    arrays have one shape (or, where a Place gives no shape, one length);
    each is contiguous and aligned to its dtype, a written one is writable;
    no two share a byte; the rounding's dtypes.
    """
    cdef int i, j, ref = -1, count = rule.narrays + has_extra(rule, task)
    cdef Place* p
    cdef size_t slot = rule.first_slot, stride = 1
    for i in range(rule.narrays):
        if not uses(rule, i, task.hyper):
            task.arrays[i] = NULL
            continue
        if ref < 0:
            ref = i
        check_place(rule, i, &places[i], &places[ref], rule.written[i], names, ref, func)
        task.arrays[i] = places[i].address
    if count > rule.narrays:
        i = rule.narrays
        check_place(rule, i, &places[i], &places[ref], True, names, ref, func)
        check_rounding_dtypes(rule, places, task, names, func)
        task.arrays[i] = places[i].address
        task.extra_dtype = places[i].dtype
    for i in range(count):
        if task.arrays[i] == NULL:
            continue
        for j in range(i):
            if task.arrays[j] != NULL and apart(&places[j], &places[i]) == 0:
                raise ValueError(f"{func}(): '{names[j]}' and '{names[i]}' overlap in memory")
    for i in range(rule.narrays):
        # An unused array counts as having the first used one's dtype.
        slot += stride * <size_t>places[i if task.arrays[i] != NULL else ref].dtype
        stride *= MOMENTUM_NDTYPES
    if rule.step >= 0:
        # a rule's own step count keys its stochastic rounding
        task.step = <unsigned long long>task.hyper[rule.step]
    task.kernel = TABLE.kernels[slot]
    if task.kernel == NULL:
        raise TypeError(f"{func}(): no kernel is built for these dtypes")
    task.n = places[ref].length
    return 0


cdef int check_rounding_dtypes(const RuleSpec* rule, Place* places, momentum_task* task,
                               object names, str func) except -1:
    """rounding='kahan': the param 16-bit, comp of its dtype; 'master': the
    master float32, the parameter 16-bit."""
    cdef Place* param = &places[rule.param]
    cdef Place* extra = &places[rule.narrays]
    cdef str kind = ROUNDINGS[task.rounding]
    if task.rounding == MOMENTUM_ROUND_KAHAN:
        if not is_half(param.dtype):
            raise TypeError(f"{func}(): rounding='kahan' needs a 16-bit '{names[rule.param]}', "
                            f"not {(<object>param.source).dtype}")
        if extra.dtype != param.dtype:
            raise TypeError(f"{func}(): '{names[rule.narrays]}' has dtype "
                            f"{(<object>extra.source).dtype} but '{names[rule.param]}' has "
                            f"dtype {(<object>param.source).dtype}; rounding='kahan' needs one")
    else:
        if param.dtype != MOMENTUM_FLOAT32:
            raise TypeError(f"{func}(): rounding='master' needs a float32 "
                            f"'{names[rule.param]}', not {(<object>param.source).dtype}")
        if not is_half(extra.dtype):
            raise TypeError(f"{func}(): rounding='{kind}' needs a 16-bit "
                            f"'{names[rule.narrays]}', not {(<object>extra.source).dtype}")
    return 0


cdef inline bint apart(const Place* a, const Place* b) noexcept:
    """``a`` and ``b`` share no byte (an empty array holds none)."""
    cdef size_t a_lo = <size_t>a.address, b_lo = <size_t>b.address
    cdef size_t a_hi = a_lo + a.nbytes, b_hi = b_lo + b.nbytes
    return not (a_lo < a_hi and b_lo < b_hi and a_lo < b_hi and b_lo < a_hi)


cdef int missing_array(int index, int array, const double* hyper, str func, str name,
                       str what) except -1:
    """Raise the TypeError for array ``array`` of rule ``index`` given as
    None although the rule, with hyperparameters ``hyper``, uses it."""
    rule = list(RULES.values())[index]
    when = rule.arrays[array].when
    reason = (f"{when} is {hyper[<int>HYPER_NAMES[index].index(when)]!r}" if when
              else f"{rule.name} uses it")
    raise TypeError(f"{func}(): '{name}' is None but {reason}; pass {what}")
