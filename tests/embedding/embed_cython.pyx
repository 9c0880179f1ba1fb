# A downstream Cython extension built against momentum's kernel table
# (momentum/_kernels.pxd, momentum.h), as tests/test_embedding.py builds it:
# the same sgd step as embed_c.c, finding kernels by slot arithmetic.
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from libc.stdlib cimport calloc, free
from libc.string cimport strcmp

from momentum._kernels cimport (MOMENTUM_NDTYPES, momentum_import_kernels, momentum_kernel,
                                momentum_kernel_at, momentum_kernel_table, momentum_task)

# The rule's slot and indices, from the generated momentum_rules.h.
cdef extern from "momentum.h":
    enum:
        MOMENTUM_FLOAT32
        MOMENTUM_FLOAT64
        MOMENTUM_FLOAT16
        MOMENTUM_SGD_SLOT
        MOMENTUM_SGD_ARRAY_PARAM
        MOMENTUM_SGD_ARRAY_GRAD
        MOMENTUM_SGD_ARRAY_BUF
        MOMENTUM_SGD_HYPER_LR
        MOMENTUM_SGD_HYPER_MOMENTUM
        MOMENTUM_SGD_HYPER_DAMPENING
        MOMENTUM_SGD_HYPER_WEIGHT_DECAY
        MOMENTUM_SGD_HYPER_NESTEROV
        MOMENTUM_SGD_HYPER_MAXIMIZE
        MOMENTUM_SGD_HYPER_FIRST_STEP

# The running table: it stays valid and follows momentum.set_isa.
cdef const momentum_kernel_table* table = momentum_import_kernels()

# Direct calls split each tensor into pieces of this many elements, so that
# most calls start inside the arrays and off any vector boundary.
cdef size_t PIECE = 4099


cdef int dtype_code(const Py_buffer* view) except -1:
    """MOMENTUM_FLOAT32, MOMENTUM_FLOAT64 or MOMENTUM_FLOAT16 for the buffer's format."""
    if strcmp(view.format, b"f") == 0 and view.itemsize == 4:
        return MOMENTUM_FLOAT32
    if strcmp(view.format, b"d") == 0 and view.itemsize == 8:
        return MOMENTUM_FLOAT64
    if strcmp(view.format, b"e") == 0 and view.itemsize == 2:
        return MOMENTUM_FLOAT16
    raise TypeError("the arrays must be float32, float64 or float16")


def sgd(list params, list grads, list bufs, double lr, double momentum, double dampening,
        double weight_decay, bint nesterov, bint maximize, bint first_step, int nthreads):
    """One sgd step for every tensor i (bufs[i] may be None when momentum ==
    0).  nthreads < 0 calls the kernels directly, piece by piece; otherwise
    the tensors go to table.run as one batch on up to nthreads threads."""
    cdef Py_ssize_t ntasks = len(params), i, k
    cdef size_t offset = 0, start, n
    cdef int code
    cdef momentum_task* t
    cdef Py_buffer* v
    if len(grads) != ntasks or len(bufs) != ntasks:
        raise ValueError("params, grads and bufs differ in length")
    cdef momentum_task* tasks = <momentum_task*>calloc(max(ntasks, 1), sizeof(momentum_task))
    cdef Py_buffer* views = <Py_buffer*>calloc(3 * max(ntasks, 1), sizeof(Py_buffer))
    cdef char* held = <char*>calloc(3 * max(ntasks, 1), 1)
    try:
        if tasks == NULL or views == NULL or held == NULL:
            raise MemoryError()
        for i in range(ntasks):
            t = &tasks[i]
            v = &views[3 * i]
            for k, obj, writable in ((MOMENTUM_SGD_ARRAY_PARAM, params[i], True),
                                     (MOMENTUM_SGD_ARRAY_GRAD, grads[i], False),
                                     (MOMENTUM_SGD_ARRAY_BUF, bufs[i], True)):
                if obj is None:
                    if k != MOMENTUM_SGD_ARRAY_BUF or momentum != 0:
                        raise TypeError("only buf may be None, and only when momentum == 0")
                    continue
                PyObject_GetBuffer(obj, &v[k], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
                                   | (PyBUF_WRITABLE if writable else 0))
                held[3 * i + k] = 1
                t.arrays[k] = <char*>v[k].buf
            code = dtype_code(&v[MOMENTUM_SGD_ARRAY_PARAM])
            t.n = <size_t>(v[MOMENTUM_SGD_ARRAY_PARAM].len // v[MOMENTUM_SGD_ARRAY_PARAM].itemsize)
            for k in range(3):
                if held[3 * i + k] and (dtype_code(&v[k]) != code
                                        or <size_t>(v[k].len // v[k].itemsize) != t.n):
                    raise TypeError("the arrays must be of one dtype and size")
            # Slot of dtype codes (c0, c1, c2): first + c0 + c1 * NDTYPES + c2 * NDTYPES**2.
            t.kernel = momentum_kernel_at(
                table, MOMENTUM_SGD_SLOT + code * (1 + MOMENTUM_NDTYPES
                                                   + MOMENTUM_NDTYPES * MOMENTUM_NDTYPES))
            if t.kernel == NULL:
                raise RuntimeError("momentum has no sgd kernel for this dtype")
            t.offset = offset
            offset += t.n
            t.hyper[MOMENTUM_SGD_HYPER_LR] = lr
            t.hyper[MOMENTUM_SGD_HYPER_MOMENTUM] = momentum
            t.hyper[MOMENTUM_SGD_HYPER_DAMPENING] = dampening
            t.hyper[MOMENTUM_SGD_HYPER_WEIGHT_DECAY] = weight_decay
            t.hyper[MOMENTUM_SGD_HYPER_NESTEROV] = 1.0 if nesterov else 0.0
            t.hyper[MOMENTUM_SGD_HYPER_MAXIMIZE] = 1.0 if maximize else 0.0
            t.hyper[MOMENTUM_SGD_HYPER_FIRST_STEP] = 1.0 if first_step else 0.0
        with nogil:
            if nthreads >= 0:
                table.run(tasks, <size_t>ntasks, nthreads)
            else:
                for i in range(ntasks):
                    start = 0
                    while start < tasks[i].n:
                        n = tasks[i].n - start if tasks[i].n - start < PIECE else PIECE
                        tasks[i].kernel(&tasks[i], start, n)
                        start += n
    finally:
        if held != NULL:
            for i in range(3 * ntasks):
                if held[i]:
                    PyBuffer_Release(&views[i])
        free(held)
        free(views)
        free(tasks)


def isa():
    """The name of the kernel build in the running table."""
    return table.isa.decode()


def check_import():
    """(abi_version, struct_size) of the table momentum_import_kernels()
    gives now; raises what it raises."""
    cdef const momentum_kernel_table* t = momentum_import_kernels()
    return t.abi_version, t.struct_size


def kernel_address(size_t slot):
    """The address of the kernel in ``slot`` (0 when empty)."""
    return <size_t>momentum_kernel_at(table, slot)
