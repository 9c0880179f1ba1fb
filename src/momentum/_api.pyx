# The single-array functions: one kernel call, checked before the first
# write, run with the GIL released when the array is big enough for that to
# pay.  Each function (generated from momentum.rules into _api_faces.pxi)
# reads its hyperparameters with read_hyper() into a task on the stack and
# hands its arrays to run_one(): no tuple is made on the way.
#
# For small arrays this layer is the whole cost of a call, so the task is
# built on the stack and the success path calls no Python code.
cimport numpy as cnp

from cpython.object cimport PyObject

from momentum._checks cimport (
    CHECK_BETA, CHECK_COUNT, CHECK_FLAG, CHECK_RATE, CHECK_UNIT, MAX_ARRAYS, Place, RuleSpec, as_array,
    check_requires, check_task, extra_names, missing_array, numpy_place, pick_extra,
    read_hyper_as, read_rounding, source_of, spec_of, uses)
from momentum._kernels cimport momentum_task
from momentum._schedule cimport run_checked
from momentum import _checks

cnp.import_array()

cdef tuple ARRAY_NAMES = tuple(_checks.ARRAY_NAMES)
cdef str NEAREST = "nearest"   # a rule without a param: its rounding


cdef int run_one(int index, str func, PyObject** arrays, momentum_task* task,
                 object master, object comp) except -1:
    """Check and run rule ``index`` on ``arrays`` (one per array of the rule,
    in the table's order, borrowed), ``task.hyper`` read and checked by
    read_hyper() one by one, its rounding by read_rounding(); ``master`` and
    ``comp`` are the arrays of rounding 'master' and 'kahan'."""
    cdef const RuleSpec* rule = spec_of(index)
    cdef Place places[MAX_ARRAYS]
    cdef list held = None   # arrays made here from other buffers
    cdef tuple names = <tuple>ARRAY_NAMES[index]
    cdef int i, k
    check_requires(index, task.hyper, func)
    extra = pick_extra(rule, task, master, comp, "", func)
    if extra is not None:
        names = extra_names(rule, task, names, "master" if master is not None else "comp")
    for i in range(rule.narrays + (extra is not None)):
        if i < rule.narrays and not uses(rule, i, task.hyper):
            continue
        k = source_of(rule, task, i)
        obj = <object>arrays[k] if k < rule.narrays else extra
        if obj is None:
            missing_array(index, k, task.hyper, func, names[i], "an array")
        if not cnp.PyArray_Check(obj):
            obj = as_array(obj, func, names[i])
            if held is None:
                held = []
            held.append(obj)
        numpy_place(obj, &places[i])
    check_task(rule, places, task, names, func)
    task.offset = 0
    run_checked(task, 1, task.n)
    return 0


include "_api_faces.pxi"
