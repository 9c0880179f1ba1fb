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

A training loop replaces every gradient each step; take_grads() checks the
new ones and makes their NumPy views in the same C loop.
"""
cimport numpy as cnp
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport Py_INCREF
from cpython.long cimport PyLong_AsSsize_t, PyLong_AsVoidPtr
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

cnp.import_array()

cdef object GRAD = "grad"
cdef object IS_CPU = "is_cpu"
cdef object LAYOUT = "layout"
cdef object DTYPE = "dtype"
cdef object SHAPE = "shape"
cdef object VERSION = "version"
cdef object MOMENTUM_BUFFER = "momentum_buffer"


cdef class Snapshot:
    """The tensors one param group's batch was built from, and where they lie.

    ``Snapshot(params, state, methods, uses_state)`` records, for every
    parameter ``p`` of ``params``: ``p`` itself and its place, ``p.grad`` and
    its place, and when ``uses_state`` the per-parameter dict
    ``state.get(p)``, its ``"momentum_buffer"`` and that buffer's place.  A
    tensor's place is its address and element count, and it must be
    contiguous: ``t.data = ...`` can keep a tensor object but move its
    memory, and ``t.data = t.data.t()`` or ``t.data = t.data[:k]`` keep even
    the address.  ``torch_facts`` are the unbound ``torch.Tensor.data_ptr``,
    ``numel`` and ``is_contiguous``, ``torch.strided``, and a dict from each
    torch dtype the kernels take to its NumPy type number.

    A ``state`` with a ``version`` attribute promises that the attribute
    changes whenever an entry of ``state`` is set or removed: while it is
    unchanged every parameter still maps to the same per-parameter dict, so
    check() need not look parameters up (hashing a tensor is a Python call).
    """

    cdef list params, grads, entries, bufs, dtypes, shapes
    cdef object state, data_ptr, numel, is_contiguous, strided, version
    cdef dict typenums
    cdef bint uses_state, valid, grads_forgotten
    cdef bytearray active   # per parameter: it had a gradient at the snapshot
    # Per parameter, the places of the parameter, its grad and its buffer:
    # address then element count; (0, 0) for a missing tensor.
    cdef uintptr_t* places
    cdef Py_ssize_t n

    def __cinit__(self, object params, object state, tuple torch_facts, bint uses_state):
        self.params = list(params)
        self.n = PyList_GET_SIZE(self.params)
        self.places = <uintptr_t*>PyMem_Malloc(6 * max(self.n, 1) * sizeof(uintptr_t))
        if self.places == NULL:
            raise MemoryError()
        self.data_ptr, self.numel, self.is_contiguous, self.strided, self.typenums = torch_facts
        self.state, self.uses_state = state, uses_state
        self.version = getattr(state, "version", None) if uses_state else None
        self.grads, self.entries, self.bufs, self.dtypes, self.shapes = [], [], [], [], []
        self.active = bytearray(self.n)
        cdef Py_ssize_t i
        cdef PyObject* entry
        try:
            if uses_state and not isinstance(state, dict):
                raise TypeError("state is not a dict")
            for i in range(self.n):
                p = self.params[i]
                g = PyObject_GetAttr(p, GRAD)
                entry = PyDict_GetItemWithError(state, p) if uses_state else NULL
                b = None if entry == NULL else (<object>entry).get(MOMENTUM_BUFFER)
                self.grads.append(g)
                self.active[i] = g is not None
                self.entries.append(None if entry == NULL else <object>entry)
                self.bufs.append(b)
                self.dtypes.append(PyObject_GetAttr(p, DTYPE))
                self.shapes.append(PyObject_GetAttr(p, SHAPE))
                self.record(p, 6 * i)
                self.record(g, 6 * i + 2)
                self.record(b, 6 * i + 4)
            self.valid = True
        except Exception:
            # A tensor without an address (sparse): never holds, so the
            # optimizer rebuilds its batch each step and reports the tensor.
            self.valid = False

    def __dealloc__(self):
        PyMem_Free(self.places)

    cdef int record(self, object tensor, Py_ssize_t k) except -1:
        """Store ``tensor``'s place at ``places[k:k + 2]``."""
        if tensor is None:
            self.places[k] = self.places[k + 1] = 0
        else:
            self.places[k] = <uintptr_t>PyLong_AsVoidPtr(
                PyObject_CallOneArg(self.data_ptr, tensor))
            self.places[k + 1] = <uintptr_t>PyLong_AsSsize_t(
                PyObject_CallOneArg(self.numel, tensor))
        return 0

    cdef bint moved(self, object tensor, Py_ssize_t k) except -1:
        """``tensor`` (not None) is no longer at the place ``places[k:k + 2]``,
        or is no longer contiguous."""
        return (<uintptr_t>PyLong_AsVoidPtr(PyObject_CallOneArg(self.data_ptr, tensor))
                != self.places[k]
                or <uintptr_t>PyLong_AsSsize_t(PyObject_CallOneArg(self.numel, tensor))
                != self.places[k + 1]
                or PyObject_CallOneArg(self.is_contiguous, tensor) is not True)

    cdef object grad_view(self, object g, Py_ssize_t i):
        """A read-only NumPy view of ``g``, parameter ``i``'s new gradient,
        recorded as the snapshot's; None if ``g`` is not a contiguous CPU
        tensor of the parameter's dtype and shape."""
        cdef object dtype = <object>PyList_GET_ITEM(self.dtypes, i)
        if (PyObject_GetAttr(g, IS_CPU) is not True
                or PyObject_GetAttr(g, LAYOUT) is not self.strided
                or PyObject_GetAttr(g, DTYPE) is not dtype
                or PyObject_GetAttr(g, SHAPE) != <object>PyList_GET_ITEM(self.shapes, i)
                or PyObject_CallOneArg(self.is_contiguous, g) is not True):
            return None
        cdef void* address = PyLong_AsVoidPtr(PyObject_CallOneArg(self.data_ptr, g))
        cdef cnp.npy_intp length = <cnp.npy_intp>self.places[6 * i + 1]  # the parameter's
        cdef cnp.ndarray view = cnp.PyArray_SimpleNewFromData(
            1, &length, self.typenums[dtype], address)
        Py_INCREF(g)
        cnp.PyArray_SetBaseObject(view, g)     # the view keeps g alive
        cnp.PyArray_CLEARFLAGS(view, cnp.NPY_ARRAY_WRITEABLE)
        self.grads[i] = g
        self.places[6 * i + 2] = <uintptr_t>address
        self.places[6 * i + 3] = <uintptr_t>length
        return view

    def forget_grads(self):
        """Let go of the gradients (``zero_grad(set_to_none=True)`` freed
        them); the next check() then reports at least GRADS."""
        self.grads = [None] * self.n
        self.grads_forgotten = True

    def check(self, object params, object state, bint uses_state,
              list views=None) -> int:
        """HOLDS if ``params`` and ``state`` show exactly the snapshot's
        tensors at the snapshot's places, GRADS if only gradients differ,
        else CHANGED (also when a parameter gained or lost its gradient).

        ``views``, if given, are the caller's NumPy views of the gradients
        of the parameters that have one, in order.  A GRADS answer then
        means they were brought up to date in place: every new gradient
        checked (a contiguous CPU tensor of its parameter's dtype and
        shape; else CHANGED), viewed and recorded.  After CHANGED the
        snapshot is spent: every later check says CHANGED.
        """
        cdef int found = self.compare(params, state, uses_state, views)
        if found == CHANGED:
            self.valid = False
        return found

    cdef int compare(self, object params, object state, bint uses_state,
                     list views) except -1:
        if not self.valid or type(params) is not list \
                or PyList_GET_SIZE(params) != self.n \
                or state is not self.state or uses_state != self.uses_state:
            return CHANGED
        cdef bint versioned = self.version is not None
        if versioned and PyObject_GetAttr(state, VERSION) != self.version:
            return CHANGED
        cdef Py_ssize_t i, k = 0
        cdef PyObject* entry
        cdef PyObject* buf
        cdef object p, g, view
        cdef int found = GRADS if self.grads_forgotten else HOLDS
        cdef list fresh = [] if views is not None else None
        try:
            for i in range(self.n):
                p = <object>PyList_GET_ITEM(params, i)
                if p is not <object>PyList_GET_ITEM(self.params, i) or self.moved(p, 6 * i):
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
                                self.moved(<object>buf, 6 * i + 4):
                            return CHANGED
                g = PyObject_GetAttr(p, GRAD)
                if (g is None) == self.active[i]:
                    return CHANGED
                if g is None:
                    continue
                if found == HOLDS or fresh is not None:
                    if g is <object>PyList_GET_ITEM(self.grads, i) and not self.moved(g, 6 * i + 2):
                        if fresh is not None:
                            fresh.append(views[k])
                    else:
                        found = GRADS
                        if fresh is not None:
                            view = self.grad_view(g, i)
                            if view is None:
                                return CHANGED
                            fresh.append(view)
                k += 1
        except Exception:
            return CHANGED  # the rebuild reports what is wrong
        if found == GRADS and fresh is not None:
            views[:] = fresh
            self.grads_forgotten = False
        return found
