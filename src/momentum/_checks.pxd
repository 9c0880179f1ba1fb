# The checks every entry point shares; see _checks.pyx.
from cpython.object cimport PyObject
from libc.stddef cimport size_t

from momentum._kernels cimport (
    MOMENTUM_MAX_ARRAYS as MAX_ARRAYS, MOMENTUM_MAX_HYPER as MAX_HYPER, momentum_task)

cdef enum:
    NOT_A_DTYPE = -1    # Place.dtype of an array no kernel takes

# One rule of momentum.rules, as the checks read it.
cdef struct RuleSpec:
    int narrays
    bint written[MAX_ARRAYS]
    int when[MAX_ARRAYS]        # hyperparameter that must be nonzero, or -1
    int nhyper
    int check[MAX_HYPER]        # CHECK_RATE, CHECK_UNIT, CHECK_FLAG
    int first_slot              # in the kernel table

cdef enum:
    CHECK_RATE
    CHECK_UNIT
    CHECK_FLAG

# What the checks need to know of one array, from whatever holds it.
cdef struct Place:
    char* address
    size_t length           # elements
    int dtype               # the dtype's code in momentum.rules.DTYPES, or NOT_A_DTYPE
    bint writable
    bint contiguous         # its elements lie densely in the order the others' do
    int ndim                # -1: the shape is not compared, only the length
    const Py_ssize_t* dims
    PyObject* source        # the array object, to word messages

cdef const RuleSpec* spec_of(int rule) noexcept
cdef int read_hyper(int index, int j, object value, double* out, str func) except -1
cdef int check_requires(int index, const double* hyper, str func) except -1
cdef int read_hypers(const RuleSpec* rule, int index, tuple values, double* out,
                     str func) except -1
cdef bint uses(const RuleSpec* rule, int array, const double* hyper) noexcept
cdef int numpy_place(object array, Place* place) except -1
cdef object as_array(object obj, str func, str name)
cdef int missing_array(int index, int array, const double* hyper, str func, str name,
                       str what) except -1
cdef int check_task(const RuleSpec* rule, Place* places, momentum_task* task,
                    object names, str func) except -1
cdef size_t nbytes(const Place* place) noexcept
