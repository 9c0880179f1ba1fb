# A batch of kernel calls ("tasks") and the one routine that runs a checked
# batch, split evenly over the thread pool.  The single-array API runs a batch of
# one; momentum.foreach runs a whole model's batch in one parallel region.
from libc.stddef cimport size_t
from momentum._kernels cimport sgd_hyper, heavy_ball_hyper

cdef enum Rule:
    RULE_UPDATE_BUFFER
    RULE_SGD
    RULE_HEAVY_BALL

cdef enum DType:
    DTYPE_FLOAT32
    DTYPE_FLOAT64

cdef struct Task:
    Rule rule
    DType dtype
    char* param           # NULL for update_buffer
    const char* grad
    char* buf             # NULL for sgd without momentum
    size_t n              # elements
    size_t offset         # where this task starts in the batch's element count
    sgd_hyper sgd         # update_buffer reads momentum and dampening here
    heavy_ball_hyper heavy_ball

cdef void run_checked(const Task* tasks, size_t ntasks, size_t total) noexcept
