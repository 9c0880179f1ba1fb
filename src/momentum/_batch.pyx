# The one builder of kernel batches, for every face (foreach, the arena,
# momentum.torch): the caller fills the next task's hyperparameters, then
# add() checks its arrays (check_task) and records their bytes; overlap()
# shows that no written array overlaps an array of another task, and only
# then does run() run every task as one batch, the GIL released once.  Nothing is written before
# every check of every task has passed.
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stddef cimport size_t

from momentum._checks cimport check_task, has_extra
from momentum._kernels cimport momentum_task
from momentum._overlap cimport find_overlap, set_span
from momentum._schedule cimport run_checked


cdef class Batch:
    """Room for ``room`` tasks, filled by next()/add(), run once by run()."""

    def __cinit__(self, Py_ssize_t room):
        self.room = room
        self.tasks = <momentum_task*>PyMem_Malloc(max(room, 1) * sizeof(momentum_task))
        self.spans = <Span*>PyMem_Malloc(max(2 * SPANS * room, 1) * sizeof(Span))
        if self.tasks == NULL or self.spans == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.tasks)
        PyMem_Free(self.spans)

    cdef momentum_task* next(self) except NULL:
        """The task add() fills next: set its ``hyper`` (and any rounding:
        it starts as nearest, with no key) first."""
        if self.ntasks == self.room:
            raise IndexError("Batch is full")
        cdef momentum_task* t = &self.tasks[self.ntasks]
        t.rounding = t.stochastic = t.extra_dtype = t.reserved = 0
        t.seed = t.step = t.tensor = 0
        return t

    cdef int add(self, const RuleSpec* rule, Place* places, object names,
                 str func) except -1:
        """Check the next task's arrays (see check_task) and take it in.

        The caller keeps every array alive until run() has returned (objects
        made for the call can go in ``held``, a list made on first use).
        """
        cdef momentum_task* t = &self.tasks[self.ntasks]
        check_task(rule, places, t, names, func)
        cdef int i
        for i in range(rule.narrays + has_extra(rule, t)):
            if t.arrays[i] != NULL and places[i].length:
                set_span(&self.spans[self.nspans], <size_t>t.arrays[i], places[i].nbytes,
                         self.ntasks, i, i == rule.narrays or rule.written[i])
                self.nspans += 1
        t.offset = self.total
        self.total += t.n
        self.ntasks += 1
        return 0

    cdef int also_writes(self, size_t address, size_t nbytes, int role) except -1:
        """The task add() took last also writes ``nbytes`` bytes at
        ``address`` (outside the kernel, after the run: a step count),
        array ``role`` for overlap()."""
        if self.ntasks == 0 or self.nspans == SPANS * self.ntasks:
            raise IndexError("no task to add memory to, or no room")
        if nbytes:
            set_span(&self.spans[self.nspans], address, nbytes, self.ntasks - 1, role, True)
            self.nspans += 1
        return 0

    cdef bint overlap(self, Py_ssize_t* pair) except -1:
        """True, with ``pair`` = (task, array, task, array) of two arrays that
        share a byte (earlier task first), if a written array overlaps an
        array of another task."""
        cdef const Span* s
        cdef const Span* t
        if not find_overlap(self.spans, self.spans + SPANS * self.room, self.nspans,
                            &s, &t):
            return False
        if t.index < s.index:
            s, t = t, s
        pair[0], pair[1], pair[2], pair[3] = s.index, s.role, t.index, t.role
        return True

    cpdef int run(self) except -1:
        """Run every task, after overlap() has said False."""
        run_checked(self.tasks, self.ntasks, self.total)
        return 0
