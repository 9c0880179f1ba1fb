# Whether a written array of a batch overlaps an array of another triple;
# see _overlap.pyx.
from cpython.object cimport PyObject
from libc.stddef cimport size_t

cdef struct Span:
    # The bytes [lo, hi) of one array of the batch (nonempty).
    size_t lo
    size_t hi
    PyObject* array     # for the caller's error message; never touched here
    Py_ssize_t index    # the triple it belongs to
    int role            # the caller's label: which sequence it came from
    bint written

# The roles the callers label spans with: which sequence an array came from.
cdef enum:
    ROLE_PARAMS = 0
    ROLE_GRADS = 1
    ROLE_BUFS = 2


cdef inline void set_span(Span* s, size_t lo, size_t nbytes, PyObject* array,
                          Py_ssize_t index, int role, bint written) noexcept:
    """Fill ``s`` with the ``nbytes`` bytes from address ``lo``."""
    s.lo = lo
    s.hi = lo + nbytes
    s.array = array
    s.index = index
    s.role = role
    s.written = written


cdef int find_overlap(Span* spans, Span* scratch, Py_ssize_t n,
                      const Span** first, const Span** second) except -1
