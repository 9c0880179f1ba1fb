# The one builder of kernel batches; see _batch.pyx.
from momentum._checks cimport Place, RuleSpec
from momentum._kernels cimport momentum_task
from momentum._overlap cimport Span

cdef class Batch:
    cdef momentum_task* tasks
    cdef Span* spans        # room for MAX_ARRAYS per task, then as much scratch
    cdef Py_ssize_t ntasks, room, nspans
    cdef size_t total
    cdef list held          # objects that must outlive the run, or None

    cdef momentum_task* next(self) except NULL
    cdef int add(self, const RuleSpec* rule, Place* places, object names,
                 str func) except -1
    cdef bint overlap(self, Py_ssize_t* pair) except -1
    cpdef int run(self) except -1
