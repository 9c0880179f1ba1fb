/* A downstream plain-C extension built against momentum's C ABI
 * (momentum.h), as tests/test_embedding.py builds it: it gets the running
 * kernel table once, at import, and runs momentum's sgd kernels on NumPy
 * arrays (any C-contiguous float32/float64 buffer), either calling the
 * kernels itself or through the table's threaded run().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>

#include "momentum.h"

/* The running table: it stays valid and follows momentum.set_isa. */
static const momentum_kernel_table *table;

/* Direct calls split each tensor into pieces of this many elements, so that
 * most calls start inside the arrays and off any vector boundary. */
#define PIECE 4099

/* A buffer of one array of the step, or none (obj is None). */
typedef struct {
    Py_buffer view;
    int held;
} array_view;

static int
get_array(PyObject *obj, int writable, array_view *out)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    out->held = 0;
    if (obj == Py_None)
        return 0;
    if (PyObject_GetBuffer(obj, &out->view, flags) < 0)
        return -1;
    out->held = 1;
    return 0;
}

static const char *
dtype_of(const Py_buffer *view)
{
    if (strcmp(view->format, "f") == 0 && view->itemsize == 4)
        return "float32";
    if (strcmp(view->format, "d") == 0 && view->itemsize == 8)
        return "float64";
    if (strcmp(view->format, "e") == 0 && view->itemsize == 2)
        return "float16";
    return NULL;
}

/* sgd(params, grads, bufs, *hyperparameters, nthreads): one sgd step for
 * every tensor i (bufs[i] may be None when momentum == 0).  nthreads < 0
 * calls the kernels directly, piece by piece; otherwise the tensors go to
 * table->run as one batch on up to nthreads threads. */
