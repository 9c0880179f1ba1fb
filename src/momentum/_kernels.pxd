# momentum's C ABI (include/momentum.h) for Cython: the generic kernel, one
# task, and the kernel table.  Other extensions `cimport` this file (with
# momentum.get_include() on their include path) and get the running table
# with import_kernels(): the kernels built for this CPU's best instruction
# set, or the one momentum.set_isa() chose.
from libc.stddef cimport size_t
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "momentum.h" nogil:
    enum:
        MOMENTUM_ABI_VERSION
        MOMENTUM_MAX_ARRAYS
        MOMENTUM_MAX_HYPER
        MOMENTUM_NDTYPES
        MOMENTUM_KERNEL_COUNT
        MOMENTUM_FLOAT32
        MOMENTUM_FLOAT64
        MOMENTUM_BFLOAT16
        MOMENTUM_FLOAT16
        MOMENTUM_ROUND_NEAREST
        MOMENTUM_ROUND_STOCHASTIC
        MOMENTUM_ROUND_KAHAN
        MOMENTUM_ROUND_MASTER
    const char* MOMENTUM_CAPSULE_NAME

    ctypedef struct momentum_task

    ctypedef void (*momentum_kernel)(const momentum_task* task, size_t start,
                                     size_t n) noexcept nogil

    ctypedef struct momentum_task:
        momentum_kernel kernel
        size_t n
        size_t offset
        char* arrays[MOMENTUM_MAX_ARRAYS]
        double hyper[MOMENTUM_MAX_HYPER]
        uint32_t rounding
        uint32_t stochastic
        uint32_t extra_dtype
        uint32_t reserved
        uint64_t seed
        uint64_t step
        uint64_t tensor

    ctypedef struct momentum_kernel_table:
        uint32_t abi_version
        uint32_t struct_size
        uint32_t task_size
        const char* isa
        size_t count
        const momentum_kernel* kernels
        const char* const* names
        void (*run)(const momentum_task* tasks, size_t ntasks, int nthreads) noexcept nogil

    momentum_kernel momentum_kernel_at(const momentum_kernel_table* table, size_t slot)
    momentum_kernel momentum_find_kernel(const momentum_kernel_table* table, const char* name)
    const momentum_kernel_table* momentum_import_kernels() except NULL with gil
