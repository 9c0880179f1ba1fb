"""What a cached batch of ``momentum.torch.SGD`` was built from, re-checked in C.

The optimizer caches, per param group, the NumPy views (or arena slices) it
hands to the kernels.  They stay valid while every parameter, gradient and
momentum buffer is the same tensor object with the same memory address.
Checking that in a Python loop costs about 1 µs per parameter, more than the
kernel on small tensors; this loop does the same checks with direct C-API
calls.  It only calls Python objects (attributes, ``dict`` look-ups and the
``data_ptr`` method it is given), so torch is not a build dependency.

Every checked object is held by the snapshot, so no identity or address it
compares can be reused by another object while it lives.
"""
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsVoidPtr
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.stdint cimport uintptr_t

cdef extern from "Python.h":
    object PyObject_CallOneArg(object, object)
    object PyObject_GetAttr(object, object)
    PyObject* PyDict_GetItemWithError(object, object) except? NULL

# What check() found, the least a caller must rebuild.
HOLDS = 0    # everything as snapshot: the cached views are current
GRADS = 1    # only gradients differ (other tensors or other memory)
CHANGED = 2  # a parameter, its memory, a state entry or a buffer differs

cdef object GRAD = "grad"
cdef object VERSION = "version"
cdef object MOMENTUM_BUFFER = "momentum_buffer"


cdef class Snapshot:
    """The tensors one param group's batch was built from, and their addresses.

    ``Snapshot(params, state, data_ptr, is_contiguous, uses_state)``
    records, for every parameter ``p`` of the list ``params``: ``p`` itself,
    ``p.data_ptr()``, ``p.grad`` and its address, and when ``uses_state`` the
    per-parameter dict ``state.get(p)``, its ``"momentum_buffer"`` and that
    buffer's address.  ``data_ptr`` and ``is_contiguous`` are the unbound
    methods ``torch.Tensor.data_ptr`` and ``torch.Tensor.is_contiguous``:
    ``p.data = p.data.t()`` keeps the address but not the layout, so check()
    also asks each parameter whether it is still contiguous.

    A ``state`` with a ``version`` attribute promises that the attribute
    changes whenever an entry of ``state`` is set or removed: while it is
    unchanged every parameter still maps to the same per-parameter dict, so
    check() need not look parameters up (hashing a tensor is a Python call).
    """

    cdef list params, grads, entries, bufs
    cdef object state, data_ptr, is_contiguous, version
    cdef bint uses_state, valid
    cdef uintptr_t* addresses  # per parameter: its address, its grad's, its buffer's
    cdef Py_ssize_t n

    def __cinit__(self, list params, object state, object data_ptr,
                  object is_contiguous, bint uses_state):
        self.n = PyList_GET_SIZE(params)
        self.addresses = <uintptr_t*>PyMem_Malloc(3 * max(self.n, 1) * sizeof(uintptr_t))
        if self.addresses == NULL:
            raise MemoryError()
        self.params = list(params)
        self.state, self.data_ptr, self.uses_state = state, data_ptr, uses_state
        self.is_contiguous = is_contiguous
        self.version = getattr(state, "version", None) if uses_state else None
        self.grads, self.entries, self.bufs = [], [], []
        cdef Py_ssize_t i
        cdef PyObject* entry
        try:
            if uses_state and not isinstance(state, dict):
                raise TypeError("state is not a dict")
            for i in range(self.n):
                p = self.params[i]
                g = PyObject_GetAttr(p, GRAD)
                self.grads.append(g)
                self.addresses[3 * i] = self.address(p)
                self.addresses[3 * i + 1] = 0 if g is None else self.address(g)
                entry = PyDict_GetItemWithError(state, p) if uses_state else NULL
                self.entries.append(None if entry == NULL else <object>entry)
                b = None if entry == NULL else (<object>entry).get(MOMENTUM_BUFFER)
                self.bufs.append(b)
                self.addresses[3 * i + 2] = 0 if b is None else self.address(b)
            self.valid = True
        except Exception:
            # A tensor without an address (sparse): never holds, so the
            # optimizer rebuilds its batch each step and reports the tensor.
            self.valid = False

    def __dealloc__(self):
        PyMem_Free(self.addresses)

    cdef inline uintptr_t address(self, object tensor) except? 0:
        return <uintptr_t>PyLong_AsVoidPtr(PyObject_CallOneArg(self.data_ptr, tensor))

    def check(self, list params, object state, bint uses_state) -> int:
        """HOLDS if ``params`` and ``state`` show exactly the snapshot's
        tensors at the snapshot's addresses, GRADS if only gradients differ,
        else CHANGED."""
        if not self.valid or PyList_GET_SIZE(params) != self.n \
                or state is not self.state or uses_state != self.uses_state:
            return CHANGED
        cdef bint versioned = self.version is not None
        if versioned and PyObject_GetAttr(state, VERSION) != self.version:
            return CHANGED
        cdef Py_ssize_t i
        cdef PyObject* entry
        cdef PyObject* buf
        cdef object p, g
        cdef int found = HOLDS
        try:
            for i in range(self.n):
                p = <object>PyList_GET_ITEM(params, i)
                if p is not <object>PyList_GET_ITEM(self.params, i) \
                        or self.address(p) != self.addresses[3 * i] \
                        or PyObject_CallOneArg(self.is_contiguous, p) is not True:
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
                                self.address(<object>buf) != self.addresses[3 * i + 2]:
                            return CHANGED
                if found == HOLDS:
                    g = PyObject_GetAttr(p, GRAD)
                    if g is not <object>PyList_GET_ITEM(self.grads, i) or (
                            g is not None and self.address(g) != self.addresses[3 * i + 1]):
                        found = GRADS
        except Exception:
            return CHANGED  # the rebuild reports what is wrong
        return found
