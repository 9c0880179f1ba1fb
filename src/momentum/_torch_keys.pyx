"""The tensors each param group of a ``momentum.torch`` optimizer was last
stepped with, re-checked in C each step, and the kernels' share of a step
built from them through the one batch builder.

A group's Snapshot is made for one rule of the table (sgd for
``momentum.torch.SGD``, adam or adamw, lion) and the state entries its
arrays have in PyTorch's state (the rule table's ``state_key``s), plus a
per-tensor step count where the rule has one (Adam's ``state[p]["step"]``,
read from its tensor's memory and counted on there).  It stays valid while
every parameter, gradient, state entry and step count is the same tensor
object and, for the parameters the kernels step, lies at the same address
with the same length, dtype, shape and layout.  Checking that in a Python
loop costs about 1 µs per parameter, more than the kernel on small tensors;
this loop asks torch through the C functions behind its tensor descriptors
(:mod:`momentum._tensor_facts`), which know_torch() hands over, so torch is
not a build dependency.

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
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stddef cimport size_t
from libc.stdint cimport uint64_t, uintptr_t

from libc.string cimport memcpy

from momentum._batch cimport Batch
from momentum._checks cimport (
    MAX_ARRAYS, MAX_HYPER, Place, RuleSpec, extra_names, has_extra, is_half, read_hypers,
    read_rounding, source_of, spec_of, uses)
from momentum._kernels cimport momentum_task
from momentum._tensor_facts cimport Fact
from momentum.rules import DTYPES, RULES

# The rules, by index as momentum._checks numbers them.
cdef list RULE_NAMES = list(RULES)

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

# Names for the checks of a task that passes them (named() words a failure).
cdef tuple UNNAMED = ("?",) * (MAX_ARRAYS + 1)
# The kernel dtype codes a step count may have.
cdef int FLOAT32 = DTYPES.index("float32")
cdef int FLOAT64 = DTYPES.index("float64")

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

    ``Snapshot(rule, params, state, keys, kernel, state_dtypes, extra_key,
    extra_dtypes, step_key)`` records, for every parameter ``p`` of
    ``params`` (stepped by the rule ``rule`` of momentum.rules): ``p``
    itself, ``p.grad``, and when ``keys`` names state entries (the rule's
    state arrays the group uses, by PyTorch state key, in the table's
    order) the per-parameter dict ``state.get(p)`` and those entries.  For
    a parameter the kernels step (``kernel[i]`` true: the optimizer has found
    its tensors plain, on the CPU, of a kernel dtype and of one dense layout)
    it also records each tensor's place: address, element count, dtype,
    shape and layout (contiguous, or the parameter's strides); each step a
    tensor must still lie so (moved()).  A kernel parameter's state arrays
    have the torch dtype ``state_dtypes[i]`` (None, or a None entry: the
    parameter's); where ``extra_dtypes[i]`` is a torch dtype, the parameter
    also has the rounding's extra array ``state[p][extra_key]`` (kahan's
    compensation, master's float32 copy) of that dtype, recorded and checked
    as its state.  With ``step_key``, a kernel parameter's state also holds
    its step count there: a float32 or float64 scalar tensor, whose value
    the rule's per-tensor count is read from (one more than it) and which
    advance() counts on.  A parameter's state entries are all there or all
    missing (a first step).  The other parameters are the optimizer's to
    step with torch's own arithmetic: only their identities are compared.
    Call know_torch() first.

    While ``state``'s dict version (see momentum_dict_version) is
    unchanged, every parameter still maps to the same per-parameter dict,
    however entries were set, so check() need not look parameters up
    (hashing a tensor is a Python call); where no version can be had, it
    does.
    """

    cdef int rule               # its index in momentum.rules.RULES
    cdef const RuleSpec* spec
    # Arrays recorded per parameter: the rule's, then the rounding's extra
    # (kahan's compensation, master's float32 copy; at index narrays of a
    # task, see _checks.source_of).
    cdef Py_ssize_t width, extra
    cdef Py_ssize_t param_at, grad_at   # the rule's param and grad arrays
    cdef Py_ssize_t nstate              # state arrays in use
    cdef Py_ssize_t state_at[MAX_ARRAYS]   # their arrays of the rule
    cdef Py_ssize_t slot_of[MAX_ARRAYS]    # per array of the rule: its state slot, or -1
    cdef bint in_use[MAX_ARRAYS]        # per array of the rule: the group uses it
    cdef bint is_state[MAX_ARRAYS]      # per array of the rule: a state array
    # The rule's per-tensor hyperparameters: the first-step flag (set where
    # the state is new) and the step count, or -1.
    cdef int flag_at, count_at
    cdef list params, grads, entries, states, extras, steps, dtypes, shapes, strides
    cdef list state_dtypes, extra_dtypes   # per parameter: a torch dtype, or None
    cdef object state, extra_key, step_key
    cdef tuple keys
    cdef bint uses_entries      # some parameter's state entry is read
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
    cdef bytearray wide_step  # per kernel parameter: its step count is a double
    cdef Py_ssize_t nactive  # kernel parameters with a gradient
    # Kernel parameters with a gradient and, the group using state, none yet.
    cdef readonly tuple missing
    # Kernel parameters with a gradient that should and do not have the extra array.
    cdef readonly tuple missing_extra
    # Per parameter, the places of its width arrays: address then element
    # count (of reals); (0, 0) for a missing tensor.
    cdef uintptr_t* places
    cdef uintptr_t* step_places  # per parameter: its step count's address, or 0
    cdef Py_ssize_t n

    def __cinit__(self, str rule, object params, object state, tuple keys, bytes kernel,
                  object state_dtypes=None, object extra_key=None, object extra_dtypes=None,
                  object step_key=None):
        if DATA_PTR is None:
            raise RuntimeError("call know_torch() first")
        self.rule = RULE_NAMES.index(rule)
        self.spec = spec_of(self.rule)
        self.read_rule(RULES[rule], keys, step_key)
        self.params = list(params)
        self.n = PyList_GET_SIZE(self.params)
        if len(kernel) != self.n:
            raise ValueError("one kernel flag per parameter")
        self.state_dtypes = [None] * self.n if state_dtypes is None else list(state_dtypes)
        self.extra_dtypes = [None] * self.n if extra_dtypes is None else list(extra_dtypes)
        if len(self.state_dtypes) != self.n or len(self.extra_dtypes) != self.n:
            raise ValueError("one state dtype and one extra dtype per parameter")
        self.places = <uintptr_t*>PyMem_Malloc(2 * self.width * max(self.n, 1)
                                               * sizeof(uintptr_t))
        self.step_places = <uintptr_t*>PyMem_Malloc(max(self.n, 1) * sizeof(uintptr_t))
        if self.places == NULL or self.step_places == NULL:
            raise MemoryError()
        self.state, self.kernel = state, kernel
        self.extra_key, self.step_key = extra_key, step_key
        self.missing = self.missing_extra = ()
        self.grads, self.entries, self.states, self.extras, self.steps = [], [], [], [], []
        self.dtypes, self.shapes, self.strides = [], [], []
        self.had_grad = bytearray(self.n)
        self.active = bytearray(self.n)
        self.has_extra = bytearray(self.n)
        self.kinds = bytearray(self.width * self.n)
        self.reals = bytearray(self.n)
        self.itemsize = bytearray(self.width * self.n)
        self.wide_step = bytearray(self.n)
        cdef Py_ssize_t i, a, s
        cdef PyObject* entry
        for i in range(self.n):
            self.has_extra[i] = kernel[i] and self.extra_dtypes[i] is not None
            self.step_places[i] = 0
        self.uses_entries = self.nstate > 0 or any(self.has_extra)
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
                found = None if entry == NULL else <object>entry
                for s in range(self.nstate):
                    self.states.append(None if found is None else found.get(keys[s]))
                x = None if found is None or not self.has_extra[i] else found.get(extra_key)
                self.grads.append(g)
                self.had_grad[i] = g is not None
                self.active[i] = g is not None and self.kernel[i]
                self.entries.append(found)
                self.extras.append(x)
                self.steps.append(None if found is None or step_key is None or not kernel[i]
                                  else found.get(step_key))
                self.dtypes.append(DTYPE.of(p))
                self.shapes.append(SHAPE.of(p))
                self.strides.append(None)
                if not self.kernel[i]:
                    self.places[2 * self.width * i + 1] = 0
                    continue
                if IS_CONTIGUOUS.of(p) is not True:
                    self.strides[i] = STRIDE.of(p)
                for a in range(self.width):
                    self.kinds[self.width * i + a], self.reals[i], \
                        self.itemsize[self.width * i + a] = \
                        KERNEL_DTYPES[self.dtype_of(i, a) or self.dtypes[i]]
                self.nactive += self.active[i]
                for a in range(self.width):
                    self.record(self.tensor_at(i, a), i, a)
                self.record_step(i)
            self.missing = tuple(i for i in range(self.n) if self.nstate and self.active[i]
                                 and self.states[self.nstate * i] is None)
            self.missing_extra = tuple(i for i in range(self.n) if self.active[i]
                                       and self.has_extra[i] and self.extras[i] is None)
            self.valid = True
        except Exception:
            # A tensor the optimizer found fit that lies otherwise now
            # (another thread, a __torch_function__), or a state half
            # there: never holds, so every step looks at the tensors afresh.
            self.valid = False

    def __dealloc__(self):
        PyMem_Free(self.places)
        PyMem_Free(self.step_places)

    cdef int read_rule(self, object rule, tuple keys, object step_key) except -1:
        """The arrays and per-tensor hyperparameters of ``rule`` (a
        momentum.rules.Rule), the state entries ``keys`` it uses."""
        cdef Py_ssize_t a
        names = [array.name for array in rule.arrays]
        self.width = self.extra = len(names)
        self.width += 1
        self.param_at = names.index("param")
        self.grad_at = names.index("grad")
        self.keys, self.nstate = keys, len(keys)
        state_keys = [array.state_key for array in rule.arrays]
        if any(key not in state_keys for key in keys) or \
                sorted(keys, key=state_keys.index) != list(keys):
            raise ValueError(f"{rule.name}'s state entries, in its order, are "
                             f"{[k for k in state_keys if k]}, not {list(keys)}")
        for a in range(self.extra):
            self.is_state[a] = state_keys[a] is not None
            self.slot_of[a] = keys.index(state_keys[a]) if state_keys[a] in keys else -1
            self.in_use[a] = not self.is_state[a] or self.slot_of[a] >= 0
            if self.slot_of[a] >= 0:
                self.state_at[self.slot_of[a]] = a
        hypers = {h.name: (j, h.check) for j, h in enumerate(rule.hypers)}
        per_tensor = [hypers[name] for name in rule.per_tensor]
        self.flag_at = next((j for j, check in per_tensor if check == "flag"), -1)
        self.count_at = next((j for j, check in per_tensor if check == "count"), -1)
        if self.count_at >= 0 and keys and step_key is None:
            raise ValueError(f"{rule.name} counts steps per tensor: give its step_key")
        return 0

    cdef inline object tensor_at(self, Py_ssize_t i, Py_ssize_t a):
        """Array ``a`` of parameter ``i``, as recorded (None: missing or unused)."""
        if a == self.param_at:
            return <object>PyList_GET_ITEM(self.params, i)
        if a == self.grad_at:
            return <object>PyList_GET_ITEM(self.grads, i)
        if a == self.extra:
            return <object>PyList_GET_ITEM(self.extras, i)
        if self.slot_of[a] < 0:
            return None
        return <object>PyList_GET_ITEM(self.states, self.nstate * i + self.slot_of[a])

    cdef inline object dtype_of(self, Py_ssize_t i, Py_ssize_t a):
        """The torch dtype array ``a`` of kernel parameter ``i`` must have."""
        if a == self.extra:
            return <object>PyList_GET_ITEM(self.extra_dtypes, i)
        if self.is_state[a]:
            return <object>PyList_GET_ITEM(self.state_dtypes, i) \
                or <object>PyList_GET_ITEM(self.dtypes, i)
        return <object>PyList_GET_ITEM(self.dtypes, i)

    cdef int record(self, object tensor, Py_ssize_t i, Py_ssize_t a) except -1:
        """Store ``tensor``'s place as array ``a`` of parameter ``i``;
        ValueError if it has elements but no memory behind them (a meta or
        fake tensor), or is not aligned to its real dtype (the optimizer
        then steps it with torch's arithmetic)."""
        cdef Py_ssize_t k = 2 * (self.width * i + a)
        if tensor is None:
            self.places[k] = self.places[k + 1] = 0
            return 0
        cdef uintptr_t address = <uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(tensor))
        cdef uintptr_t length = <uintptr_t>PyLong_AsSsize_t(NUMEL.of(tensor))
        if address == 0 and length != 0:
            raise ValueError("a tensor with no memory")
        if address % self.itemsize[self.width * i + a]:
            raise ValueError("a misaligned tensor")
        self.places[k] = address
        self.places[k + 1] = length * self.reals[i]
        return 0

    cdef int record_step(self, Py_ssize_t i) except -1:
        """Store where kernel parameter ``i``'s step count lies (its state
        has one); ValueError if the state is half there or the count is not
        a float32 or float64 scalar tensor on the CPU holding a whole number
        >= 0."""
        cdef object step = <object>PyList_GET_ITEM(self.steps, i)
        cdef bint fresh = self.nstate == 0 or self.states[self.nstate * i] is None
        cdef Py_ssize_t s
        for s in range(self.nstate):
            if (self.states[self.nstate * i + s] is None) != fresh:
                raise ValueError("a state half there")
        if self.step_key is None or fresh:
            return 0
        if step is None or not plain(step) or IS_CPU.of(step) is not True \
                or LAYOUT.of(step) is not STRIDED or len(SHAPE.of(step)) != 0:
            raise ValueError("a step count that is not a CPU scalar tensor")
        kind = KERNEL_DTYPES.get(DTYPE.of(step))
        if kind is None or kind[:2] not in ((FLOAT32, 1), (FLOAT64, 1)):
            raise ValueError("a step count neither float32 nor float64")
        self.wide_step[i] = kind[0] == FLOAT64
        self.step_places[i] = <uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(step))
        if self.step_places[i] % kind[2] or self.step_value(i) < 0:
            raise ValueError("a step count that is not a whole number >= 0")
        return 0

    cdef inline double step_value(self, Py_ssize_t i) noexcept:
        """Kernel parameter ``i``'s step count (its state has one), or -1
        where it is not a whole number in [0, 2**53)."""
        cdef double v = (<double*>self.step_places[i])[0] if self.wide_step[i] \
            else (<float*>self.step_places[i])[0]
        return v if 0 <= v < 9007199254740992.0 and v == <double><long long>v else -1.0

    def advance(self):
        """Count one step more in the step count of every kernel parameter
        the last check() recorded with a gradient and a state (as
        ``torch._foreach_add_(steps, 1)`` would), after the batch ran."""
        cdef Py_ssize_t i
        for i in range(self.n):
            if self.active[i] and self.step_places[i]:
                if self.wide_step[i]:
                    (<double*>self.step_places[i])[0] += 1
                else:
                    (<float*>self.step_places[i])[0] += 1

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
        asks each parameter, gradient and buffer four or five."""
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
        the same address.  The element count needs no asking: laid_out()
        finds the parameter's shape, so the count recorded from it."""
        cdef Py_ssize_t k = 2 * (self.width * i + a)
        return (<uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(tensor)) != self.places[k]
                or not self.laid_out(tensor, i, a, False))

    cdef bint step_moved(self, object step, Py_ssize_t i) except -1:
        """Kernel parameter ``i``'s step count ``step`` (the recorded tensor)
        no longer lies at its recorded place, is no longer of its dtype, or
        no longer holds a whole number >= 0."""
        return (<uintptr_t>PyLong_AsVoidPtr(DATA_PTR.of(step)) != self.step_places[i]
                or len(SHAPE.of(step)) != 0
                or KERNEL_DTYPES.get(DTYPE.of(step), (-1,))[0]
                != (FLOAT64 if self.wide_step[i] else FLOAT32)
                or self.step_value(i) < 0)

    cdef bint take_grad(self, object g, Py_ssize_t i) except -1:
        """Record ``g``, kernel parameter ``i``'s new gradient, as the
        snapshot's if it is laid out as the parameter (laid_out()); else
        False, or ValueError as record() (nothing recorded)."""
        if not self.laid_out(g, i, self.grad_at, True):
            return False
        self.record(g, i, self.grad_at)
        self.grads[i] = g
        return True

    def touching(self, size_t lo, size_t hi):
        """``(i, array, start, end)`` for every tensor the kernels step
        (``array``: the rule's array, or its count for the rounding's extra
        array; of kernel parameter ``i``, a parameter with a gradient) whose
        bytes ``[start, end)`` share one with ``[lo, hi)``, as recorded by
        the last check()."""
        cdef list found = []
        cdef Py_ssize_t i, a, k
        cdef size_t start, end
        for i in range(self.n):
            if not self.active[i]:
                continue
            for a in range(self.width):
                k = 2 * (self.width * i + a)
                start = self.places[k]
                end = start + self.places[k + 1] * self.itemsize[self.width * i + a]
                if start < end and start < hi and lo < end:
                    found.append((i, a, start, end))
        return found

    def forget_grads(self):
        """Let go of the gradients (``zero_grad(set_to_none=True)`` freed
        them); the next check() then reports at least GRADS."""
        self.grads = [None] * self.n
        self.grads_forgotten = True

    def check(self, object params, object state, tuple keys,
              bint take_grads=False) -> int:
        """HOLDS if ``params`` and ``state`` (its entries ``keys`` in use)
        show exactly the snapshot's tensors (and the kernel ones at the
        snapshot's places), GRADS if only gradients differ, else CHANGED
        (also when a parameter gained or lost its gradient, or a step count
        is no longer a whole number).

        With ``take_grads``, a GRADS answer means the snapshot now records
        the new gradients: every kernel one checked (as take_grad() does;
        else CHANGED) and its place recorded, whatever the caller then runs.
        After CHANGED the snapshot is spent: every later check says CHANGED.
        """
        cdef int found = self.compare(params, state, keys, take_grads)
        if found == CHANGED:
            self.valid = False
        return found

    cdef int compare(self, object params, object state, tuple keys,
                     bint take_grads) except -1:
        if not self.valid or type(params) is not list \
                or PyList_GET_SIZE(params) != self.n \
                or state is not self.state or (keys is not self.keys and keys != self.keys):
            return CHANGED
        cdef bint versioned = self.versioned
        if versioned and momentum_dict_version(state) != self.state_version:
            return CHANGED
        cdef Py_ssize_t i, s
        cdef PyObject* entry
        cdef object p, g
        cdef bint kernel
        cdef int found = GRADS if self.grads_forgotten else HOLDS
        try:
            for i in range(self.n):
                kernel = self.kernel[i]
                p = <object>PyList_GET_ITEM(params, i)
                if p is not <object>PyList_GET_ITEM(self.params, i) or (
                        kernel and self.moved(p, i, self.param_at)):
                    return CHANGED
                if self.uses_entries:
                    if not versioned:
                        entry = PyDict_GetItemWithError(state, p)
                        if (<PyObject*>None if entry == NULL else entry) \
                                != PyList_GET_ITEM(self.entries, i):
                            return CHANGED
                    entry = PyList_GET_ITEM(self.entries, i)
                    if entry != <PyObject*>None:
                        for s in range(self.nstate):
                            if self.changed_entry(<object>entry, <object>PyTuple_GET_ITEM(
                                    self.keys, s), self.states, self.nstate * i + s,
                                    i, self.state_at[s], kernel):
                                return CHANGED
                        if self.has_extra[i] and self.changed_entry(
                                <object>entry, self.extra_key, self.extras, i, i,
                                self.extra, True):
                            return CHANGED
                        if self.step_places[i] and self.changed_entry(
                                <object>entry, self.step_key, self.steps, i, i, -1, True):
                            return CHANGED
                g = GRAD.of(p)
                if (g is None) == self.had_grad[i]:
                    return CHANGED
                if g is None or (found == GRADS and not take_grads):
                    continue
                if g is not <object>PyList_GET_ITEM(self.grads, i) or (
                        kernel and self.moved(g, i, self.grad_at)):
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

    cdef bint changed_entry(self, dict entry, object key, list recorded, Py_ssize_t r,
                            Py_ssize_t i, Py_ssize_t a, bint kernel) except -1:
        """``entry[key]`` (parameter ``i``'s array ``a``, or its step count
        where ``a`` is -1) is not the tensor ``recorded[r]``, or (``kernel``)
        no longer lies at its recorded place."""
        cdef PyObject* found = PyDict_GetItemWithError(entry, key)
        if (<PyObject*>None if found == NULL else found) != PyList_GET_ITEM(recorded, r):
            return True
        if not kernel or found == NULL or <object>found is None:
            return False
        if a < 0:
            return self.step_moved(<object>found, i)
        return self.moved(<object>found, i, a)


