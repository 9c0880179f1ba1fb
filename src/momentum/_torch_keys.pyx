"""The tensors each param group of ``momentum.torch.SGD`` was last stepped
with, re-checked in C each step, and the kernels' share of a step built from
them through the one batch builder.

A group's Snapshot stays valid while every parameter, gradient, state entry
and momentum buffer is the same tensor object and, for the parameters the
kernels step, lies at the same address with the same length, dtype, shape
and layout.  Checking that in a Python loop costs about 1 µs per parameter,
more than the kernel on small tensors; this loop asks torch through the C
functions behind its tensor descriptors (:mod:`momentum._tensor_facts`),
which know_torch() hands over, so torch is not a build dependency.

Every checked object is held by the snapshot, so no identity it compares can
be reused by another object while it lives.  Memory can be (``t.data = ...``
frees it), which is why a tensor's layout is compared as well as its address.

A training loop replaces every gradient each step: check() takes the new
ones (checked and recorded), and prepare_groups() builds every group's
kernel tasks from the recorded addresses, checked as every kernel call is
(momentum._checks.check_task), with no NumPy view and no per-tensor Python
call.
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

# The rule a step runs, and where its momentum and first_step sit among the
# hyperparameters.
cdef int SGD = list(RULES).index("sgd")
cdef int SGD_MOMENTUM = [h.name for h in RULES["sgd"].hypers].index("momentum")
cdef int SGD_FIRST_STEP = [h.name for h in RULES["sgd"].hypers].index("first_step")

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

cdef object MOMENTUM_BUFFER = "momentum_buffer"
cdef str STEP = "SGD.step"

# What the checks ask of torch, set once by know_torch().
cdef Fact DATA_PTR, NUMEL, IS_CONTIGUOUS, IS_NEG, IS_CONJ, GRAD, DTYPE, SHAPE, STRIDE
cdef Fact IS_CPU, LAYOUT
cdef object STRIDED
cdef object PLAIN_TENSOR, PLAIN_PARAMETER, PLAIN_BUFFER
# torch dtype -> (kernel dtype code, reals per tensor element, bytes per
# real): a complex tensor is stepped as its real view, two reals an element.
cdef dict KERNEL_DTYPES = {}


def know_torch(tensor_type, strided, kernel_dtypes, plain_types):
    """Tell this module torch's tensor type, strided layout, the dtypes the
    kernels step (torch dtype -> (code in momentum.rules.DTYPES, reals per
    element, bytes per real)), and the three tensor types (Tensor, Parameter, Buffer) whose
    answers no Python code can change (it does not import torch itself)."""
    global DATA_PTR, NUMEL, IS_CONTIGUOUS, IS_NEG, IS_CONJ, GRAD, DTYPE, SHAPE, STRIDE
    global IS_CPU, LAYOUT, STRIDED, PLAIN_TENSOR, PLAIN_PARAMETER, PLAIN_BUFFER
    DATA_PTR, NUMEL, IS_CONTIGUOUS, IS_NEG, IS_CONJ, GRAD, DTYPE, SHAPE, STRIDE, IS_CPU, \
        LAYOUT = (Fact(getattr(tensor_type, name)) for name in
                  ("data_ptr", "numel", "is_contiguous", "is_neg", "is_conj", "grad", "dtype",
                   "shape", "stride", "is_cpu", "layout"))
    STRIDED = strided
    KERNEL_DTYPES.clear()
    KERNEL_DTYPES.update(kernel_dtypes)
    PLAIN_TENSOR, PLAIN_PARAMETER, PLAIN_BUFFER = plain_types


cdef inline bint plain(object tensor):
    """``tensor`` is exactly a Tensor, Parameter or Buffer: no subclass whose
    ``__torch_function__`` or Python attributes could answer the checks with
    something other than what lies in memory."""
    cdef object kind = type(tensor)
    return kind is PLAIN_TENSOR or kind is PLAIN_PARAMETER or kind is PLAIN_BUFFER


cdef class Snapshot:
    """The tensors one param group was last stepped with, and where the
    kernels' ones lie.

    ``Snapshot(params, state, uses_state, kernel)`` records, for every
    parameter ``p`` of ``params``: ``p`` itself, ``p.grad``, and when
    ``uses_state`` the per-parameter dict ``state.get(p)`` and its
    ``"momentum_buffer"``.  For a parameter the kernels step (``kernel[i]``
    true: the optimizer has found its tensors plain, on the CPU, of a kernel
    dtype and of one dense layout) it also records each tensor's place:
    address, element count, dtype, shape and layout (contiguous, or the
    parameter's strides); each step a tensor must still lie so (moved()).
    The other parameters are the optimizer's to step with torch's own
    arithmetic: only their identities are compared.  Call know_torch() first.

    While ``state``'s dict version (see momentum_dict_version) is
    unchanged, every parameter still maps to the same per-parameter dict,
    however entries were set, so check() need not look parameters up
    (hashing a tensor is a Python call); where no version can be had, it
    does.
    """

    cdef list params, grads, entries, bufs, dtypes, shapes, strides
    cdef object state
    cdef bint uses_state, valid, grads_forgotten
    cdef bint versioned         # state_version is state's dict version
    cdef uint64_t state_version
    cdef bytes kernel       # per parameter: the kernels step it
    cdef bytearray had_grad  # per parameter: it had a gradient at the snapshot
    cdef bytearray active   # per parameter: the kernels step it, and it had a gradient
    cdef bytearray kinds    # per kernel parameter: its kernel dtype code
    cdef bytearray reals    # per kernel parameter: reals per element (2: complex)
    cdef bytearray itemsize  # per kernel parameter: bytes per real
    cdef Py_ssize_t nactive  # kernel parameters with a gradient
    # Kernel parameters with a gradient and, the group using state, no buffer.
    cdef readonly tuple missing
    # Per parameter, the places of the parameter, its grad and its buffer:
    # address then element count (of reals); (0, 0) for a missing tensor.
    cdef uintptr_t* places
    cdef Py_ssize_t n

    def __cinit__(self, object params, object state, bint uses_state, bytes kernel):
        self.params = list(params)
        self.n = PyList_GET_SIZE(self.params)
        if len(kernel) != self.n:
            raise ValueError("one kernel flag per parameter")
        self.places = <uintptr_t*>PyMem_Malloc(6 * max(self.n, 1) * sizeof(uintptr_t))
        if self.places == NULL:
            raise MemoryError()
        if DATA_PTR is None:
            raise RuntimeError("call know_torch() first")
        self.state, self.uses_state, self.kernel = state, uses_state, kernel
        self.missing = ()
        self.grads, self.entries, self.bufs = [], [], []
        self.dtypes, self.shapes, self.strides = [], [], []
        self.had_grad = bytearray(self.n)
        self.active = bytearray(self.n)
        self.kinds = bytearray(self.n)
        self.reals = bytearray(self.n)
        self.itemsize = bytearray(self.n)
        cdef Py_ssize_t i
        cdef PyObject* entry
        if uses_state and not isinstance(state, dict):
            raise TypeError("state is not a dict")
        if uses_state:
            self.versioned = momentum_watch_dict(state)
            self.state_version = momentum_dict_version(state)
        try:
            for i in range(self.n):
                p = self.params[i]
                g = GRAD.of(p)
                entry = PyDict_GetItemWithError(state, p) if uses_state else NULL
                b = None if entry == NULL else (<object>entry).get(MOMENTUM_BUFFER)
                self.grads.append(g)
                self.had_grad[i] = g is not None
                self.active[i] = g is not None and self.kernel[i]
                self.entries.append(None if entry == NULL else <object>entry)
                self.bufs.append(b)
                self.dtypes.append(DTYPE.of(p))
                self.shapes.append(SHAPE.of(p))
                self.strides.append(None)
                if not self.kernel[i]:
                    self.places[6 * i + 1] = 0
                    continue
                if IS_CONTIGUOUS.of(p) is not True:
                    self.strides[i] = STRIDE.of(p)
                self.kinds[i], self.reals[i], self.itemsize[i] = KERNEL_DTYPES[self.dtypes[i]]
                self.nactive += self.active[i]
                self.record(p, 6 * i)
                self.record(g, 6 * i + 2)
                self.record(b, 6 * i + 4)
            self.missing = tuple(i for i in range(self.n)
                                 if uses_state and self.active[i] and self.bufs[i] is None)
            self.valid = True
        except Exception:
            # A tensor the optimizer found fit that lies otherwise now
            # (another thread, a __torch_function__): never holds, so every
            # step looks at the tensors afresh.
            self.valid = False

    def __dealloc__(self):
        PyMem_Free(self.places)

    cdef int record(self, object tensor, Py_ssize_t k) except -1:
        """Store ``tensor``'s place at ``places[k:k + 2]`` (it belongs to
        parameter ``k // 6``); ValueError if it has elements but no memory
        behind them (a meta or fake tensor), or is not aligned to its real
        dtype (the optimizer then steps it with torch's arithmetic)."""
        if tensor is None:
            self.places[k] = self.places[k + 1] = 0
            return 0
        cdef uintptr_t address = <uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(tensor))
        cdef uintptr_t length = <uintptr_t>PyLong_AsSsize_t(NUMEL.of(tensor))
        if address == 0 and length != 0:
            raise ValueError("a tensor with no memory")
        if address % self.itemsize[k // 6]:
            raise ValueError("a misaligned tensor")
        self.places[k] = address
        self.places[k + 1] = length * self.reals[k // 6]
        return 0

    cdef bint laid_out(self, object tensor, Py_ssize_t i, bint fresh) except -1:
        """``tensor`` has kernel parameter ``i``'s dtype, shape and layout
        (contiguous, or the parameter's strides) and its memory holds its
        values (not, complex, a conjugated view); a ``fresh`` one (a new
        gradient or buffer) is also asked whether it is on the CPU, strided
        and not lazily negated.  A tensor found at its recorded address
        needs none of these three: no other device's memory, and no sparse
        tensor's, lies at a CPU tensor's address (a sparse one has none to
        ask), and only torch's private ``torch._neg_view`` lays a negated
        view at a tensor's own address (``x.conj()`` of a complex tensor
        does it publicly: asked).  Each fact costs 60-110 ns; a warm step
        asks each parameter, gradient and buffer five or six."""
        cdef object strides = <object>PyList_GET_ITEM(self.strides, i)
        return (plain(tensor)
                and DTYPE.of(tensor) is <object>PyList_GET_ITEM(self.dtypes, i)
                and SHAPE.of(tensor) == <object>PyList_GET_ITEM(self.shapes, i)
                and (IS_CONTIGUOUS.of(tensor) is True if strides is None
                     else STRIDE.of(tensor) == strides)
                and (not fresh or (IS_CPU.of(tensor) is True and LAYOUT.of(tensor) is STRIDED
                                   and IS_NEG.of(tensor) is False))
                and (self.reals[i] == 1 or IS_CONJ.of(tensor) is False))

    cdef bint moved(self, object tensor, Py_ssize_t i, Py_ssize_t k) except -1:
        """``tensor`` (not None; kernel parameter ``i`` or its grad or
        buffer) no longer lies at the place ``places[k:k + 2]`` as
        laid_out() says.

        The address alone is not enough: ``t.data = ...`` can put other
        memory (freed and reused) or another view of the same memory
        (``t.data.t()``, ``t.data[:k]``, ``t.data.view(torch.int64)``) at
        the same address."""
        return (<uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(tensor)) != self.places[k]
                or <uintptr_t>PyLong_AsSsize_t(NUMEL.of(tensor)) * self.reals[i]
                != self.places[k + 1]
                or not self.laid_out(tensor, i, False))

    cdef bint take_grad(self, object g, Py_ssize_t i) except -1:
        """Record ``g``, kernel parameter ``i``'s new gradient, as the
        snapshot's if it is laid out as the parameter (laid_out()); else
        False, or ValueError as record() (nothing recorded)."""
        if not self.laid_out(g, i, True):
            return False
        self.record(g, 6 * i + 2)
        self.grads[i] = g
        return True

    def touching(self, size_t lo, size_t hi):
        """``(i, array, start, end)`` for every tensor the kernels step
        (``array`` 0, 1, 2: kernel parameter ``i``, its grad, its buffer; a
        parameter with a gradient) whose bytes ``[start, end)`` share one with
        ``[lo, hi)``, as recorded by the last check()."""
        cdef list found = []
        cdef Py_ssize_t i, a
        cdef size_t start, end
        for i in range(self.n):
            if not self.active[i]:
                continue
            for a in range(3):
                start = self.places[6 * i + 2 * a]
                end = start + self.places[6 * i + 2 * a + 1] * self.itemsize[i]
                if start < end and start < hi and lo < end:
                    found.append((i, a, start, end))
        return found

    def forget_grads(self):
        """Let go of the gradients (``zero_grad(set_to_none=True)`` freed
        them); the next check() then reports at least GRADS."""
        self.grads = [None] * self.n
        self.grads_forgotten = True

    def check(self, object params, object state, bint uses_state,
              bint take_grads=False) -> int:
        """HOLDS if ``params`` and ``state`` show exactly the snapshot's
        tensors (and the kernel ones at the snapshot's places), GRADS if
        only gradients differ, else CHANGED (also when a parameter gained
        or lost its gradient).

        With ``take_grads``, a GRADS answer means the snapshot now records
        the new gradients: every kernel one checked (as take_grad() does;
        else CHANGED) and its place recorded, whatever the caller then runs.
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
        cdef bint kernel
        cdef int found = GRADS if self.grads_forgotten else HOLDS
        try:
            for i in range(self.n):
                kernel = self.kernel[i]
                p = <object>PyList_GET_ITEM(params, i)
                if p is not <object>PyList_GET_ITEM(self.params, i) or (
                        kernel and self.moved(p, i, 6 * i)):
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
                        if kernel and buf != NULL and <object>buf is not None and \
                                self.moved(<object>buf, i, 6 * i + 4):
                            return CHANGED
                g = GRAD.of(p)
                if (g is None) == self.had_grad[i]:
                    return CHANGED
                if g is None or (found == GRADS and not take_grads):
                    continue
                if g is not <object>PyList_GET_ITEM(self.grads, i) or (
                        kernel and self.moved(g, i, 6 * i + 2)):
                    found = GRADS
                    if take_grads:
                        if kernel and not self.take_grad(g, i):
                            return CHANGED
                        self.grads[i] = g
        except Exception:
            return CHANGED  # the optimizer looks at the tensors afresh
        if found == GRADS and take_grads:
            self.grads_forgotten = False
        return found


def prepare_groups(list snapshots, list hypers, list new_bufs, object name):
    """The kernels' part of a step over every group, checked and ready to
    run (a Batch: call ``run()``), or TypeError/ValueError naming the tensor
    with ``name(group, index, array)`` (array 0, 1, 2: the parameter, its
    grad, its buffer); nothing is written either way.

    ``snapshots[k]`` must have just passed check() (HOLDS, or GRADS with
    ``take_grads``); ``hypers[k]`` is the tuple of sgd's hyperparameters in
    the table's order for that group (first_step False); ``new_bufs[k]``
    maps each of ``snapshots[k].missing`` (kernel parameters with a
    gradient and no buffer, when the group uses state) to its new buffer;
    such a parameter is stepped as a first step.  Every task passes the checks of every kernel call (check_task),
    and no written tensor may overlap a tensor of another parameter.
    """
    cdef Py_ssize_t k, i, ngroups = len(snapshots), ntasks = 0
    if len(hypers) != ngroups or len(new_bufs) != ngroups:
        raise ValueError("one hyperparameter tuple and buffer list per snapshot")
    cdef Snapshot s
    for s in snapshots:
        ntasks += s.nactive
    cdef const RuleSpec* rule = spec_of(SGD)
    cdef double hyper[MAX_HYPER]
    cdef momentum_task* task
    cdef Place places[MAX_ARRAYS]
    cdef Batch batch = Batch(ntasks)
    for k in range(ngroups):
        s = <Snapshot>snapshots[k]
        if not s.valid:
            # Its places may be half recorded: never run from them.
            raise ValueError(f"{STEP}(): a tensor of param_groups[{k}] changed while "
                             f"the step looked at it")
        try:
            read_hypers(rule, SGD, hypers[k], hyper, STEP)
        except (TypeError, ValueError) as e:
            raise type(e)(f"SGD.step(): param_groups[{k}]: {str(e).split('(): ', 1)[1]}") \
                from None
        if (hyper[SGD_MOMENTUM] != 0) != s.uses_state:
            raise ValueError("the snapshot was made for another momentum")
        for i in range(s.n):
            if not s.active[i]:
                continue
            task = batch.next()
            memcpy(task.hyper, hyper, sizeof(hyper))
            fill_places(s, i, places)
            # A missing buffer, not a NULL address: an empty tensor's may be NULL.
            if s.uses_state and s.bufs[i] is None:
                place_of((<dict>new_bufs[k]).get(i), s, i, &places[2])
                task.hyper[SGD_FIRST_STEP] = 1.0
            try:
                batch.add(rule, places, ("param", "grad", "buf"), STEP)
            except (TypeError, ValueError):
                named(batch, rule, places, tuple(name(k, i, a) for a in range(3)))
                raise
    cdef Py_ssize_t pair[4]
    if batch.overlap(pair):
        (k, i), (k2, i2) = task_of(snapshots, pair[0]), task_of(snapshots, pair[2])
        raise ValueError(f"{STEP}(): {name(k, i, pair[1])} and {name(k2, i2, pair[3])} "
                         f"overlap in memory")
    return batch


cdef int named(Batch batch, const RuleSpec* rule, Place* places, tuple names) except -1:
    """Raise the error the checks raise for ``places``, naming its tensors
    ``names`` as the overlap message of prepare_groups does: unquoted (the
    checks quote an argument's name, and a parameter's name holds quotes)."""
    try:
        batch.add(rule, places, names, STEP)
    except (TypeError, ValueError) as error:
        message = str(error)
        for n in names:
            message = message.replace(f"'{n}'", n)
        raise type(error)(message) from None
    return 0


cdef tuple task_of(list snapshots, Py_ssize_t task):
    """(group, parameter) of task ``task`` of prepare_groups' batch."""
    cdef Snapshot s
    cdef Py_ssize_t i
    for k, s in enumerate(snapshots):
        for i in range(s.n):
            if s.active[i]:
                if task == 0:
                    return k, i
                task -= 1
    raise IndexError(task)


cdef inline void fill_places(Snapshot s, Py_ssize_t i, Place* places) noexcept:
    """The kernel parameter ``i``'s three places, from the snapshot."""
    cdef int a
    for a in range(3):
        places[a].address = <char*>s.places[6 * i + 2 * a]
        places[a].length = s.places[6 * i + 2 * a + 1]
        places[a].dtype = s.kinds[i]
        places[a].nbytes = places[a].length * s.itemsize[i]
        places[a].writable = True       # a tensor's memory is writable
        places[a].contiguous = True     # laid_out(): one dense layout for all three
        places[a].ndim = -1             # laid_out() compared the shapes
        places[a].source = <PyObject*>s.params[i]


cdef int place_of(object tensor, Snapshot s, Py_ssize_t i, Place* place) except -1:
    """``place`` for a new buffer of kernel parameter ``i`` (made like it)."""
    if tensor is None or not s.laid_out(tensor, i, True):
        raise ValueError("a new buffer must be laid out as its parameter")
    place.address = <char*>PyLong_AsVoidPtr(DATA_PTR.of(tensor))
    place.length = <size_t>PyLong_AsSsize_t(NUMEL.of(tensor)) * s.reals[i]
    place.nbytes = place.length * s.itemsize[i]
    return 0
