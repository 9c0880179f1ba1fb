# Argument checks shared by every entry point; see _checks.pyx.
cimport numpy as cnp
from momentum._kernels cimport sgd_hyper, heavy_ball_hyper
from momentum._schedule cimport DType

cdef cnp.ndarray as_array(object obj, str func, str name)
cdef DType dtype_of(cnp.ndarray a, str func, str name) except *
cdef int check_like(cnp.ndarray a, str name, cnp.ndarray ref, str ref_name,
                    str func) except -1
cdef int check_layout(cnp.ndarray a, str name, bint written, str func) except -1
cdef int check_disjoint(cnp.ndarray a, str a_name, cnp.ndarray b, str b_name,
                        str func) except -1
cdef double real_arg(object value, str name, str func) except? -1.0
cdef int check_rate(double value, str name, str func) except -1
cdef int check_dampening(double value, str func) except -1
cdef int check_pair(cnp.ndarray w, str w_name, cnp.ndarray grad, str grad_name,
                    str func, DType* dtype) except -1
cdef int check_buf(cnp.ndarray buf, str buf_name, cnp.ndarray param,
                   str param_name, cnp.ndarray grad, str grad_name,
                   bint written, str func) except -1
cdef int sgd_hyperparameters(sgd_hyper* h, object lr, object momentum,
                             object dampening, object weight_decay,
                             bint nesterov, bint maximize, bint first_step,
                             str func) except -1
cdef int heavy_ball_hyperparameters(heavy_ball_hyper* h, object lr,
                                    object momentum, object weight_decay,
                                    bint nesterov, bint maximize,
                                    str func) except -1
cdef int update_buffer_hyperparameters(sgd_hyper* h, object momentum,
                                       object dampening, str func) except -1
