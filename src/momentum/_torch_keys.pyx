"""What a cached batch of ``momentum.torch.SGD`` was built from, re-checked in C,
and the step run straight from it.

The optimizer caches, per param group, the batch it hands to the kernels.  It
stays valid while every parameter, gradient and momentum buffer is the same
plain tensor object, lying at the same address with the same length, dtype
and contiguity.  Checking that in a Python loop costs about 1 µs per
parameter, more than the kernel on small tensors; this loop asks torch
through the C functions behind its tensor descriptors
(:mod:`momentum._tensor_facts`), which know_torch() hands over, so torch is
not a build dependency.

Every checked object is held by the snapshot, so no identity it compares can
be reused by another object while it lives.  Memory can be (``t.data = ...``
frees it), which is why a tensor's layout is compared as well as its address.

A training loop replaces every gradient each step: check() can take the new
ones (checked and recorded), and run_groups() then steps every group from
the recorded addresses, with no NumPy view and no per-tensor Python call.
"""
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsSsize_t, PyLong_AsVoidPtr
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.stddef cimport size_t
from libc.stdint cimport uint64_t, uintptr_t

from libc.string cimport memcpy

from momentum._batch cimport Batch
from momentum._checks cimport MAX_ARRAYS, MAX_HYPER, Place, RuleSpec, read_hypers, spec_of
from momentum._kernels cimport momentum_task
from momentum._tensor_facts cimport Fact
from momentum.rules import RULES

# The rule a step runs, and where its momentum sits among the hyperparameters.
cdef int SGD = list(RULES).index("sgd")
cdef int SGD_MOMENTUM = [h.name for h in RULES["sgd"].hypers].index("momentum")

cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object, object) except? NULL

# A dict's version: a number that changes whenever an entry of the dict is
# set or removed, whatever does it (dict.__setitem__(d, ...), dict.update,
# a C extension's PyDict_SetItem...), so that check() can tell that the
# state still maps every parameter to the same per-parameter dict without
# looking a parameter up (hashing a tensor is a Python call).
cdef extern from *:
    """
    #if defined(PYPY_VERSION)
    /* No version to read: check() looks every parameter up. */
    static int momentum_watch_dict(PyObject *d) { (void)d; return 0; }
    static uint64_t momentum_dict_version(PyObject *d) { (void)d; return 0; }
    #elif PY_VERSION_HEX < 0x030C0000
    /* CPython 3.11 and older: every change of a dict gives its
       ma_version_tag (PEP 509) a value no dict has had before. */
    static int momentum_watch_dict(PyObject *d) { (void)d; return 1; }
    static uint64_t momentum_dict_version(PyObject *d) {
        return ((PyDictObject *)d)->ma_version_tag;
    }
    #else
    /* CPython 3.12 deprecated ma_version_tag (PEP 699) and 3.14 removed it;
       a dict watcher is called before every change of a watched dict: it
       counts them, one count for all watched dicts (a change of one only
       makes the others' next check look again). */
    static int momentum_dict_watcher = -1;  /* -2: no watcher to be had */
    static uint64_t momentum_dict_changes = 0;
    static int momentum_count_change(PyDict_WatchEvent event, PyObject *d,
                                     PyObject *key, PyObject *value) {
        (void)event; (void)d; (void)key; (void)value;
        momentum_dict_changes++;
        return 0;
    }
    static int momentum_watch_dict(PyObject *d) {
        if (momentum_dict_watcher == -1) {
            momentum_dict_watcher = PyDict_AddWatcher(momentum_count_change);
            if (momentum_dict_watcher < 0) {  /* every watcher slot is taken */
                PyErr_Clear();
                momentum_dict_watcher = -2;
            }
        }
        if (momentum_dict_watcher < 0)
            return 0;
        return PyDict_Watch(momentum_dict_watcher, d) < 0 ? -1 : 1;
    }
    static uint64_t momentum_dict_version(PyObject *d) {
        (void)d;
        return momentum_dict_changes;
    }
    #endif
    """
    # 1 if ``d`` (a dict) now has a version, 0 if not (look entries up), -1
    # with an exception set.
    int momentum_watch_dict(object d) except -1
    uint64_t momentum_dict_version(object d)

