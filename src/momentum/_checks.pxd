# The checks every entry point shares; see _checks.pyx.
from cpython.object cimport PyObject
from libc.stddef cimport size_t

from momentum._kernels cimport (
    MOMENTUM_BFLOAT16, MOMENTUM_FLOAT16, MOMENTUM_MAX_ARRAYS as MAX_ARRAYS,
    MOMENTUM_MAX_HYPER as MAX_HYPER, MOMENTUM_ROUND_KAHAN, MOMENTUM_ROUND_MASTER,
    momentum_task)

cdef enum:
    NOT_A_DTYPE = -1    # Place.dtype of an array no kernel takes
    MAX_TERMS = 16      # terms of flag conditions, per rule

# One rule of momentum.rules, as the checks read it.
cdef struct RuleSpec:
    int narrays
    bint written[MAX_ARRAYS]
    int when[MAX_ARRAYS]        # hyperparameter that must be nonzero, or -1
    int nhyper
    int check[MAX_HYPER]        # CHECK_RATE, CHECK_UNIT, CHECK_BETA, CHECK_COUNT, CHECK_FLAG
    int first_slot              # in the kernel table
    int param                   # the array rounding applies to, or -1
    int step                    # the hyperparameter 'step' (the stochastic key's), or -1
    # The terms of the flags' conditions: when hyper[term_flag] is set,
    # hyper[term_hyper] <term_op> term_value must hold.
    int nterms
    int term_flag[MAX_TERMS]
    int term_hyper[MAX_TERMS]
    int term_op[MAX_TERMS]      # OP_GT, OP_EQ, OP_GE
    double term_value[MAX_TERMS]

cdef enum:
    CHECK_RATE
    CHECK_UNIT
    CHECK_FLAG
    CHECK_BETA
    CHECK_COUNT

cdef enum:
    OP_GT
    OP_EQ
    OP_GE

# What the checks need to know of one array, from whatever holds it.
cdef struct Place:
    char* address
    size_t length           # elements
    size_t nbytes           # bytes (length times the dtype's size)
    int dtype               # the dtype's code in momentum.rules.DTYPES, or NOT_A_DTYPE
    bint writable
    bint contiguous         # its elements lie densely in the order the others' do
    int ndim                # -1: the shape is not compared, only the length
    const Py_ssize_t* dims
    PyObject* source        # the array object, to word messages

cdef const RuleSpec* spec_of(int rule) noexcept
cdef int read_hyper(int index, int j, object value, double* out, str func) except -1


cdef inline int read_hyper_as(int check, int index, int j, object value, double* out,
                              str func) except -1:
    """read_hyper() for a hyperparameter known to be checked as ``check``:
    a plain float in range or a bool is stored here, anything else (and
    every error) goes through read_hyper()."""
    cdef double v
    if check == CHECK_FLAG:
        if value is True or value is False:
            out[j] = 1.0 if value is True else 0.0
            return 0
    elif type(value) is float and (check == CHECK_RATE or check == CHECK_UNIT):
        v = <double>value
        if (0 <= v <= 1) if check == CHECK_UNIT else (v >= 0 and v <= 1.7976931348623157e308):
            out[j] = v
            return 0
    return read_hyper(index, j, value, out, func)
cdef int check_requires(int index, const double* hyper, str func) except -1
cdef int read_hypers(const RuleSpec* rule, int index, tuple values, double* out,
                     str func) except -1
cdef inline bint uses(const RuleSpec* rule, int array, const double* hyper) noexcept:
    """The rule, with these hyperparameters, reads or writes ``array``."""
    return rule.when[array] < 0 or hyper[rule.when[array]] != 0
cdef int read_rounding(const RuleSpec* rule, object rounding, object state_rounding,
                       object seed, object step, object tensor, momentum_task* task,
                       str func) except -1
cdef object pick_extra(const RuleSpec* rule, const momentum_task* task, object master,
                       object comp, str plural, str func)
cdef tuple extra_names(const RuleSpec* rule, const momentum_task* task, tuple names,
                       object extra_name)
cdef inline bint has_extra(const RuleSpec* rule, const momentum_task* task) noexcept:
    """The task has an array beyond the rule's (kahan's comp, master's copy)."""
    return task.rounding >= MOMENTUM_ROUND_KAHAN
cdef inline int source_of(const RuleSpec* rule, const momentum_task* task, int i) noexcept:
    """Which of the caller's arrays (the rule's, then the rounding's extra at
    index narrays) goes to place ``i`` of a task: with rounding 'master' the
    rule's param place takes the master and the extra place the param."""
    if task.rounding == MOMENTUM_ROUND_MASTER:
        if i == rule.param:
            return rule.narrays
        if i == rule.narrays:
            return rule.param
    return i
cdef unsigned long long key_part(object value, str name, str func) except? 0
cdef inline bint is_half(int dtype) noexcept:
    return dtype == MOMENTUM_BFLOAT16 or dtype == MOMENTUM_FLOAT16
cdef int numpy_place(object array, Place* place) except -1
cdef object as_array(object obj, str func, str name)
cdef int missing_array(int index, int array, const double* hyper, str func, str name,
                       str what) except -1
cdef int check_task(const RuleSpec* rule, Place* places, momentum_task* task,
                    object names, str func) except -1