def prepare_groups(list snapshots, list hypers, list new_states, object name,
                   list storage, list new_extras, str where):
    """The kernels' part of a step over every group, checked and ready to
    run (a Batch: call ``run()``, then each snapshot's ``advance()``), or
    TypeError/ValueError naming the tensor with ``name(group, index,
    array)`` (``array``: the rule's array, or the rule's count of arrays
    for the rounding's extra one), the function ``where``; nothing is
    written either way.

    ``snapshots[k]`` must have just passed check() (HOLDS, or GRADS with
    ``take_grads``); ``hypers[k]`` is the tuple of its rule's
    hyperparameters in the table's order for that group (per-tensor ones:
    any value the checks take; the snapshot sets each tensor's).
    ``new_states[k]`` maps each of ``snapshots[k].missing`` (kernel
    parameters with a gradient and no state yet) to its new state arrays
    (one per key of the snapshot); such a parameter is stepped as a first
    step (a per-tensor flag set, a per-tensor count 1).  ``storage[k]`` is
    the group's ``(rounding, state_rounding, seed, step, first_index)``:
    how its 16-bit parameters and state are stored (momentum.rules.ROUNDINGS,
    STATE_ROUNDINGS) and the stochastic key, the tensor part being
    ``first_index + i`` for parameter ``i`` (its state-dict index) and the
    step a rule's own count where it has one; None for all nearest.
    ``new_extras[k]`` maps each of ``snapshots[k].missing_extra`` to its new
    extra array (filled by the caller: zeros, or the parameter as float32).
    Every task passes the checks of every kernel call (check_task), and no
    written tensor may overlap a tensor of another parameter.
    """
    cdef Py_ssize_t k, i, a, ngroups = len(snapshots), ntasks = 0
    if len(hypers) != ngroups or len(new_states) != ngroups or (
            storage is not None and len(storage) != ngroups) or (
            new_extras is not None and len(new_extras) != ngroups):
        raise ValueError("one hyperparameter tuple, storage and state list per snapshot")
    cdef Snapshot s
    for s in snapshots:
        ntasks += s.nactive
    cdef const RuleSpec* rule
    cdef double hyper[MAX_HYPER]
    cdef momentum_task* task
    cdef momentum_task half   # the group's rounding of a 16-bit parameter
    cdef Place places[MAX_ARRAYS]
    cdef Place given[MAX_ARRAYS]
    cdef Batch batch = Batch(ntasks)
    cdef Py_ssize_t first_index
    cdef bint fresh
    for k in range(ngroups):
        s = <Snapshot>snapshots[k]
        rule = s.spec
        if not s.valid:
            # Its places may be half recorded: never run from them.
            raise ValueError(f"{where}(): a tensor of param_groups[{k}] changed while "
                             f"the step looked at it")
        first_index = read_group(s.rule, hypers[k], None if storage is None else storage[k],
                                 hyper, &half, where, k)
        for a in range(rule.narrays):
            if uses(rule, a, hyper) != s.in_use[a]:
                raise ValueError("the snapshot was made for other hyperparameters")
        for i in range(s.n):
            if not s.active[i]:
                continue
            task = batch.next()
            memcpy(task.hyper, hyper, sizeof(hyper))
            fresh = s.nstate > 0 and s.states[s.nstate * i] is None
            if s.flag_at >= 0:
                task.hyper[s.flag_at] = fresh
            if s.count_at >= 0:
                # counted on in the count's own dtype, as torch's step_t += 1
                task.hyper[s.count_at] = 1.0 if fresh else s.step_value(i) + 1.0 \
                    if s.wide_step[i] else <float>(<float>s.step_value(i) + 1.0)
            if is_half(s.kinds[s.width * i + s.param_at]):
                task.rounding, task.stochastic = half.rounding, half.stochastic
                task.seed, task.step, task.tensor = half.seed, half.step, first_index + i
            if has_extra(rule, task) != s.has_extra[i]:
                raise ValueError("the snapshot was made for another rounding")
            fill_places(s, i, given)
            # A missing state, not a NULL address: an empty tensor's may be NULL.
            if fresh:
                arrays = (<dict>new_states[k]).get(i)
                if arrays is None or len(arrays) != s.nstate:
                    raise ValueError("one new state array per state key")
                for a in range(s.nstate):
                    place_of(arrays[a], s, i, s.state_at[a], &given[s.state_at[a]])
            if s.has_extra[i] and s.extras[i] is None:
                place_of(None if new_extras is None else (<dict>new_extras[k]).get(i),
                         s, i, s.extra, &given[s.extra])
            for a in range(rule.narrays + has_extra(rule, task)):
                places[a] = given[source_of(rule, task, a)]
            try:
                # the tensors' names are made only to word an error: a
                # parameter's three cost more than its checks
                batch.add(rule, places, UNNAMED, where)
            except (TypeError, ValueError):
                named(batch, rule, places, task_names(rule, task, name, k, i), where)
                raise
            if s.step_places[i]:
                # advance() writes it after the run: two parameters sharing
                # one count would both be stepped with its old value
                batch.also_writes(s.step_places[i], 8 if s.wide_step[i] else 4,
                                  rule.narrays + 1)
    cdef Py_ssize_t pair[4]
    cdef momentum_task* first
    cdef momentum_task* second
    if batch.overlap(pair):
        (k, i), (k2, i2) = task_of(snapshots, pair[0]), task_of(snapshots, pair[2])
        first, second = &batch.tasks[pair[0]], &batch.tasks[pair[2]]
        raise ValueError(
            f"{where}(): {name(k, i, source_of((<Snapshot>snapshots[k]).spec, first, pair[1]))}"
            f" and {name(k2, i2, source_of((<Snapshot>snapshots[k2]).spec, second, pair[3]))}"
            f" overlap in memory")
    return batch


