# The one builder of kernel batches; see _batch.pyx.
from momentum._checks cimport MAX_ARRAYS, Place, RuleSpec
from momentum._kernels cimport momentum_task
from momentum._overlap cimport Span

# Spans a task may have: its rule's arrays, the rounding's extra, and one
# more memory the caller writes for it (also_writes: a step count).
cdef enum:
    SPANS = MAX_ARRAYS + 2

cdef class Batch:
    cdef momentum_task* tasks
    cdef Span* spans        # room for SPANS per task, then as much scratch
    cdef Py_ssize_t ntasks, room, nspans
    cdef size_t total
    cdef list held          # objects that must outlive the run, or None

    cdef momentum_task* next(self) except NULL
    cdef int add(self, const RuleSpec* rule, Place* places, object names,
                 str func) except -1
    cdef int also_writes(self, size_t address, size_t nbytes, int role) except -1
    cdef bint overlap(self, Py_ssize_t* pair) except -1
    cpdef int run(self) except -1
