# The rules over sequences of arrays: every triple is checked (with the
# checks of momentum._checks), then the arrays of different triples are shown
# not to overlap, and only then is the whole batch run as ONE call to
# run_checked, with the GIL released once.
#
# What a tensor costs here is the point of the module, so the success path
# calls no Python code per tensor: the sequences are taken as tuples (a list
# is copied, pointers only), each triple becomes a Task in one malloc'd
# array, and the argument names that carry an index ('params[3]') are
# formatted only after a check has failed, by running that triple's checks
# again with those names.
cimport numpy as cnp
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.list cimport PyList_AsTuple
from cpython.sequence cimport (
    PySequence_Check, PySequence_Fast_GET_ITEM,
    PySequence_Fast_GET_SIZE)
from libc.stddef cimport size_t

from momentum._checks cimport (
    as_array, check_buf, check_disjoint, check_pair, heavy_ball_hyperparameters,
    sgd_hyperparameters, update_buffer_hyperparameters)
from momentum._overlap cimport (
    ROLE_BUFS, ROLE_GRADS, ROLE_PARAMS, Span, find_overlap, set_span)
from momentum._schedule cimport (
    Task, RULE_SGD, RULE_HEAVY_BALL, RULE_UPDATE_BUFFER, run_checked)

from collections.abc import Mapping

import numpy as np

cnp.import_array()

__all__ = ["update_buffer", "sgd", "heavy_ball", "sgd_groups"]

# The name of each role (_overlap's ROLE_* labels).
cdef tuple ROLE_NAMES = ("params", "grads", "bufs")

cdef struct Batch:
    Task* tasks
    Span* spans         # `count` filled, room for 3 * n; then scratch
    Span* scratch       # room for 3 * n, for sorting
    Py_ssize_t count
    size_t total
    Py_ssize_t* starts  # triple index where each group starts, and the end
    bint grouped        # name arrays 'groups[k].params[j]' (sgd_groups)


# ---------------------------------------------------------------- sequences

cdef tuple as_items(object obj, str func, str name):
    """A sequence of arrays as a tuple, or TypeError.

    A list is copied (a pointer copy): Python code that runs during the
    checks (a buffer exporter, a flag's ``__bool__``) may change the caller's
    list, never ours.  An array (or any buffer) is refused: it is one tensor,
    not a sequence.
    """
    if type(obj) is tuple:
        return <tuple>obj
    if type(obj) is list:
        return PyList_AsTuple(obj)
    if (isinstance(obj, str) or PyObject_CheckBuffer(obj)
            or not PySequence_Check(obj)):
        raise TypeError(f"{func}(): '{name}' must be a sequence (list or "
                        f"tuple) of {'mappings' if name == 'groups' else 'arrays'}, "
                        f"not {type(obj).__name__}")
    return tuple(obj)


cdef int check_length(object seq, str name, Py_ssize_t n, str ref_name,
                      str func) except -1:
    if PySequence_Fast_GET_SIZE(seq) != n:
        raise ValueError(f"{func}(): '{name}' has {PySequence_Fast_GET_SIZE(seq)} "
                         f"items but '{ref_name}' has {n}")
    return 0


cdef inline bint is_flag(object x):
    return type(x) is bool or isinstance(x, np.bool_)


cdef tuple first_step_flags(object first_step, Py_ssize_t n, str ref_name,
                            str func):
    """``first_step`` as a tuple of one bool per tensor, or None if it is
    one bool.  Every item is checked here, so that converting one later runs
    no Python code and cannot fail."""
    if is_flag(first_step):
        return None
    if (isinstance(first_step, (str, bytes)) or not PySequence_Check(first_step)
            or (cnp.PyArray_Check(first_step) and cnp.PyArray_NDIM(first_step) == 0)):
        raise TypeError(f"{func}(): 'first_step' must be a bool or a sequence "
                        f"of bools, not {type(first_step).__name__}")
    cdef tuple flags = tuple(first_step)
    check_length(flags, "first_step", n, ref_name, func)
    cdef Py_ssize_t i
    for i in range(n):
        if not is_flag(flags[i]):
            raise TypeError(f"{func}(): 'first_step[{i}]' must be a bool, not "
                            f"{type(flags[i]).__name__}")
    return flags


cdef inline object item(object seq, Py_ssize_t i):
    return <object>PySequence_Fast_GET_ITEM(seq, i)


# ------------------------------------------------------------------ checks

