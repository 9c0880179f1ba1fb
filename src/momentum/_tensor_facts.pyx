"""Facts about torch tensors, asked in C: the optimizer's check asks ten of
them per parameter every step, so what each call costs decides its speed.

``Fact(torch.Tensor.data_ptr)`` (a method that takes no argument) or
``Fact(torch.Tensor.dtype)`` (a property) calls the C function that the
descriptor wraps, as the descriptor itself would after its own checks: no
attribute look-up, bound method or argument parsing in between (10-20 ns of
the 40-60 ns a call through Python costs).  The same type check as the
descriptor's is made each call, so an object of another type raises
TypeError, never reaches torch's function.  A descriptor of another form
(torch may change them, or define one in Python) is called through Python.

Torch is not a build dependency: the descriptors are passed in.
"""
from cpython.object cimport PyObject, PyTypeObject, PyObject_TypeCheck

cdef extern from "Python.h":
    ctypedef struct PyMethodDef:
        void* ml_meth
        int ml_flags
    ctypedef struct PyMethodDescrObject:
        PyMethodDef* d_method
    ctypedef struct PyGetSetDef:
        void* get
        void* closure
    ctypedef struct PyGetSetDescrObject:
        PyGetSetDef* d_getset
    PyTypeObject PyMethodDescr_Type
    PyTypeObject PyGetSetDescr_Type
    int METH_NOARGS, METH_VARARGS, METH_KEYWORDS, METH_COEXIST
    object PyObject_CallOneArg(object, object)
    object PyObject_GetAttr(object, object)

ctypedef object (*NoArgsFunction)(object, PyObject*)
ctypedef object (*KeywordsFunction)(object, object, PyObject*)
ctypedef object (*Getter)(object, void*)

# How a Fact asks: the C function of a method of no arguments, of a method
# taking (args, kwargs), of a property; or through Python, calling the
# descriptor (a method) or getting the attribute (a property).
cdef enum:
    NO_ARGS
    ARGS_KWARGS
    GETTER
    CALL_IN_PYTHON
    GET_IN_PYTHON

cdef tuple NO_ARGUMENTS = ()


cdef class Fact:
    """One method of no arguments or property of a tensor type, asked in C.

    ``fact.of(tensor)`` returns what ``descr(tensor)`` (a method) or
    ``tensor.<name>`` (a property) would.
    """

    def __cinit__(self, object descr):
        self.descr = descr
        # A Python property or function (torch could define one in Python)
        # has no __objclass__: it is called through Python, as attributes are.
        self.name = getattr(descr, "__name__", None) or descr.fget.__name__
        self.owner = getattr(descr, "__objclass__", None)
        if self.owner is not None and not isinstance(self.owner, type):
            raise TypeError(f"{descr!r} belongs to no type")
        self.kind = CALL_IN_PYTHON if callable(descr) else GET_IN_PYTHON
        cdef int flags
        if type(descr) is <type>&PyMethodDescr_Type:
            flags = (<PyMethodDescrObject*>descr).d_method.ml_flags & ~METH_COEXIST
            self.fn = (<PyMethodDescrObject*>descr).d_method.ml_meth
            if flags == METH_NOARGS:
                self.kind = NO_ARGS
            elif flags == METH_VARARGS | METH_KEYWORDS:
                self.kind = ARGS_KWARGS
        elif (type(descr) is <type>&PyGetSetDescr_Type
                and (<PyGetSetDescrObject*>descr).d_getset.get != NULL):
            self.fn = (<PyGetSetDescrObject*>descr).d_getset.get
            self.closure = (<PyGetSetDescrObject*>descr).d_getset.closure
            self.kind = GETTER

    cdef object of(self, object tensor):
        if self.owner is not None and not PyObject_TypeCheck(tensor, <PyTypeObject*>self.owner):
            raise TypeError(f"{self.name} of a {type(tensor).__name__}, not a tensor")
        if self.kind == NO_ARGS:
            return (<NoArgsFunction>self.fn)(tensor, NULL)
        if self.kind == GETTER:
            return (<Getter>self.fn)(tensor, self.closure)
        if self.kind == ARGS_KWARGS:
            return (<KeywordsFunction>self.fn)(tensor, NO_ARGUMENTS, NULL)
        if self.kind == CALL_IN_PYTHON:
            return PyObject_CallOneArg(self.descr, tensor)
        return PyObject_GetAttr(tensor, self.name)

    def __call__(self, tensor):
        """``self.of(tensor)``, for tests."""
        return self.of(tensor)

    @property
    def direct(self) -> bool:
        """True if asked through the C function, False if through Python."""
        return self.kind not in (CALL_IN_PYTHON, GET_IN_PYTHON)