# What check() found, the least a caller must rebuild.
HOLDS = 0    # everything as snapshot: the cached batch is current
GRADS = 1    # only gradients differ (other tensors or other memory)
CHANGED = 2  # a parameter, its memory, a state entry or a buffer differs

# A parameter's dtype, as its code in momentum.rules.DTYPES, or NOT_KERNEL_DTYPE.
cdef enum:
    NOT_KERNEL_DTYPE = 255
cdef enum:
    DTYPE_FLOAT32 = 0
    DTYPE_FLOAT64 = 1

cdef object MOMENTUM_BUFFER = "momentum_buffer"
cdef str STEP = "SGD.step"

# What the checks ask of torch, set once by know_torch().
cdef Fact DATA_PTR, NUMEL, IS_CONTIGUOUS, IS_NEG, GRAD, DTYPE, SHAPE, IS_CPU, LAYOUT
cdef object STRIDED, FLOAT32, FLOAT64
cdef object PLAIN_TENSOR, PLAIN_PARAMETER, PLAIN_BUFFER


def know_torch(tensor_type, strided, float32, float64, plain_types):
    """Tell this module torch's tensor type, strided layout, the dtypes of
    the kernels' float32 and float64, and the three tensor types (Tensor,
    Parameter, Buffer) whose answers no Python code can change (it does not
    import torch itself)."""
    global DATA_PTR, NUMEL, IS_CONTIGUOUS, IS_NEG, GRAD, DTYPE, SHAPE, IS_CPU, LAYOUT
    global STRIDED, FLOAT32, FLOAT64, PLAIN_TENSOR, PLAIN_PARAMETER, PLAIN_BUFFER
    DATA_PTR, NUMEL, IS_CONTIGUOUS, IS_NEG, GRAD, DTYPE, SHAPE, IS_CPU, LAYOUT = (
        Fact(getattr(tensor_type, name)) for name in
        ("data_ptr", "numel", "is_contiguous", "is_neg", "grad", "dtype", "shape",
         "is_cpu", "layout"))
    STRIDED, FLOAT32, FLOAT64 = strided, float32, float64
    PLAIN_TENSOR, PLAIN_PARAMETER, PLAIN_BUFFER = plain_types


cdef inline bint plain(object tensor):
    """``tensor`` is exactly a Tensor, Parameter or Buffer: no subclass whose
    ``__torch_function__`` or Python attributes could answer the checks with
    something other than what lies in memory (a subclass's tensors always
    take the optimizer's full path, which reads them through NumPy)."""
    cdef object kind = type(tensor)
    return kind is PLAIN_TENSOR or kind is PLAIN_PARAMETER or kind is PLAIN_BUFFER


