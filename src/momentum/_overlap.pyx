# Overlap between the tasks of a batch, in O(k log k) or better.
#
# The caller knows the arrays within one task are apart; what remains is
# whether a written array overlaps any array of another task.  In address
# order, a span overlaps an earlier one exactly when it starts below the
# highest end seen so far: of any span if it is written, of written spans if
# not.  Sorting is an LSD radix sort on the addresses (no comparison calls),
# and an optimizer passes the same arrays every step, so the spans of the
# last batch found apart are remembered and a repeated batch costs a memcmp.
from cpython.mem cimport PyMem_Realloc
from libc.stddef cimport size_t
from libc.string cimport memcmp, memcpy, memset

# Radix sort digits: 8 bits, so the counters of all passes fit in 16 kB.
cdef enum:
    DIGIT_BITS = 8
    DIGITS = 1 << DIGIT_BITS
    PASSES = 64 // DIGIT_BITS

# The spans, in the caller's order, of the last batch found apart.  Only
# touched with the GIL held (find_overlap is called with it).
cdef Span* verified = NULL
cdef Py_ssize_t verified_count = 0


cdef Span* sort_spans(Span* a, Span* tmp, Py_ssize_t n) noexcept nogil:
    """Sort ``a[:n]`` by address; returns ``a`` or ``tmp``, whichever holds it.

    O(n) per byte of address; a byte that every span shares (most of a heap
    address) costs its share of one counting pass and no scatter.
    """
    cdef size_t count[PASSES][DIGITS]
    cdef size_t at, c
    cdef Py_ssize_t i
    cdef int d, shift
    cdef Span* swap
    memset(count, 0, sizeof(count))
    for i in range(n):
        for d in range(PASSES):
            count[d][(a[i].lo >> (d * DIGIT_BITS)) & (DIGITS - 1)] += 1
    for d in range(PASSES):
        shift = d * DIGIT_BITS
        if count[d][(a[0].lo >> shift) & (DIGITS - 1)] == <size_t>n:
            continue
        at = 0
        for c in range(DIGITS):
            count[d][c], at = at, at + count[d][c]
        for i in range(n):
            c = (a[i].lo >> shift) & (DIGITS - 1)
            tmp[count[d][c]] = a[i]
            count[d][c] += 1
        swap = a
        a = tmp
        tmp = swap
    return a


cdef int remember(const Span* spans, Py_ssize_t n) except -1:
    """Keep a copy of ``spans`` to compare the next batch with."""
    global verified, verified_count
    verified_count = 0
    cdef Span* room = <Span*>PyMem_Realloc(verified, max(n, 1) * sizeof(Span))
    if room == NULL:
        raise MemoryError()
    verified = room
    memcpy(verified, spans, n * sizeof(Span))
    return 0


cdef int find_overlap(Span* spans, Span* scratch, Py_ssize_t n,
                      const Span** first, const Span** second) except -1:
    """1 and the pair in ``first``/``second`` if a written span overlaps a
    span of another task, else 0.

    ``spans[:n]`` and ``scratch`` (room for n) may be reordered.  Call with
    the GIL held.
    """
    global verified_count
    if n == 0:
        return 0    # nothing to compare, and the last batch stays remembered
    if n == verified_count and not memcmp(spans, verified, n * sizeof(Span)):
        return 0
    remember(spans, n)
    cdef Py_ssize_t i
    cdef Span* s
    cdef Span* any_top = NULL
    cdef Span* written_top = NULL
    for i in range(1, n):
        if spans[i].lo < spans[i - 1].lo:
            spans = sort_spans(spans, scratch, n)
            break
    for i in range(n):
        s = &spans[i]
        if s.written and any_top != NULL and any_top.hi > s.lo:
            first[0], second[0] = any_top, s
            return 1
        if written_top != NULL and written_top.hi > s.lo:
            first[0], second[0] = written_top, s
            return 1
        if any_top == NULL or s.hi > any_top.hi:
            any_top = s
        if s.written and (written_top == NULL or s.hi > written_top.hi):
            written_top = s
    verified_count = n
    return 0