cdef inline void add_span(Batch* b, cnp.ndarray a, size_t nbytes, int role,
                          Py_ssize_t i, bint written) noexcept:
    """Record the ``nbytes`` of ``a`` unless there are none, and hold ``a``.

    Holding it keeps alive an array made here from another buffer, and any
    array the caller's list drops while the batch runs without the GIL.
    """
    if nbytes == 0:
        return
    set_span(&b.spans[b.count], <size_t>cnp.PyArray_BYTES(a), nbytes, <PyObject*>a,
             i, role, written)
    Py_INCREF(a)
    b.count += 1


cdef int check_triple(Batch* b, Py_ssize_t i, object param, object grad,
                      object buf, str func, bint named) except -1:
    """Check triple ``i`` as the single-array function would, fill its task.

    The caller has set the task's rule and hyperparameters.  ``named`` gives
    the arrays their indexed names; it is only set to word an error.
    """
    cdef str pn = "param", gn = "grad", bn = "buf"
    if named:
        pn, gn, bn = (array_name(b, ROLE_PARAMS, i), array_name(b, ROLE_GRADS, i),
                      array_name(b, ROLE_BUFS, i))
    cdef Task* t = &b.tasks[i]
    cdef cnp.ndarray p = None, w
    cdef cnp.ndarray g = as_array(grad, func, gn)
    cdef cnp.ndarray bf = None
    cdef bint uses_buf = t.rule != RULE_SGD or t.sgd.momentum != 0
    if t.rule == RULE_UPDATE_BUFFER:
        bf = as_array(buf, func, bn)
        check_pair(bf, bn, g, gn, func, &t.dtype)
        w = bf
    else:
        p = as_array(param, func, pn)
        check_pair(p, pn, g, gn, func, &t.dtype)
        if buf is not None:
            bf = as_array(buf, func, bn)
            check_buf(bf, bn, p, pn, g, gn, uses_buf, func)
        elif uses_buf:
            raise TypeError(f"{func}(): '{bn}' is None but the rule uses a "
                            f"momentum buffer; pass a buffer array")
        w = p
    # Checked: the arrays of a triple share one dtype and shape.
    cdef size_t nbytes = <size_t>cnp.PyArray_NBYTES(w)
    if p is not None:
        add_span(b, p, nbytes, ROLE_PARAMS, i, True)
    t.param = NULL if p is None else cnp.PyArray_BYTES(p)
    t.grad = cnp.PyArray_BYTES(g)
    t.buf = cnp.PyArray_BYTES(bf) if uses_buf else NULL
    t.n = nbytes // <size_t>cnp.PyArray_ITEMSIZE(w)
    t.offset = b.total
    b.total += t.n
    add_span(b, g, nbytes, ROLE_GRADS, i, False)
    if uses_buf:
        add_span(b, bf, nbytes, ROLE_BUFS, i, True)
    return 0


cdef str array_name(const Batch* b, int role, Py_ssize_t i):
    """The name of the ``role`` array of triple ``i`` of the batch:
    ``params[3]``, or with several groups ``groups[1].params[0]``."""
    if not b.grouped:
        return f"{ROLE_NAMES[role]}[{i}]"
    cdef Py_ssize_t k = 0
    while b.starts[k + 1] <= i:
        k += 1
    return f"groups[{k}].{ROLE_NAMES[role]}[{i - b.starts[k]}]"


cdef str span_name(const Batch* b, const Span* s):
    return array_name(b, s.role, s.index)


cdef int overlap_error(const Batch* b, const Span* s, const Span* t,
                       str func) except -1:
    """Raise check_disjoint's error for two overlapping spans, first index first."""
    if t.index < s.index:
        s, t = t, s
    return check_disjoint(<cnp.ndarray>s.array, span_name(b, s),
                          <cnp.ndarray>t.array, span_name(b, t), func)


cdef int check_apart(Batch* b, str func) except -1:
    """No written array overlaps any array of another triple (else ValueError)."""
    cdef const Span* s
    cdef const Span* t
    if find_overlap(b.spans, b.scratch, b.count, &s, &t):
        overlap_error(b, s, t, func)
    return 0


# -------------------------------------------------------------------- batch