cdef class Snapshot:
    """The tensors one param group's batch was built from, and where they lie.

    ``Snapshot(params, state, uses_state)`` records, for every
    parameter ``p`` of ``params``: ``p`` itself and its place, ``p.grad`` and
    its place, and when ``uses_state`` the per-parameter dict
    ``state.get(p)``, its ``"momentum_buffer"`` and that buffer's place.  A
    tensor's place is its address and element count; each step a tensor
    must still lie there, contiguous and with its parameter's dtype (see
    moved()).  Call know_torch() first.

    While ``state``'s dict version (see momentum_dict_version) is
    unchanged, every parameter still maps to the same per-parameter dict,
    however entries were set, so check() need not look parameters up
    (hashing a tensor is a Python call); where no version can be had, it
    does.
    """

    cdef list params, grads, entries, bufs, dtypes, shapes
    cdef object state
    cdef bint uses_state, valid, grads_forgotten
    cdef bint versioned         # state_version is state's dict version
    cdef uint64_t state_version
    cdef bytearray active   # per parameter: it had a gradient at the snapshot
    cdef bytearray kinds    # per parameter: its DType, or NOT_KERNEL_DTYPE
    cdef Py_ssize_t nactive
    # Every active parameter has a kernel dtype and, if the group uses
    # state, a buffer: run_groups() can step it without the first-step path.
    cdef bint ready
    # Per parameter, the places of the parameter, its grad and its buffer:
    # address then element count; (0, 0) for a missing tensor.
    cdef uintptr_t* places
    cdef Py_ssize_t n

    def __cinit__(self, object params, object state, bint uses_state):
        self.params = list(params)
        self.n = PyList_GET_SIZE(self.params)
        self.places = <uintptr_t*>PyMem_Malloc(6 * max(self.n, 1) * sizeof(uintptr_t))
        if self.places == NULL:
            raise MemoryError()
        if DATA_PTR is None:
            raise RuntimeError("call know_torch() first")
        self.state, self.uses_state = state, uses_state
        self.grads, self.entries, self.bufs, self.dtypes, self.shapes = [], [], [], [], []
        self.active = bytearray(self.n)
        self.kinds = bytearray(self.n)
        self.ready = True
        cdef Py_ssize_t i
        cdef PyObject* entry
        try:
            if uses_state and not isinstance(state, dict):
                raise TypeError("state is not a dict")
            if uses_state:
                self.versioned = momentum_watch_dict(state)
                self.state_version = momentum_dict_version(state)
            for i in range(self.n):
                p = self.params[i]
                g = GRAD.of(p)
                entry = PyDict_GetItemWithError(state, p) if uses_state else NULL
                b = None if entry == NULL else (<object>entry).get(MOMENTUM_BUFFER)
                if not (plain(p) and (g is None or plain(g)) and (b is None or plain(b))):
                    raise TypeError("a tensor subclass")
                self.grads.append(g)
                self.active[i] = g is not None
                self.entries.append(None if entry == NULL else <object>entry)
                self.bufs.append(b)
                self.dtypes.append(DTYPE.of(p))
                self.shapes.append(SHAPE.of(p))
                self.kinds[i] = (DTYPE_FLOAT32 if self.dtypes[i] is FLOAT32 else
                                 DTYPE_FLOAT64 if self.dtypes[i] is FLOAT64 else
                                 NOT_KERNEL_DTYPE)
                if g is not None:
                    self.nactive += 1
                    self.ready &= (self.kinds[i] != NOT_KERNEL_DTYPE
                                   and (b is not None or not uses_state))
                self.record(p, 6 * i)
                self.record(g, 6 * i + 2)
                self.record(b, 6 * i + 4)
            self.valid = True
        except Exception:
            # A tensor subclass, or a tensor without memory (sparse, meta):
            # never holds, so every step takes the full path, which steps
            # the subclass through NumPy or reports the tensor.
            self.valid = False

    def __dealloc__(self):
        PyMem_Free(self.places)

    cdef int record(self, object tensor, Py_ssize_t k) except -1:
        """Store ``tensor``'s place at ``places[k:k + 2]`` (it belongs to
        parameter ``k // 6``); ValueError if it has elements but no memory
        behind them (a meta or fake tensor), or if its address is not a
        multiple of its parameter's kernel dtype's size (the kernels and the
        single-array checks need that: the full path then words the error)."""
        if tensor is None:
            self.places[k] = self.places[k + 1] = 0
            return 0
        cdef uintptr_t address = <uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(tensor))
        cdef uintptr_t length = <uintptr_t>PyLong_AsSsize_t(NUMEL.of(tensor))
        if address == 0 and length != 0:
            raise ValueError("a tensor with no memory")
        cdef unsigned char kind = self.kinds[k // 6]
        if address % (8 if kind == DTYPE_FLOAT64 else 4 if kind == DTYPE_FLOAT32 else 1):
            raise ValueError("a misaligned tensor")
        self.places[k] = address
        self.places[k + 1] = length
        return 0

    cdef bint moved(self, object tensor, Py_ssize_t i, Py_ssize_t k) except -1:
        """``tensor`` (not None; parameter ``i`` or its grad or buffer) no
        longer lies at the place ``places[k:k + 2]`` with parameter ``i``'s
        dtype, or is no longer contiguous.

        The address alone is not enough: ``t.data = ...`` can put other
        memory (freed and reused) or another view of the same memory
        (``t.data.t()``, ``t.data[:k]``, ``t.data.view(torch.int64)``) at
        the same address.  The shape is not compared (a Python call as
        dear as all the others): a tensor re-viewed in place to another
        shape of the same length is stepped as its memory lies, element
        for element, where torch.optim.SGD would refuse the shapes.  Nor is
        the negative bit: only torch's private ``torch._neg_view`` can lay
        a lazily negated view at a tensor's own address.
        """
        return (not plain(tensor)
                or <uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(tensor)) != self.places[k]
                or <uintptr_t>PyLong_AsSsize_t(NUMEL.of(tensor)) != self.places[k + 1]
                or DTYPE.of(tensor) is not <object>PyList_GET_ITEM(self.dtypes, i)
                or IS_CONTIGUOUS.of(tensor) is not True)

    cdef bint take_grad(self, object g, Py_ssize_t i) except -1:
        """Record ``g``, parameter ``i``'s new gradient, as the snapshot's,
        if it is a plain contiguous CPU tensor of the parameter's dtype and
        shape whose memory holds its values (not lazily negated); else
        False, or ValueError for one with no memory or misaligned (see
        record(); nothing recorded)."""
        if (not plain(g)
                or IS_CPU.of(g) is not True
                or LAYOUT.of(g) is not STRIDED
                or DTYPE.of(g) is not <object>PyList_GET_ITEM(self.dtypes, i)
                or SHAPE.of(g) != <object>PyList_GET_ITEM(self.shapes, i)
                or IS_CONTIGUOUS.of(g) is not True
                or IS_NEG.of(g) is not False):
            return False
        self.record(g, 6 * i + 2)   # raises for a tensor with no memory or misaligned
        self.grads[i] = g
        return True

    def forget_grads(self):
        """Let go of the gradients (``zero_grad(set_to_none=True)`` freed
        them); the next check() then reports at least GRADS."""
        self.grads = [None] * self.n
        self.grads_forgotten = True

    def check(self, object params, object state, bint uses_state,
              bint take_grads=False) -> int:
        """HOLDS if ``params`` and ``state`` show exactly the snapshot's
        tensors at the snapshot's places, GRADS if only gradients differ,
        else CHANGED (also when a parameter gained or lost its gradient).

        With ``take_grads``, a GRADS answer means the snapshot now records
        the new gradients: every one checked (as take_grad() does; else
        CHANGED) and its place recorded, whatever the caller then runs.
        After CHANGED the snapshot is spent: every later check says CHANGED.
        """
        cdef int found = self.compare(params, state, uses_state, take_grads)
        if found == CHANGED:
            self.valid = False
        return found

    cdef int compare(self, object params, object state, bint uses_state,
                     bint take_grads) except -1:
        if not self.valid or type(params) is not list \
                or PyList_GET_SIZE(params) != self.n \
                or state is not self.state or uses_state != self.uses_state:
            return CHANGED
        cdef bint versioned = self.versioned
        if versioned and momentum_dict_version(state) != self.state_version:
            return CHANGED
        cdef Py_ssize_t i
        cdef PyObject* entry
        cdef PyObject* buf
        cdef object p, g
        cdef int found = GRADS if self.grads_forgotten else HOLDS
        try:
            for i in range(self.n):
                p = <object>PyList_GET_ITEM(params, i)
                if p is not <object>PyList_GET_ITEM(self.params, i) or self.moved(p, i, 6 * i):
                    return CHANGED
                if self.uses_state:
                    if not versioned:
                        entry = PyDict_GetItemWithError(state, p)
                        if (<PyObject*>None if entry == NULL else entry) \
                                != PyList_GET_ITEM(self.entries, i):
                            return CHANGED
                    entry = PyList_GET_ITEM(self.entries, i)
                    if entry != <PyObject*>None:
                        buf = PyDict_GetItemWithError(<object>entry, MOMENTUM_BUFFER)
                        if (<PyObject*>None if buf == NULL else buf) \
                                != PyList_GET_ITEM(self.bufs, i):
                            return CHANGED
                        if buf != NULL and <object>buf is not None and \
                                self.moved(<object>buf, i, 6 * i + 4):
                            return CHANGED
                g = GRAD.of(p)
                if (g is None) == self.active[i]:
                    return CHANGED
                if g is None or (found == GRADS and not take_grads):
                    continue
                if g is not <object>PyList_GET_ITEM(self.grads, i) or self.moved(g, i, 6 * i + 2):
                    found = GRADS
                    if take_grads and not self.take_grad(g, i):
                        return CHANGED
        except Exception:
            return CHANGED  # the rebuild reports what is wrong
        if found == GRADS and take_grads:
            self.grads_forgotten = False
        return found


