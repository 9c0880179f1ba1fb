/* momentum's C ABI: the kernel table, one task, and how to get them.
 *
 * A kernel updates elements [start, start + n) of one task's arrays in place.
 * task->arrays[i] points at element 0 of the rule's i-th array (in the order
 * of momentum.rules.RULES[rule].arrays; NULL for an array the call does not
 * use), task->hyper[j] is the rule's j-th hyperparameter as a double (flags
 * 1.0 or 0.0), in the order of RULES[rule].hypers; the
 * MOMENTUM_<RULE>_ARRAY_<NAME> and MOMENTUM_<RULE>_HYPER_<NAME> macros of
 * momentum_rules.h give both indices, MOMENTUM_<RULE>_SLOT its first slot.
 * A slot is one combination of the arrays' storage dtypes (MOMENTUM_FLOAT32,
 * ..._FLOAT64, ..._BFLOAT16, ..._FLOAT16): slot = first + sum of code_i *
 * MOMENTUM_NDTYPES^i.  Kernels check nothing: the arrays must be valid,
 * aligned, of the kernel's dtypes, and apart in memory, and the
 * hyperparameters must pass momentum's checks.
 *
 * 16-bit arrays are computed in float32 and rounded once, when stored: to
 * nearest even, or stochastically for the arrays whose bit is set in
 * task->stochastic, with random bits from a counter-based generator keyed on
 * (seed, step, tensor, array, element index within the tensor).  With
 * rounding MOMENTUM_ROUND_KAHAN the rule's 16-bit param has a compensation
 * buffer of its dtype at arrays[narrays]; with MOMENTUM_ROUND_MASTER the
 * rule's param is a float32 master and arrays[narrays] the 16-bit parameter
 * (dtype extra_dtype) written as its rounding.
 *
 * Get the table of the kernels built for the running CPU's best instruction
 * set (or the one momentum.set_isa chose) with momentum_import_kernels(),
 * declared when Python.h is included before this file; the table's isa and
 * kernels follow later momentum.set_isa calls.  Its run() runs a batch of
 * tasks over momentum's thread pool, as momentum.foreach does. */
#ifndef MOMENTUM_H
#define MOMENTUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "momentum_rules.h"

#ifdef __cplusplus
extern "C" {
#endif

struct momentum_task;
typedef void (*momentum_kernel)(const struct momentum_task *task, size_t start,
                                size_t n);

/* One kernel call over one tensor. */
typedef struct momentum_task {
    momentum_kernel kernel;
    size_t n;          /* elements of the tensor */
    size_t offset;     /* where the task starts in its batch's element count */
    char *arrays[MOMENTUM_MAX_ARRAYS];
    double hyper[MOMENTUM_MAX_HYPER];
    uint32_t rounding;     /* MOMENTUM_ROUND_NEAREST, _STOCHASTIC, _KAHAN, _MASTER */
    uint32_t stochastic;   /* bit i < narrays: array i's 16-bit stores round
                              stochastically; bit narrays: master's 16-bit
                              copy too (momentum's faces leave it 0) */
    uint32_t extra_dtype;  /* dtype code of arrays[narrays] (kahan, master) */
    uint32_t reserved;     /* 0 */
    uint64_t seed, step, tensor;   /* the stochastic rounding's key */
} momentum_task;

typedef struct momentum_kernel_table {
    uint32_t abi_version;      /* MOMENTUM_ABI_VERSION */
    uint32_t struct_size;      /* sizeof(momentum_kernel_table) */
    uint32_t task_size;        /* sizeof(momentum_task) */
    uint32_t reserved;
    const char *isa;           /* "baseline", "avx2", "avx512", "avx512bf16" */
    size_t count;              /* MOMENTUM_KERNEL_COUNT */
    const momentum_kernel *kernels;   /* by slot; NULL where not built */
    const char *const *names;         /* by slot: "sgd:float32,float32,float32" */
    /* Run tasks[0:ntasks], whose offsets lay them end to end (task i starts
     * at the sum of the n of the tasks before it), on up to nthreads threads
     * (0: momentum.get_num_threads()); on one thread where the offsets
     * are not so.  Safe to call without the GIL. */
    void (*run)(const momentum_task *tasks, size_t ntasks, int nthreads);
} momentum_kernel_table;

#define MOMENTUM_CAPSULE_NAME "momentum._dispatch.KERNELS"

/* The kernel in slot `slot`, or NULL. */
static inline momentum_kernel
momentum_kernel_at(const momentum_kernel_table *table, size_t slot)
{
    return slot < table->count ? table->kernels[slot] : NULL;
}

/* The kernel named `name` ("sgd:float32,float32,float32"), or NULL. */
static inline momentum_kernel
momentum_find_kernel(const momentum_kernel_table *table, const char *name)
{
    size_t i;
    for (i = 0; i < table->count; i++)
        if (table->names[i] != NULL && strcmp(table->names[i], name) == 0)
            return table->kernels[i];
    return NULL;
}

#ifdef Py_PYTHON_H
/* The running table, from an importable momentum of this ABI; NULL with a
 * Python exception set otherwise.  Call with the GIL held. */
static inline const momentum_kernel_table *
momentum_import_kernels(void)
{
    const momentum_kernel_table *table =
        (const momentum_kernel_table *)PyCapsule_Import(MOMENTUM_CAPSULE_NAME, 0);
    if (table == NULL)
        return NULL;
    if (table->abi_version != MOMENTUM_ABI_VERSION
            || table->struct_size < sizeof(momentum_kernel_table)
            || table->task_size != sizeof(momentum_task)) {
        PyErr_Format(PyExc_ImportError,
                     "momentum's kernel ABI is version %u (table of %u bytes); "
                     "this extension was built for version %d: rebuild it",
                     (unsigned)table->abi_version, (unsigned)table->struct_size,
                     MOMENTUM_ABI_VERSION);
        return NULL;
    }
    return table;
}
#endif

#ifdef __cplusplus
}
#endif
#endif
