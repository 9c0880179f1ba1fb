# How many threads a step uses: the user's choice (set_num_threads,
# MOMENTUM_NUM_THREADS) or OpenMP's, and no more than a batch's size pays for.
import operator
import os

from libc.stddef cimport size_t

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define MOMENTUM_OPENMP 1
    static int momentum_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define MOMENTUM_OPENMP 0
    static int momentum_omp_max_threads(void) { return 1; }
    #endif
    """
    const int MOMENTUM_OPENMP
    int momentum_omp_max_threads() noexcept nogil

# Below this many elements a step runs on one thread: waking the pool costs
# more than it saves (measured here, sgd float32: 2 threads run 1.05x one
# thread at 64 Ki elements, 1.8x at 128 Ki).
cdef size_t PARALLEL_MIN = 1 << 17
# Each extra thread needs at least this many elements to pay for itself.
cdef size_t PER_THREAD_MIN = 1 << 16

# More threads than this is a mistake, not a machine.
MAX_THREADS = 1 << 16
cdef int _requested = 0     # 0: follow OpenMP (OMP_NUM_THREADS, threadpoolctl)
cdef int _environment = 0   # MOMENTUM_NUM_THREADS; set_num_threads(0) returns to it

OPENMP = bool(MOMENTUM_OPENMP)


def set_num_threads(n):
    """Use at most ``n`` threads for a step (``n >= 1``).

    ``set_num_threads(0)`` goes back to the default: ``MOMENTUM_NUM_THREADS``
    if set at import, else OpenMP's own count (``OMP_NUM_THREADS``, or what
    threadpoolctl limits it to).  Without OpenMP every step runs on one thread.
    """
    global _requested
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads(): 'n' must be a whole number, "
                        f"not {type(n).__name__}") from None
    if not 0 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads(): 'n' must be in [0, {MAX_THREADS}], got {n}")
    _requested = n if n else _environment


def get_num_threads():
    """The number of threads a large step will use."""
    return max_threads()


cdef int max_threads() noexcept nogil:
    """The most threads a step may use now."""
    if not MOMENTUM_OPENMP:
        return 1
    if _requested > 0:
        return _requested
    return momentum_omp_max_threads()


cdef int threads_for(size_t total) noexcept nogil:
    """How many threads a batch of ``total`` elements should use."""
    cdef int most = max_threads()
    cdef size_t useful
    if most <= 1 or total < PARALLEL_MIN:
        return 1
    useful = total // PER_THREAD_MIN
    return <int>useful if useful < <size_t>most else most


def _init_from_environment():
    """Honour MOMENTUM_NUM_THREADS, read once at import."""
    global _environment
    value = os.environ.get("MOMENTUM_NUM_THREADS", "").strip()
    if value:
        try:
            set_num_threads(int(value))
        except ValueError:
            raise ValueError(f"MOMENTUM_NUM_THREADS must be a whole number "
                             f">= 0, got {value!r}") from None
        _environment = _requested


_init_from_environment()