def run_groups(list snapshots, list hypers) -> bool:
    """Step every group from its snapshot, all as one batch: False (nothing
    written) if one is not ``ready``, or a tensor fails the checks every
    kernel call passes (momentum._checks.check_task), or a written tensor
    overlaps a tensor of another parameter, so that the caller's full path
    decides and words the error.

    ``snapshots[k]`` must have just passed check() (HOLDS, or GRADS with
    ``take_grads``); ``hypers[k]`` is the dict of ``foreach.sgd``'s
    hyperparameters for that group.  Raises as ``foreach.sgd`` does for a
    bad hyperparameter, before anything is written.
    """
    cdef Py_ssize_t k, ngroups = len(snapshots), ntasks = 0
    if len(hypers) != ngroups:
        raise ValueError("one hyperparameter dict per snapshot")
    cdef Snapshot s
    for s in snapshots:
        if not s.ready:
            return False
        ntasks += s.nactive
    cdef const RuleSpec* rule = spec_of(SGD)
    cdef double* templates = <double*>PyMem_Malloc(max(ngroups, 1) * MAX_HYPER * sizeof(double))
    if templates == NULL:
        raise MemoryError()
    try:
        for k in range(ngroups):
            h = hypers[k]
            read_hypers(rule, SGD, (h["lr"], h["momentum"], h["dampening"], h["weight_decay"],
                                    h["nesterov"], h["maximize"], False),
                        templates + k * MAX_HYPER, STEP)
            if (templates[k * MAX_HYPER + SGD_MOMENTUM] != 0) != (<Snapshot>snapshots[k]).uses_state:
                return False
        return run_tasks_of(snapshots, templates, rule, ntasks)
    finally:
        PyMem_Free(templates)


