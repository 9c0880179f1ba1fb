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
from momentum._checks cimport (
    MAX_ARRAYS, MAX_HYPER, Place, RuleSpec, extra_names, has_extra, is_half, read_hypers,
    read_rounding, source_of, spec_of)
from momentum._kernels cimport MOMENTUM_ROUND_MASTER, momentum_task
from momentum._tensor_facts cimport Fact
from momentum.rules import RULES

# The rule a step runs, and where its momentum and first_step sit among the
# hyperparameters.
cdef int SGD = list(RULES).index("sgd")
cdef int SGD_MOMENTUM = [h.name for h in RULES["sgd"].hypers].index("momentum")
cdef int SGD_FIRST_STEP = [h.name for h in RULES["sgd"].hypers].index("first_step")
# A kernel parameter's arrays, as the snapshot records them: the parameter,
# its grad, its buffer, and the rounding's extra (kahan's compensation,
# master's float32 copy; at index narrays of a task, see _checks.source_of).
DEF NARRAYS = 4
DEF EXTRA = 3

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
# Names for the checks of a task that passes them (named() words a failure).
cdef tuple UNNAMED = ("?",) * (MAX_ARRAYS + 1)
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

    ``Snapshot(params, state, uses_state, kernel, buf_dtypes, extra_key,
    extra_dtypes)`` records, for every parameter ``p`` of ``params``: ``p``
    itself, ``p.grad``, and when ``uses_state`` (the group has momentum) the
    per-parameter dict ``state.get(p)`` and its ``"momentum_buffer"``.  For
    a parameter the kernels step (``kernel[i]`` true: the optimizer has found
    its tensors plain, on the CPU, of a kernel dtype and of one dense layout)
    it also records each tensor's place: address, element count, dtype,
    shape and layout (contiguous, or the parameter's strides); each step a
    tensor must still lie so (moved()).  A kernel parameter's buffer has the
    torch dtype ``buf_dtypes[i]`` (None, or a None entry: the parameter's);
    where ``extra_dtypes[i]`` is a torch dtype, the parameter also has the
    rounding's extra array ``state[p][extra_key]`` (kahan's compensation,
    master's float32 copy) of that dtype, recorded and checked as its buffer.
    The other parameters are the optimizer's to step with torch's own
    arithmetic: only their identities are compared.  Call know_torch() first.

    While ``state``'s dict version (see momentum_dict_version) is
    unchanged, every parameter still maps to the same per-parameter dict,
    however entries were set, so check() need not look parameters up
    (hashing a tensor is a Python call); where no version can be had, it
    does.
    """

    cdef list params, grads, entries, bufs, extras, dtypes, shapes, strides
    cdef list buf_dtypes, extra_dtypes   # per parameter: a torch dtype, or None
    cdef object state, extra_key
    cdef bint uses_state        # the group has momentum: every parameter has a buffer
    cdef bint uses_entries      # some parameter's state entry is read: buffers or extras
    cdef bint valid, grads_forgotten
    cdef bint versioned         # state_version is state's dict version
    cdef uint64_t state_version
    cdef bytes kernel       # per parameter: the kernels step it
    cdef bytearray had_grad  # per parameter: it had a gradient at the snapshot
    cdef bytearray active   # per parameter: the kernels step it, and it had a gradient
    cdef bytearray has_extra  # per parameter: it has the rounding's extra array
    cdef bytearray kinds    # per kernel parameter and array: its kernel dtype code
    cdef bytearray reals    # per kernel parameter: reals per element (2: complex)
    cdef bytearray itemsize  # per kernel parameter and array: bytes per real
    cdef Py_ssize_t nactive  # kernel parameters with a gradient
    # Kernel parameters with a gradient and, the group using state, no buffer.
    cdef readonly tuple missing
    # Kernel parameters with a gradient that should and do not have the extra array.
    cdef readonly tuple missing_extra
    # Per parameter, the places of its NARRAYS arrays (parameter, grad,
    # buffer, extra): address then element count (of reals); (0, 0) for a
    # missing tensor.
    cdef uintptr_t* places
    cdef Py_ssize_t n

    def __cinit__(self, object params, object state, bint uses_state, bytes kernel,
                  object buf_dtypes=None, object extra_key=None, object extra_dtypes=None):
        self.params = list(params)
        self.n = PyList_GET_SIZE(self.params)
        if len(kernel) != self.n:
            raise ValueError("one kernel flag per parameter")
        self.buf_dtypes = [None] * self.n if buf_dtypes is None else list(buf_dtypes)
        self.extra_dtypes = [None] * self.n if extra_dtypes is None else list(extra_dtypes)
        if len(self.buf_dtypes) != self.n or len(self.extra_dtypes) != self.n:
            raise ValueError("one buffer dtype and one extra dtype per parameter")
        self.places = <uintptr_t*>PyMem_Malloc(2 * NARRAYS * max(self.n, 1)
                                               * sizeof(uintptr_t))
        if self.places == NULL:
            raise MemoryError()
        if DATA_PTR is None:
            raise RuntimeError("call know_torch() first")
        self.state, self.uses_state, self.kernel = state, uses_state, kernel
        self.extra_key = extra_key
        self.missing = self.missing_extra = ()
        self.grads, self.entries, self.bufs, self.extras = [], [], [], []
        self.dtypes, self.shapes, self.strides = [], [], []
        self.had_grad = bytearray(self.n)
        self.active = bytearray(self.n)
        self.has_extra = bytearray(self.n)
        self.kinds = bytearray(NARRAYS * self.n)
        self.reals = bytearray(self.n)
        self.itemsize = bytearray(NARRAYS * self.n)
        cdef Py_ssize_t i, a
        cdef PyObject* entry
        for i in range(self.n):
            self.has_extra[i] = kernel[i] and self.extra_dtypes[i] is not None
        self.uses_entries = uses_state or any(self.has_extra)
        if self.uses_entries and not isinstance(state, dict):
            raise TypeError("state is not a dict")
        if self.uses_entries:
            self.versioned = momentum_watch_dict(state)
            self.state_version = momentum_dict_version(state)
        try:
            for i in range(self.n):
                p = self.params[i]
                g = GRAD.of(p)
                entry = PyDict_GetItemWithError(state, p) if self.uses_entries else NULL
                b = None if entry == NULL or not uses_state \
                    else (<object>entry).get(MOMENTUM_BUFFER)
                x = None if entry == NULL or not self.has_extra[i] \
                    else (<object>entry).get(extra_key)
                self.grads.append(g)
                self.had_grad[i] = g is not None
                self.active[i] = g is not None and self.kernel[i]
                self.entries.append(None if entry == NULL else <object>entry)
                self.bufs.append(b)
                self.extras.append(x)
                self.dtypes.append(DTYPE.of(p))
                self.shapes.append(SHAPE.of(p))
                self.strides.append(None)
                if not self.kernel[i]:
                    self.places[2 * NARRAYS * i + 1] = 0
                    continue
                if IS_CONTIGUOUS.of(p) is not True:
                    self.strides[i] = STRIDE.of(p)
                for a in range(NARRAYS):
                    self.kinds[NARRAYS * i + a], self.reals[i], \
                        self.itemsize[NARRAYS * i + a] = \
                        KERNEL_DTYPES[self.dtype_of(i, a) or self.dtypes[i]]
                self.nactive += self.active[i]
                self.record(p, i, 0)
                self.record(g, i, 1)
                self.record(b, i, 2)
                self.record(x, i, EXTRA)
            self.missing = tuple(i for i in range(self.n)
                                 if uses_state and self.active[i] and self.bufs[i] is None)
            self.missing_extra = tuple(i for i in range(self.n) if self.active[i]
                                       and self.has_extra[i] and self.extras[i] is None)
            self.valid = True
        except Exception:
            # A tensor the optimizer found fit that lies otherwise now
            # (another thread, a __torch_function__): never holds, so every
            # step looks at the tensors afresh.
            self.valid = False

    def __dealloc__(self):
        PyMem_Free(self.places)

    cdef inline object dtype_of(self, Py_ssize_t i, Py_ssize_t a):
        """The torch dtype array ``a`` of kernel parameter ``i`` must have."""
        if a == 2:
            return <object>PyList_GET_ITEM(self.buf_dtypes, i) \
                or <object>PyList_GET_ITEM(self.dtypes, i)
        if a == EXTRA:
            return <object>PyList_GET_ITEM(self.extra_dtypes, i)
        return <object>PyList_GET_ITEM(self.dtypes, i)

    cdef int record(self, object tensor, Py_ssize_t i, Py_ssize_t a) except -1:
        """Store ``tensor``'s place as array ``a`` of parameter ``i``;
        ValueError if it has elements but no memory behind them (a meta or
        fake tensor), or is not aligned to its real dtype (the optimizer
        then steps it with torch's arithmetic)."""
        cdef Py_ssize_t k = 2 * (NARRAYS * i + a)
        if tensor is None:
            self.places[k] = self.places[k + 1] = 0
            return 0
        cdef uintptr_t address = <uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(tensor))
        cdef uintptr_t length = <uintptr_t>PyLong_AsSsize_t(NUMEL.of(tensor))
        if address == 0 and length != 0:
            raise ValueError("a tensor with no memory")
        if address % self.itemsize[NARRAYS * i + a]:
            raise ValueError("a misaligned tensor")
        self.places[k] = address
        self.places[k + 1] = length * self.reals[i]
        return 0

    cdef bint laid_out(self, object tensor, Py_ssize_t i, Py_ssize_t a,
                       bint fresh) except -1:
        """``tensor``, as array ``a`` of kernel parameter ``i``, has the
        dtype that array must have (dtype_of()), the parameter's shape and
        layout (contiguous, or the parameter's strides) and its memory holds its
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
                and DTYPE.of(tensor) is self.dtype_of(i, a)
                and SHAPE.of(tensor) == <object>PyList_GET_ITEM(self.shapes, i)
                and (IS_CONTIGUOUS.of(tensor) is True if strides is None
                     else STRIDE.of(tensor) == strides)
                and (not fresh or (IS_CPU.of(tensor) is True and LAYOUT.of(tensor) is STRIDED
                                   and IS_NEG.of(tensor) is False))
                and (self.reals[i] == 1 or IS_CONJ.of(tensor) is False))

    cdef bint moved(self, object tensor, Py_ssize_t i, Py_ssize_t a) except -1:
        """``tensor`` (not None; array ``a`` of kernel parameter ``i``) no
        longer lies at its recorded place as laid_out() says.

        The address alone is not enough: ``t.data = ...`` can put other
        memory (freed and reused) or another view of the same memory
        (``t.data.t()``, ``t.data[:k]``, ``t.data.view(torch.int64)``) at
        the same address."""
        cdef Py_ssize_t k = 2 * (NARRAYS * i + a)
        return (<uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(tensor)) != self.places[k]
                or <uintptr_t>PyLong_AsSsize_t(NUMEL.of(tensor)) * self.reals[i]
                != self.places[k + 1]
                or not self.laid_out(tensor, i, a, False))

    cdef bint take_grad(self, object g, Py_ssize_t i) except -1:
        """Record ``g``, kernel parameter ``i``'s new gradient, as the
        snapshot's if it is laid out as the parameter (laid_out()); else
        False, or ValueError as record() (nothing recorded)."""
        if not self.laid_out(g, i, 1, True):
            return False
        self.record(g, i, 1)
        self.grads[i] = g
        return True

    def touching(self, size_t lo, size_t hi):
        """``(i, array, start, end)`` for every tensor the kernels step
        (``array`` 0, 1, 2, 3: kernel parameter ``i``, its grad, its buffer,
        its rounding's extra array; a parameter with a gradient) whose bytes
        ``[start, end)`` share one with ``[lo, hi)``, as recorded by the
        last check()."""
        cdef list found = []
        cdef Py_ssize_t i, a, k
        cdef size_t start, end
        for i in range(self.n):
            if not self.active[i]:
                continue
            for a in range(NARRAYS):
                k = 2 * (NARRAYS * i + a)
                start = self.places[k]
                end = start + self.places[k + 1] * self.itemsize[NARRAYS * i + a]
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
        cdef object p, g
        cdef bint kernel
        cdef int found = GRADS if self.grads_forgotten else HOLDS
        try:
            for i in range(self.n):
                kernel = self.kernel[i]
                p = <object>PyList_GET_ITEM(params, i)
                if p is not <object>PyList_GET_ITEM(self.params, i) or (
                        kernel and self.moved(p, i, 0)):
                    return CHANGED
                if self.uses_entries:
                    if not versioned:
                        entry = PyDict_GetItemWithError(state, p)
                        if (<PyObject*>None if entry == NULL else entry) \
                                != PyList_GET_ITEM(self.entries, i):
                            return CHANGED
                    entry = PyList_GET_ITEM(self.entries, i)
                    if entry != <PyObject*>None:
                        if self.uses_state and self.changed_entry(
                                <object>entry, MOMENTUM_BUFFER, self.bufs, i, 2, kernel):
                            return CHANGED
                        if self.has_extra[i] and self.changed_entry(
                                <object>entry, self.extra_key, self.extras, i, EXTRA, True):
                            return CHANGED
                g = GRAD.of(p)
                if (g is None) == self.had_grad[i]:
                    return CHANGED
                if g is None or (found == GRADS and not take_grads):
                    continue
                if g is not <object>PyList_GET_ITEM(self.grads, i) or (
                        kernel and self.moved(g, i, 1)):
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

    cdef bint changed_entry(self, dict entry, object key, list recorded, Py_ssize_t i,
                            Py_ssize_t a, bint kernel) except -1:
        """``entry[key]`` (parameter ``i``'s buffer or extra array, array
        ``a``) is not the tensor ``recorded[i]``, or (``kernel``) no longer
        lies at its recorded place."""
        cdef PyObject* found = PyDict_GetItemWithError(entry, key)
        if (<PyObject*>None if found == NULL else found) != PyList_GET_ITEM(recorded, i):
            return True
        return kernel and found != NULL and <object>found is not None \
            and self.moved(<object>found, i, a)


def prepare_groups(list snapshots, list hypers, list new_bufs, object name,
                   list storage=None, list new_extras=None):
    """The kernels' part of a step over every group, checked and ready to
    run (a Batch: call ``run()``), or TypeError/ValueError naming the tensor
    with ``name(group, index, array)`` (array 0, 1, 2, 3: the parameter, its
    grad, its buffer, its rounding's extra array); nothing is written either
    way.

    ``snapshots[k]`` must have just passed check() (HOLDS, or GRADS with
    ``take_grads``); ``hypers[k]`` is the tuple of sgd's hyperparameters in
    the table's order for that group (first_step False); ``new_bufs[k]``
    maps each of ``snapshots[k].missing`` (kernel parameters with a
    gradient and no buffer, when the group uses state) to its new buffer;
    such a parameter is stepped as a first step.  ``storage[k]`` is the
    group's ``(rounding, state_rounding, seed, step, first_index)``: how its
    16-bit parameters and buffers are stored (momentum.rules.ROUNDINGS,
    STATE_ROUNDINGS) and the stochastic key, the tensor part being
    ``first_index + i`` for parameter ``i`` (its state-dict index); None
    for all nearest.  ``new_extras[k]`` maps each of
    ``snapshots[k].missing_extra`` to its new extra array (filled by the
    caller: zeros, or the parameter as float32).  Every task passes the
    checks of every kernel call (check_task), and no written tensor may
    overlap a tensor of another parameter.
    """
    cdef Py_ssize_t k, i, a, ngroups = len(snapshots), ntasks = 0
    if len(hypers) != ngroups or len(new_bufs) != ngroups or (
            storage is not None and len(storage) != ngroups) or (
            new_extras is not None and len(new_extras) != ngroups):
        raise ValueError("one hyperparameter tuple, storage and buffer list per snapshot")
    cdef Snapshot s
    for s in snapshots:
        ntasks += s.nactive
    cdef const RuleSpec* rule = spec_of(SGD)
    cdef double hyper[MAX_HYPER]
    cdef momentum_task* task
    cdef momentum_task half   # the group's rounding of a 16-bit parameter
    cdef Place places[MAX_ARRAYS]
    cdef Place given[MAX_ARRAYS]
    cdef Batch batch = Batch(ntasks)
    cdef Py_ssize_t first_index
    for k in range(ngroups):
        s = <Snapshot>snapshots[k]
        if not s.valid:
            # Its places may be half recorded: never run from them.
            raise ValueError(f"{STEP}(): a tensor of param_groups[{k}] changed while "
                             f"the step looked at it")
        try:
            read_hypers(rule, SGD, hypers[k], hyper, STEP)
            rounding, state_rounding, seed, step, first_index = \
                ("nearest", "nearest", 0, 0, 0) if storage is None else storage[k]
            read_rounding(rule, rounding, state_rounding, seed, step, 0, &half, STEP)
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
            if is_half(s.kinds[NARRAYS * i]):
                task.rounding, task.stochastic = half.rounding, half.stochastic
                task.seed, task.step, task.tensor = half.seed, half.step, first_index + i
            if has_extra(rule, task) != s.has_extra[i]:
                raise ValueError("the snapshot was made for another rounding")
            fill_places(s, i, given)
            # A missing buffer, not a NULL address: an empty tensor's may be NULL.
            if s.uses_state and s.bufs[i] is None:
                place_of((<dict>new_bufs[k]).get(i), s, i, 2, &given[2])
                task.hyper[SGD_FIRST_STEP] = 1.0
            if s.has_extra[i] and s.extras[i] is None:
                place_of(None if new_extras is None else (<dict>new_extras[k]).get(i),
                         s, i, EXTRA, &given[EXTRA])
            for a in range(rule.narrays + has_extra(rule, task)):
                places[a] = given[source_of(rule, task, a)]
            try:
                # the tensors' names are made only to word an error: a
                # parameter's three cost more than its checks
                batch.add(rule, places, UNNAMED, STEP)
            except (TypeError, ValueError):
                named(batch, rule, places, task_names(rule, task, name, k, i))
                raise
    cdef Py_ssize_t pair[4]
    cdef momentum_task* first
    cdef momentum_task* second
    if batch.overlap(pair):
        (k, i), (k2, i2) = task_of(snapshots, pair[0]), task_of(snapshots, pair[2])
        first, second = &batch.tasks[pair[0]], &batch.tasks[pair[2]]
        raise ValueError(f"{STEP}(): {name(k, i, source_of(rule, first, pair[1]))} and "
                         f"{name(k2, i2, source_of(rule, second, pair[3]))} overlap in memory")
    return batch


cdef tuple task_names(const RuleSpec* rule, const momentum_task* task, object name,
                      Py_ssize_t k, Py_ssize_t i):
    """The names of the places of parameter ``i`` of group ``k``'s task."""
    cdef tuple names = tuple([name(k, i, a) for a in range(rule.narrays)])
    if not has_extra(rule, task):
        return names
    return extra_names(rule, task, names, name(k, i, EXTRA))


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


cdef int fill_places(Snapshot s, Py_ssize_t i, Place* places) except -1:
    """The kernel parameter ``i``'s NARRAYS places, from the snapshot."""
    cdef Py_ssize_t a, k
    cdef tuple sources = (s.params[i], s.grads[i], s.bufs[i], s.extras[i])
    for a in range(NARRAYS):
        k = 2 * (NARRAYS * i + a)
        places[a].address = <char*>s.places[k]
        places[a].length = s.places[k + 1]
        places[a].dtype = s.kinds[NARRAYS * i + a]
        places[a].nbytes = places[a].length * s.itemsize[NARRAYS * i + a]
        places[a].writable = True       # a tensor's memory is writable
        places[a].contiguous = True     # laid_out(): one dense layout for all
        places[a].ndim = -1             # laid_out() compared the shapes
        # For messages: the tensor (a missing one's place is filled by place_of).
        places[a].source = <PyObject*>(sources[a] if sources[a] is not None else s.params[i])
    return 0


cdef int place_of(object tensor, Snapshot s, Py_ssize_t i, Py_ssize_t a,
                  Place* place) except -1:
    """``place`` for a new array ``a`` (buffer or extra) of kernel parameter
    ``i`` (made like it)."""
    if tensor is None or not s.laid_out(tensor, i, a, True):
        raise ValueError("a new buffer or extra array must be laid out as its parameter")
    place.address = <char*>PyLong_AsVoidPtr(DATA_PTR.of(tensor))
    place.length = <size_t>PyLong_AsSsize_t(NUMEL.of(tensor)) * s.reals[i]
    place.nbytes = place.length * s.itemsize[NARRAYS * i + a]
    place.source = <PyObject*>tensor
    return 0