def check_group(str rule, tuple hypers, tuple storage, str where, Py_ssize_t k):
    """TypeError or ValueError, as prepare_groups() raises it, if group
    ``k``'s hyperparameters ``hypers`` or its ``storage`` (see there) are
    not ones rule ``rule`` takes: a step checks every group so before it
    looks at any group's tensors."""
    cdef double hyper[MAX_HYPER]
    cdef momentum_task half
    read_group(RULE_NAMES.index(rule), hypers, storage, hyper, &half, where, k)


cdef Py_ssize_t read_group(int index, tuple hypers, object storage, double* hyper,
                           momentum_task* half, str where, Py_ssize_t k) except -1:
    """Read group ``k``'s hyperparameters (into ``hyper``) and storage
    (into ``half``'s rounding and key, nearest where ``storage`` is None)
    for rule ``index``, checked; its first parameter's state-dict index."""
    cdef const RuleSpec* rule = spec_of(index)
    try:
        read_hypers(rule, index, hypers, hyper, where)
        rounding, state_rounding, seed, step, first_index = \
            ("nearest", "nearest", 0, 0, 0) if storage is None else storage
        read_rounding(rule, rounding, state_rounding, seed, step, 0, half, where)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}(): param_groups[{k}]: {str(e).split('(): ', 1)[1]}") \
            from None
    return first_index