cdef bint run_tasks_of(list snapshots, const double* templates, const RuleSpec* rule,
                       Py_ssize_t ntasks) except -1:
    """run_groups() once its hyperparameters are checked into ``templates``."""
    cdef Py_ssize_t k, i, a
    cdef Snapshot s
    cdef momentum_task* task
    cdef Place places[MAX_ARRAYS]
    cdef Batch batch = Batch(ntasks)
    cdef tuple names = ("param", "grad", "buf")
    for a in range(3):
        places[a].writable = True    # torch tensors are writable
        places[a].contiguous = True  # check() compared it
        places[a].ndim = -1          # the snapshot compares lengths, not shapes
    for k in range(len(snapshots)):
        s = <Snapshot>snapshots[k]
        for i in range(s.n):
            if not s.active[i]:
                continue
            task = batch.next()
            memcpy(task.hyper, templates + k * MAX_HYPER, MAX_HYPER * sizeof(double))
            for a in range(3):
                places[a].address = <char*>s.places[6 * i + 2 * a]
                places[a].length = s.places[6 * i + 2 * a + 1]
                places[a].dtype = s.kinds[i]
                places[a].nbytes = places[a].length * (8 if s.kinds[i] == DTYPE_FLOAT64 else 4)
                places[a].source = <PyObject*>s.params[i]
            try:
                batch.add(rule, places, names, STEP)
            except (TypeError, ValueError):
                return False
    cdef Py_ssize_t pair[4]
    if batch.overlap(pair):
        return False
    batch.run()
    return True
