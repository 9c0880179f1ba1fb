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

cdef int find_overlap(Span* spans, Span* scratch, Py_ssize_t n,
                      const Span** first, const Span** second) except -1
