# Whether a written array of a batch overlaps an array of another task;
# see _overlap.pyx.
from libc.stddef cimport size_t

cdef struct Span:
    # The bytes [lo, hi) of one array of the batch (nonempty).
    size_t lo
    size_t hi
    Py_ssize_t index    # the task it belongs to
    int role            # which array of the task's rule it is
    bint written


cdef inline void set_span(Span* s, size_t lo, size_t nbytes, Py_ssize_t index,
                          int role, bint written) noexcept:
    """Fill ``s`` with the ``nbytes`` bytes from address ``lo``."""
    s.lo = lo
    s.hi = lo + nbytes
    s.index = index
    s.role = role
    s.written = written


cdef int find_overlap(Span* spans, Span* scratch, Py_ssize_t n,
                      const Span** first, const Span** second) except -1