static PyObject *
sgd(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"params", "grads", "bufs", "lr", "momentum", "dampening",
                             "weight_decay", "nesterov", "maximize", "first_step",
                             "nthreads", NULL};
    PyObject *params, *grads, *bufs, *result = NULL;
    double lr, momentum, dampening, weight_decay;
    int nesterov, maximize, first_step, nthreads;
    Py_ssize_t ntasks, i, k;
    size_t offset = 0;
    momentum_task *tasks = NULL;
    array_view *views = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!ddddpppi", kwlist,
                                     &PyList_Type, &params, &PyList_Type, &grads,
                                     &PyList_Type, &bufs, &lr, &momentum, &dampening,
                                     &weight_decay, &nesterov, &maximize, &first_step,
                                     &nthreads))
        return NULL;
    ntasks = PyList_GET_SIZE(params);
    if (PyList_GET_SIZE(grads) != ntasks || PyList_GET_SIZE(bufs) != ntasks) {
        PyErr_SetString(PyExc_ValueError, "params, grads and bufs differ in length");
        return NULL;
    }
    tasks = calloc(ntasks ? ntasks : 1, sizeof(momentum_task));
    views = calloc(3 * (ntasks ? ntasks : 1), sizeof(array_view));
    if (tasks == NULL || views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < ntasks; i++) {
        momentum_task *t = &tasks[i];
        array_view *v = &views[3 * i];
        const char *dtype;
        char name[64];

        if (get_array(PyList_GET_ITEM(params, i), 1, &v[MOMENTUM_SGD_ARRAY_PARAM]) < 0
                || get_array(PyList_GET_ITEM(grads, i), 0, &v[MOMENTUM_SGD_ARRAY_GRAD]) < 0
                || get_array(PyList_GET_ITEM(bufs, i), 1, &v[MOMENTUM_SGD_ARRAY_BUF]) < 0)
            goto done;
        if (!v[MOMENTUM_SGD_ARRAY_PARAM].held || !v[MOMENTUM_SGD_ARRAY_GRAD].held) {
            PyErr_SetString(PyExc_TypeError, "param and grad must be arrays");
            goto done;
        }
        dtype = dtype_of(&v[MOMENTUM_SGD_ARRAY_PARAM].view);
        t->n = (size_t)(v[MOMENTUM_SGD_ARRAY_PARAM].view.len
                        / v[MOMENTUM_SGD_ARRAY_PARAM].view.itemsize);
        for (k = 0; k < 3; k++) {
            if (!v[k].held)
                continue;
            if (dtype == NULL || dtype_of(&v[k].view) == NULL
                    || strcmp(dtype_of(&v[k].view), dtype) != 0
                    || (size_t)(v[k].view.len / v[k].view.itemsize) != t->n) {
                PyErr_SetString(PyExc_TypeError,
                                "the arrays must be float32, float64 or float16, of one dtype and size");
                goto done;
            }
            t->arrays[k] = v[k].view.buf;
        }
        if (momentum != 0 && t->arrays[MOMENTUM_SGD_ARRAY_BUF] == NULL) {
            PyErr_SetString(PyExc_ValueError, "momentum != 0 needs a buf");
            goto done;
        }
        snprintf(name, sizeof name, "sgd:%s,%s,%s", dtype, dtype, dtype);
        t->kernel = momentum_find_kernel(table, name);
        if (t->kernel == NULL) {
            PyErr_Format(PyExc_RuntimeError, "momentum has no kernel %s", name);
            goto done;
        }
        t->offset = offset;
        offset += t->n;
        t->hyper[MOMENTUM_SGD_HYPER_LR] = lr;
        t->hyper[MOMENTUM_SGD_HYPER_MOMENTUM] = momentum;
        t->hyper[MOMENTUM_SGD_HYPER_DAMPENING] = dampening;
        t->hyper[MOMENTUM_SGD_HYPER_WEIGHT_DECAY] = weight_decay;
        t->hyper[MOMENTUM_SGD_HYPER_NESTEROV] = nesterov ? 1.0 : 0.0;
        t->hyper[MOMENTUM_SGD_HYPER_MAXIMIZE] = maximize ? 1.0 : 0.0;
        t->hyper[MOMENTUM_SGD_HYPER_FIRST_STEP] = first_step ? 1.0 : 0.0;
    }
    Py_BEGIN_ALLOW_THREADS
    if (nthreads >= 0) {
        table->run(tasks, (size_t)ntasks, nthreads);
    } else {
        for (i = 0; i < ntasks; i++) {
            size_t start;
            for (start = 0; start < tasks[i].n; start += PIECE) {
                size_t n = tasks[i].n - start < PIECE ? tasks[i].n - start : PIECE;
                tasks[i].kernel(&tasks[i], start, n);
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    if (views != NULL)
        for (i = 0; i < 3 * ntasks; i++)
            if (views[i].held)
                PyBuffer_Release(&views[i].view);
    free(views);
    free(tasks);
    return result;
}

/* The name of the kernel build in the running table. */
static PyObject *
isa(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(table->isa);
}

/* (abi_version, struct_size) of the table momentum_import_kernels() gives
 * now; raises what it raises. */
static PyObject *
check_import(PyObject *self, PyObject *unused)
{
    const momentum_kernel_table *t = momentum_import_kernels();
    if (t == NULL)
        return NULL;
    return Py_BuildValue("(kk)", (unsigned long)t->abi_version, (unsigned long)t->struct_size);
}

/* Every slot of the table: (name or None, kernel address or 0), with the
 * check that momentum_find_kernel finds each named kernel in its slot. */
static PyObject *
slots(PyObject *self, PyObject *unused)
{
    PyObject *list = PyList_New(0);
    size_t i;
    if (list == NULL)
        return NULL;
    for (i = 0; i < table->count; i++) {
        const char *name = table->names[i];
        momentum_kernel kernel = momentum_kernel_at(table, i);
        PyObject *item;
        if (name != NULL && momentum_find_kernel(table, name) != kernel) {
            Py_DECREF(list);
            return PyErr_Format(PyExc_AssertionError, "find_kernel(%s) is not slot %zu",
                                name, i);
        }
        item = Py_BuildValue("(zK)", name, (unsigned long long)(uintptr_t)kernel);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    if (momentum_kernel_at(table, table->count) != NULL) {
        Py_DECREF(list);
        PyErr_SetString(PyExc_AssertionError, "momentum_kernel_at past the end is not NULL");
        return NULL;
    }
    return list;
}

/* The constants of momentum_rules.h this file uses, by their names. */
static PyObject *
constants(PyObject *self, PyObject *unused)
{
    return Py_BuildValue(
        "{sisisisisisisisisisisisisisisi}",
        "ABI_VERSION", MOMENTUM_ABI_VERSION, "MAX_ARRAYS", MOMENTUM_MAX_ARRAYS,
        "MAX_HYPER", MOMENTUM_MAX_HYPER, "KERNEL_COUNT", MOMENTUM_KERNEL_COUNT,
        "SGD_SLOT", MOMENTUM_SGD_SLOT, "SGD_ARRAY_PARAM", MOMENTUM_SGD_ARRAY_PARAM,
        "SGD_ARRAY_GRAD", MOMENTUM_SGD_ARRAY_GRAD, "SGD_ARRAY_BUF", MOMENTUM_SGD_ARRAY_BUF,
        "SGD_HYPER_LR", MOMENTUM_SGD_HYPER_LR, "SGD_HYPER_MOMENTUM", MOMENTUM_SGD_HYPER_MOMENTUM,
        "SGD_HYPER_DAMPENING", MOMENTUM_SGD_HYPER_DAMPENING,
        "SGD_HYPER_WEIGHT_DECAY", MOMENTUM_SGD_HYPER_WEIGHT_DECAY,
        "SGD_HYPER_NESTEROV", MOMENTUM_SGD_HYPER_NESTEROV,
        "SGD_HYPER_MAXIMIZE", MOMENTUM_SGD_HYPER_MAXIMIZE,
        "SGD_HYPER_FIRST_STEP", MOMENTUM_SGD_HYPER_FIRST_STEP);
}

static PyMethodDef methods[] = {
    {"sgd", (PyCFunction)(void (*)(void))sgd, METH_VARARGS | METH_KEYWORDS, NULL},
    {"isa", isa, METH_NOARGS, NULL},
    {"check_import", check_import, METH_NOARGS, NULL},
    {"slots", slots, METH_NOARGS, NULL},
    {"constants", constants, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "embed_c", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit_embed_c(void)
{
    table = momentum_import_kernels();
    if (table == NULL)
        return NULL;
    return PyModule_Create(&module);
}