cdef tuple task_names(const RuleSpec* rule, const momentum_task* task, object name,
                      Py_ssize_t k, Py_ssize_t i):
    """The names of the places of parameter ``i`` of group ``k``'s task."""
    cdef tuple names = tuple([name(k, i, a) for a in range(rule.narrays)])
    if not has_extra(rule, task):
        return names
    return extra_names(rule, task, names, name(k, i, rule.narrays))


cdef int named(Batch batch, const RuleSpec* rule, Place* places, tuple names,
               str where) except -1:
    """Raise the error the checks raise for ``places``, naming its tensors
    ``names`` as the overlap message of prepare_groups does: unquoted (the
    checks quote an argument's name, and a parameter's name holds quotes)."""
    try:
        batch.add(rule, places, names, where)
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
    """The kernel parameter ``i``'s places (the rule's arrays, then the
    extra), from the snapshot."""
    cdef Py_ssize_t a, k
    cdef object source
    for a in range(s.width):
        k = 2 * (s.width * i + a)
        places[a].address = <char*>s.places[k]
        places[a].length = s.places[k + 1]
        places[a].dtype = s.kinds[s.width * i + a]
        places[a].nbytes = places[a].length * s.itemsize[s.width * i + a]
        places[a].writable = True       # a tensor's memory is writable
        places[a].contiguous = True     # laid_out(): one dense layout for all
        places[a].ndim = -1             # laid_out() compared the shapes
        # For messages: the tensor (a missing one's place is filled by place_of).
        source = s.tensor_at(i, a)
        places[a].source = <PyObject*>(source if source is not None else s.params[i])
    return 0


cdef int place_of(object tensor, Snapshot s, Py_ssize_t i, Py_ssize_t a,
                  Place* place) except -1:
    """``place`` for a new array ``a`` (state or extra) of kernel parameter
    ``i`` (made like it)."""
    if tensor is None or not s.laid_out(tensor, i, a, True):
        raise ValueError("a new state or extra array must be laid out as its parameter")
    place.address = <char*>PyLong_AsVoidPtr(DATA_PTR.of(tensor))
    place.length = <size_t>PyLong_AsSsize_t(NUMEL.of(tensor)) * s.reals[i]
    place.nbytes = place.length * s.itemsize[s.width * i + a]
    place.source = <PyObject*>tensor
    return 0
