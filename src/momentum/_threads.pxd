# The thread policy; see _threads.pyx.
from libc.stddef cimport size_t

cdef int max_threads() noexcept nogil
cdef int threads_for(size_t total) noexcept nogil
