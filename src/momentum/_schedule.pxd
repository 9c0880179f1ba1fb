# Running a checked batch of tasks; see _schedule.pyx.
from libc.stddef cimport size_t
from momentum._kernels cimport momentum_task

cdef void run_tasks(const momentum_task* tasks, size_t ntasks, size_t total,
                    int nthreads) noexcept nogil
cdef void run_table(const momentum_task* tasks, size_t ntasks, int nthreads) noexcept nogil
cdef void run_checked(const momentum_task* tasks, size_t ntasks, size_t total) noexcept
