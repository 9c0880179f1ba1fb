# Running a batch of tasks: one thread runs them in order; several threads
# take equal, contiguous shares of the batch's elements as they get free.
#
# The batch is treated as one long array made of its tasks laid end to end, so
# a thousand small tensors and one huge tensor balance alike.  Shares begin on
# a multiple of SPLIT_ALIGN elements inside a task, so that where a task's
# data starts on a cache line (as large NumPy and Arena arrays do) two
# threads never write the same line.  Every element sees the same arithmetic
# whatever the split, so results do not depend on the thread count.
import importlib
import operator
import os

from cpython.pycapsule cimport PyCapsule_GetPointer
from cython.parallel cimport prange
from libc.stddef cimport size_t
from momentum._kernels cimport KernelTable

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define MOMENTUM_OPENMP 1
    static int momentum_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define MOMENTUM_OPENMP 0
    static int momentum_max_threads(void) { return 1; }
    #endif
    """
    const int MOMENTUM_OPENMP
    int momentum_max_threads() noexcept nogil

cdef extern from *:
    """
    /* x86-64 micro-architecture levels: v3 has AVX2, v4 has AVX-512. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    static int momentum_cpu_level(void) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("x86-64-v4")) return 4;
        if (__builtin_cpu_supports("x86-64-v3")) return 3;
        return 1;
    }
    #elif defined(__x86_64__)
    static int momentum_cpu_level(void) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) return 4;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("bmi2")) return 3;
        return 1;
    }
    #else
    static int momentum_cpu_level(void) { return 1; }
    #endif
    """
    int momentum_cpu_level() noexcept

cdef extern from *:
    """
    #ifndef MOMENTUM_CFLAGS
    #define MOMENTUM_CFLAGS "unknown"
    #endif
    #if defined(__clang__)
    #define MOMENTUM_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define MOMENTUM_COMPILER "gcc " __VERSION__
    #else
    #define MOMENTUM_COMPILER "unknown"
    #endif
    #if defined(__AVX512F__)
    #define MOMENTUM_BASELINE_ISA "avx512f"
    #elif defined(__AVX2__)
    #define MOMENTUM_BASELINE_ISA "avx2"
    #elif defined(__SSE2__)
    #define MOMENTUM_BASELINE_ISA "sse2"
    #else
    #define MOMENTUM_BASELINE_ISA "generic"
    #endif
    """
    const char* MOMENTUM_CFLAGS
    const char* MOMENTUM_COMPILER
    const char* MOMENTUM_BASELINE_ISA

# Below this many elements in a call the GIL is kept: releasing it costs more
# than the arithmetic, and no other thread could do much in that time.
cdef size_t NOGIL_MIN = 1 << 12
# Below this many elements a step runs on one thread: waking the pool costs
# more than it saves (measured here, sgd float32: 2 threads run 1.05x one
# thread at 64 Ki elements, 1.8x at 128 Ki).
cdef size_t PARALLEL_MIN = 1 << 17
# Each extra thread needs at least this many elements to pay for itself.
cdef size_t PER_THREAD_MIN = 1 << 16
# Each thread's part comes in this many shares, taken as threads get free: a
# thread the OS runs late (another process on its core) then leaves its work
# to the others instead of making every one wait for it.
cdef int SHARES_PER_THREAD = 8
# 16 elements: a 64-byte cache line of float32, two of float64.
cdef size_t SPLIT_ALIGN = 16

# More threads than this is a mistake, not a machine.
MAX_THREADS = 1 << 16
cdef int _requested_threads = 0   # 0: follow OpenMP (OMP_NUM_THREADS, threadpoolctl)
cdef int _environment_threads = 0  # MOMENTUM_NUM_THREADS; set_num_threads(0) returns to it

OPENMP = bool(MOMENTUM_OPENMP)
# How this extension was compiled, for show_config().
BUILD = {
    "compiler": MOMENTUM_COMPILER.decode(),
    "cflags": MOMENTUM_CFLAGS.decode(),
    "openmp": OPENMP,
    "isa": MOMENTUM_BASELINE_ISA.decode(),
}


def set_num_threads(n):
    """Use at most ``n`` threads for a step (``n >= 1``).

    ``set_num_threads(0)`` goes back to the default: ``MOMENTUM_NUM_THREADS``
    if set at import, else OpenMP's own count (``OMP_NUM_THREADS``, or what
    threadpoolctl limits it to).  Without OpenMP every step runs on one thread.
    """
    global _requested_threads
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads(): 'n' must be a whole number, "
                        f"not {type(n).__name__}") from None
    if not 0 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads(): 'n' must be in [0, {MAX_THREADS}], got {n}")
    _requested_threads = n if n else _environment_threads


def get_num_threads():
    """The number of threads a large step will use."""
    return _max_threads()


cdef inline int _max_threads() noexcept nogil:
    if not MOMENTUM_OPENMP:
        return 1
    if _requested_threads > 0:
        return _requested_threads
    return momentum_max_threads()


cdef int threads_for(size_t total) noexcept nogil:
    """How many threads a batch of ``total`` elements should use."""
    cdef int most = _max_threads()
    cdef size_t useful
    if most <= 1 or total < PARALLEL_MIN:
        return 1
    useful = total // PER_THREAD_MIN
    return <int>useful if useful < <size_t>most else most


# The kernel builds, newest instruction set last, with the x86-64 level each
# needs.  The best one this CPU runs is used unless MOMENTUM_ISA names another.
ISAS = {"baseline": ("momentum._kernels", 1),
        "avx2": ("momentum._kernels_avx2", 3),
        "avx512": ("momentum._kernels_avx512", 4)}
cdef const KernelTable* _kernels = NULL
_isa = None


def available_isas():
    """The kernel builds this CPU can run and this install has, oldest first."""
    level = momentum_cpu_level()
    found = []
    for name, (module, needs) in ISAS.items():
        if needs <= level:
            try:
                importlib.import_module(module)
            except ImportError:
                continue
            found.append(name)
    return found


def set_isa(str name):
    """Run the kernels built for ``name`` ("baseline", "avx2", "avx512").

    Every build gives bitwise the same results; only speed differs.
    """
    global _kernels, _isa
    if name not in available_isas():
        raise ValueError(f"set_isa(): {name!r} is not available here; "
                         f"choose from {available_isas()}")
    capsule = importlib.import_module(ISAS[name][0]).KERNELS
    _kernels = <const KernelTable*>PyCapsule_GetPointer(capsule, "momentum.KernelTable")
    _isa = name


def get_isa():
    """The name of the kernel build in use."""
    return _isa


cdef inline void _run_range(const Task* t, size_t lo, size_t hi) noexcept nogil:
    """Run elements [lo, hi) of one task."""
    cdef size_t n = hi - lo
    if t.dtype == DTYPE_FLOAT32:
        if t.rule == RULE_SGD:
            _kernels.sgd_f32(<float*>t.param + lo, <const float*>t.grad + lo,
                             <float*>t.buf + lo if t.buf != NULL else NULL,
                             n, &t.sgd)
        elif t.rule == RULE_HEAVY_BALL:
            _kernels.heavy_ball_f32(<float*>t.param + lo,
                                    <const float*>t.grad + lo,
                                    <float*>t.buf + lo, n, &t.heavy_ball)
        else:
            _kernels.update_buffer_f32(<float*>t.buf + lo,
                                       <const float*>t.grad + lo, n,
                                       t.sgd.momentum, t.sgd.dampening)
    else:
        if t.rule == RULE_SGD:
            _kernels.sgd_f64(<double*>t.param + lo, <const double*>t.grad + lo,
                             <double*>t.buf + lo if t.buf != NULL else NULL,
                             n, &t.sgd)
        elif t.rule == RULE_HEAVY_BALL:
            _kernels.heavy_ball_f64(<double*>t.param + lo,
                                    <const double*>t.grad + lo,
                                    <double*>t.buf + lo, n, &t.heavy_ball)
        else:
            _kernels.update_buffer_f64(<double*>t.buf + lo,
                                       <const double*>t.grad + lo, n,
                                       t.sgd.momentum, t.sgd.dampening)


cdef size_t _task_at(const Task* tasks, size_t ntasks, size_t pos) noexcept nogil:
    """Index of the last task whose offset is <= pos (binary search)."""
    cdef size_t lo = 0, hi = ntasks, mid
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tasks[mid].offset <= pos:
            lo = mid
        else:
            hi = mid
    return lo


cdef size_t _split_point(const Task* tasks, size_t ntasks, size_t total,
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


cdef void _run_span(const Task* tasks, size_t ntasks, size_t lo,
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


cdef void run_tasks(const Task* tasks, size_t ntasks, size_t total,
                    int nthreads) noexcept nogil:
    """Run every task; ``total`` is the sum of their ``n``."""
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


def _init_from_environment():
    """Honour MOMENTUM_NUM_THREADS and MOMENTUM_ISA, read once at import."""
    global _environment_threads
    value = os.environ.get("MOMENTUM_NUM_THREADS", "").strip()
    if value:
        try:
            set_num_threads(int(value))
        except ValueError:
            raise ValueError(f"MOMENTUM_NUM_THREADS must be a whole number "
                             f">= 0, got {value!r}") from None
        _environment_threads = _requested_threads
    isa = os.environ.get("MOMENTUM_ISA", "").strip()
    isas = available_isas()
    if isa and isa not in isas:
        raise ValueError(f"MOMENTUM_ISA={isa!r} is not available here; "
                         f"choose from {isas}")
    set_isa(isa if isa else isas[len(isas) - 1])



cdef void run_checked(const Task* tasks, size_t ntasks, size_t total) noexcept:
    """Run a checked batch (``total`` elements in all), called with the GIL:
    small batches keep it and run on this thread, larger ones release it
    and run on threads_for(total) threads."""
    if total < NOGIL_MIN:
        run_tasks(tasks, ntasks, total, 1)
    else:
        with nogil:
            run_tasks(tasks, ntasks, total, threads_for(total))


_init_from_environment()