cdef tuple prepare_group(Task* template, object params, object grads,
                         object bufs, object first_step, str func):
    """One group's sequences as ``(params, grads, bufs, first_steps)`` tuples
    of one length (``params`` None for update_buffer; ``bufs`` None when the
    rule reads no buffer and none was given; ``first_steps`` None when
    ``first_step`` is one flag, then set in ``template``)."""
    cdef tuple ps = None, bs = None
    cdef str ref = "grads"
    cdef tuple gs = as_items(grads, func, "grads")
    cdef Py_ssize_t n = len(gs)
    if params is not None:
        ref = "params"
        ps = as_items(params, func, "params")
        n = len(ps)
        check_length(gs, "grads", n, ref, func)
    if bufs is not None:
        bs = as_items(bufs, func, "bufs")
        check_length(bs, "bufs", n, ref, func)
    cdef tuple firsts = first_step_flags(first_step, n, ref, func)
    if firsts is None:
        template.sgd.first_step = first_step
    return ps, gs, bs, firsts


cdef int run_batch(const Task* templates, list groups, bint grouped,
                   str func) except -1:
    """Check every triple of every group, then run them all as one batch;
    nothing is written on error.

    ``groups[k]`` is what prepare_group made with ``templates[k]``, which
    holds that group's checked rule and hyperparameters.
    """
    cdef Py_ssize_t ngroups = len(groups), k, j, i = 0, n
    cdef Batch b
    b.total = 0
    b.count = 0
    b.grouped = grouped
    b.tasks = NULL
    b.spans = NULL
    b.starts = <Py_ssize_t*>PyMem_Malloc((ngroups + 1) * sizeof(Py_ssize_t))
    cdef tuple ps, gs, bs, firsts
    cdef object param = None, buf = None
    try:
        if b.starts == NULL:
            raise MemoryError()
        b.starts[0] = 0
        for k in range(ngroups):
            b.starts[k + 1] = b.starts[k] + len(<tuple>(<tuple>groups[k])[1])
        n = b.starts[ngroups]
        b.tasks = <Task*>PyMem_Malloc(max(n, 1) * sizeof(Task))
        b.spans = <Span*>PyMem_Malloc(max(6 * n, 1) * sizeof(Span))
        if b.tasks == NULL or b.spans == NULL:
            raise MemoryError()
        b.scratch = b.spans + 3 * n
        for k in range(ngroups):
            ps, gs, bs, firsts = groups[k]
            try:
                for j in range(len(gs)):
                    i = b.starts[k] + j
                    b.tasks[i] = templates[k]
                    if firsts is not None:
                        b.tasks[i].sgd.first_step = item(firsts, j)
                    param = None if ps is None else item(ps, j)
                    buf = None if bs is None else item(bs, j)
                    check_triple(&b, i, param, item(gs, j), buf, func, False)
            except (TypeError, ValueError):
                # Word the error with indexed names: the same checks fail again.
                check_triple(&b, i, param, item(gs, j), buf, func, True)
                raise
        check_apart(&b, func)
        run_checked(b.tasks, n, b.total)
    finally:
        for i in range(b.count):
            Py_DECREF(<object>b.spans[i].array)
        PyMem_Free(b.tasks)
        PyMem_Free(b.spans)
        PyMem_Free(b.starts)
    return 0


cdef int run_group(Task* template, object params, object grads, object bufs,
                   object first_step, str func) except -1:
    """run_batch for one group."""
    return run_batch(template, [prepare_group(template, params, grads, bufs,
                                              first_step, func)], False, func)


# --------------------------------------------------------------- the rules

def update_buffer(bufs, grads, *, momentum, dampening=0.0):
    """:func:`momentum.update_buffer` for every pair, in one call.

    ``bufs[i] = momentum * bufs[i] + (1 - dampening) * grads[i]``

    ``bufs`` and ``grads`` are sequences of equal length; each pair has one
    dtype (float32 or float64) and shape, pairs may differ.  Every argument is
    checked before any array is written; a written array may not overlap an
    array of another pair.  Raises TypeError or ValueError, writing nothing.
    """
    cdef str func = "foreach.update_buffer"
    cdef Task t
    update_buffer_hyperparameters(&t.sgd, momentum, dampening, func)
    t.rule = RULE_UPDATE_BUFFER
    run_group(&t, None, grads, as_items(bufs, func, "bufs"), False, func)


