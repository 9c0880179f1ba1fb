# Running a batch of tasks: one thread runs them in order; several threads
# take equal, contiguous shares of the batch's elements as they get free.
#
# The batch is treated as one long array made of its tasks laid end to end, so
# a thousand small tensors and one huge tensor balance alike.  Shares begin on
# a multiple of SPLIT_ALIGN elements inside a task, so that where a task's
# data starts on a cache line (as large NumPy and Arena arrays do) two
# threads never write the same line.  Every element sees the same arithmetic
# whatever the split, so results do not depend on the thread count.
#
# Nothing here knows a rule or a dtype: a task carries its kernel.
from cython.parallel cimport prange
from libc.stddef cimport size_t

from momentum._kernels cimport momentum_task
from momentum._threads cimport threads_for

# Below this many elements in a call the GIL is kept: releasing it costs more
# than the arithmetic, and no other thread could do much in that time.
cdef size_t NOGIL_MIN = 1 << 12
# Each thread's part comes in this many shares, taken as threads get free: a
# thread the OS runs late (another process on its core) then leaves its work
# to the others instead of making every one wait for it.
cdef int SHARES_PER_THREAD = 8
# 16 elements: a 64-byte cache line of float32, two of float64.
cdef size_t SPLIT_ALIGN = 16


cdef inline void _run_range(const momentum_task* t, size_t lo, size_t hi) noexcept nogil:
    """Run elements [lo, hi) of one task."""
    t.kernel(t, lo, hi - lo)


cdef size_t _task_at(const momentum_task* tasks, size_t ntasks, size_t pos) noexcept nogil:
    """Index of the last task whose offset is <= pos (binary search)."""
    cdef size_t lo = 0, hi = ntasks, mid
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tasks[mid].offset <= pos:
            lo = mid
        else:
            hi = mid
    return lo


cdef size_t _split_point(const momentum_task* tasks, size_t ntasks, size_t total,
                         size_t share, size_t shares) noexcept nogil:
    """Where share number ``share`` of ``shares`` equal ones begins, aligned
    to SPLIT_ALIGN elements inside its task."""
    cdef size_t pos, i, local
    if share == 0:
        return 0
    if share >= shares:
        return total
    # total * share / shares, without overflowing
    pos = total // shares * share + total % shares * share // shares
    i = _task_at(tasks, ntasks, pos)
    local = (pos - tasks[i].offset + SPLIT_ALIGN - 1) // SPLIT_ALIGN * SPLIT_ALIGN
    if local > tasks[i].n:
        local = tasks[i].n
    return tasks[i].offset + local


cdef void _run_span(const momentum_task* tasks, size_t ntasks, size_t lo,
                    size_t hi) noexcept nogil:
    """Run elements [lo, hi) of the batch laid end to end."""
    cdef size_t i, start, stop
    if lo >= hi:
        return
    i = _task_at(tasks, ntasks, lo)
    while i < ntasks and tasks[i].offset < hi:
        start = lo if lo > tasks[i].offset else tasks[i].offset
        stop = tasks[i].offset + tasks[i].n
        if stop > hi:
            stop = hi
        if stop > start:
            _run_range(&tasks[i], start - tasks[i].offset, stop - tasks[i].offset)
        i += 1


cdef void run_tasks(const momentum_task* tasks, size_t ntasks, size_t total,
                    int nthreads) noexcept nogil:
    """Run every task on up to ``nthreads`` threads; ``total`` is the sum of
    their ``n`` and each task's ``offset`` the sum of the ``n`` before it."""
    cdef Py_ssize_t share
    cdef size_t i
    if nthreads <= 1:
        for i in range(ntasks):
            _run_range(&tasks[i], 0, tasks[i].n)
        return
    cdef int shares = nthreads * SHARES_PER_THREAD
    for share in prange(shares, num_threads=nthreads, schedule="dynamic",
                        chunksize=1, nogil=True):
        _run_span(tasks, ntasks,
                  _split_point(tasks, ntasks, total, share, shares),
                  _split_point(tasks, ntasks, total, share + 1, shares))


cdef void run_table(const momentum_task* tasks, size_t ntasks, int nthreads) noexcept nogil:
    """The kernel table's ``run``: run_tasks for C callers, who give at most
    ``nthreads`` threads (0: as many as momentum would use).

    The split over threads finds tasks by their offsets; where the caller's
    do not lay the tasks end to end (left 0, say), the tasks run one after
    another on this thread instead: every one of them, whole."""
    cdef size_t total = 0, i
    cdef bint laid = True
    for i in range(ntasks):
        if tasks[i].offset != total:
            laid = False
        total += tasks[i].n
    cdef int most = threads_for(total)
    if nthreads > 0 and nthreads < most:
        most = nthreads
    run_tasks(tasks, ntasks, total, most if laid else 1)


cdef void run_checked(const momentum_task* tasks, size_t ntasks, size_t total) noexcept:
    """Run a checked batch (``total`` elements in all), called with the GIL:
    small batches keep it and run on this thread, larger ones release it
    and run on threads_for(total) threads."""
    if total < NOGIL_MIN:
        run_tasks(tasks, ntasks, total, 1)
    else:
        with nogil:
            run_tasks(tasks, ntasks, total, threads_for(total))
