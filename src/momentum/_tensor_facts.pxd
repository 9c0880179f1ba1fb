# One fact about a torch tensor, asked through the C function behind the
# torch.Tensor method or property; see _tensor_facts.pyx.
cdef class Fact:
    cdef object descr
    cdef object name
    cdef object owner
    cdef int kind
    cdef void* fn
    cdef void* closure

    cdef object of(self, object tensor)