def sgd(params, grads, bufs, *, lr, momentum=0.0, dampening=0.0,
        weight_decay=0.0, bint nesterov=False, bint maximize=False,
        first_step=False):
    """:func:`momentum.sgd` (``torch.optim.SGD``'s step) for every triple.

    For each ``i``, with ``param, grad, buf = params[i], grads[i], bufs[i]``::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        if momentum != 0:
            buf = g if first_step[i] else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        param = param - lr * g

    ``first_step`` is one bool or a sequence of one bool per tensor.  With
    ``momentum == 0`` ``bufs`` may be None, or hold None items.  Every
    argument is checked before any array is written; a written array may not
    overlap an array of another triple.  Raises TypeError or ValueError,
    writing nothing.
    """
    cdef str func = "foreach.sgd"
    cdef Task t
    sgd_hyperparameters(&t.sgd, lr, momentum, dampening, weight_decay,
                        nesterov, maximize, False, func)
    t.rule = RULE_SGD
    if bufs is None and t.sgd.momentum != 0:
        raise TypeError(f"{func}(): 'bufs' is None but momentum is "
                        f"{t.sgd.momentum!r}; pass a sequence of buffers")
    run_group(&t, as_items(params, func, "params"), grads, bufs, first_step, func)


def heavy_ball(params, grads, bufs, *, lr, momentum, weight_decay=0.0,
               bint nesterov=False, bint maximize=False):
    """:func:`momentum.heavy_ball` for every triple, in one call.

    For each ``i``, with ``param, grad, buf = params[i], grads[i], bufs[i]``::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        buf = momentum * buf + lr * g
        param = param - (momentum * buf + lr * g) if nesterov else param - buf

    Every argument is checked before any array is written; a written array
    may not overlap an array of another triple.  Raises TypeError or
    ValueError, writing nothing.
    """
    cdef str func = "foreach.heavy_ball"
    cdef Task t
    heavy_ball_hyperparameters(&t.heavy_ball, lr, momentum, weight_decay,
                               nesterov, maximize, func)
    t.rule = RULE_HEAVY_BALL
    if bufs is None:
        raise TypeError(f"{func}(): 'bufs' must be a sequence of arrays, "
                        f"not None")
    run_group(&t, as_items(params, func, "params"), grads, bufs, False, func)


_GROUP_KEYS = frozenset({"params", "grads", "bufs", "first_step", "lr", "momentum",
                         "dampening", "weight_decay", "nesterov", "maximize"})


def sgd_groups(groups):
    """:func:`sgd` for several groups of triples, each with its own
    hyperparameters (an optimizer's param groups), in one call.

    Each group is a mapping with ``params``, ``grads``, ``bufs`` (may be
    absent or None when ``momentum`` is 0) and :func:`sgd`'s keyword
    arguments (``lr`` required, ``first_step`` one bool or one per tensor).
    Every triple of every group is checked, and no written array may overlap
    an array of another triple of any group, before any array is written;
    then all groups run as one batch.  Arrays are named like
    ``'groups[1].params[0]'``.  Raises TypeError or ValueError, writing
    nothing.
    """
    cdef str func = "foreach.sgd_groups"
    cdef tuple items = as_items(groups, func, "groups")
    cdef Py_ssize_t k, ngroups = len(items)
    cdef Task* templates = <Task*>PyMem_Malloc(max(ngroups, 1) * sizeof(Task))
    if templates == NULL:
        raise MemoryError()
    cdef list prepared = []
    try:
        for k in range(ngroups):
            prepared.append(prepare_sgd_group(&templates[k], items[k], k, func))
        run_batch(templates, prepared, True, func)
    finally:
        PyMem_Free(templates)


cdef tuple prepare_sgd_group(Task* template, object group, Py_ssize_t k, str func):
    """Check group ``k``'s hyperparameters and sequences into ``template``."""
    if not isinstance(group, Mapping):
        raise TypeError(f"{func}(): 'groups[{k}]' must be a mapping, not "
                        f"{type(group).__name__}")
    unknown = group.keys() - _GROUP_KEYS
    if unknown:
        raise TypeError(f"{func}(): 'groups[{k}]' has unknown keys {sorted(unknown)}")
    try:
        sgd_hyperparameters(&template.sgd, group["lr"], group.get("momentum", 0.0),
                            group.get("dampening", 0.0), group.get("weight_decay", 0.0),
                            group.get("nesterov", False), group.get("maximize", False),
                            False, func)
        template.rule = RULE_SGD
        bufs = group.get("bufs")
        if bufs is None and template.sgd.momentum != 0:
            raise TypeError(f"{func}(): 'bufs' is None but momentum is "
                            f"{template.sgd.momentum!r}; pass a sequence of buffers")
        return prepare_group(template, as_items(group["params"], func, "params"),
                             group["grads"], bufs,
                             group.get("first_step", False), func)
    except KeyError as e:
        raise TypeError(f"{func}(): 'groups[{k}]' has no {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise type(e)(f"{e} (in groups[{k}])") from None
