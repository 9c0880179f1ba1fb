# The rules over sequences of arrays: every tensor's arrays are checked (with
# the checks of momentum._checks) into one Batch (momentum._batch), which
# shows the arrays of different tensors apart and only then runs the whole
# batch as ONE call, with the GIL released once.  Each rule's functions,
# ``<rule>(...)`` and ``<rule>_groups(groups)``, are generated from
# momentum.rules into _foreach_faces.pxi and hand their arguments to
# run_groups().
#
# What a tensor costs here is the point of the module, so the success path
# calls no Python code per tensor: the sequences are taken as tuples (a list
# is copied, pointers only), and the argument names that carry an index
# ('params[3]') are formatted only after a check has failed, by running that
# tensor's checks again with those names.
cimport numpy as cnp
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.list cimport PyList_AsTuple
from cpython.sequence cimport PySequence_Check
from libc.string cimport memcpy

from momentum._batch cimport Batch
from momentum._checks cimport (
    CHECK_FLAG, MAX_ARRAYS, MAX_HYPER, Place, RuleSpec, as_array, extra_names, has_extra,
    is_half, read_hyper,
    key_part, missing_array, numpy_place, pick_extra, read_hypers, read_rounding, source_of,
    spec_of, uses)
from momentum._kernels cimport MOMENTUM_ROUND_NEAREST, momentum_task
from momentum import _checks
from momentum.rules import ROUNDINGS, RULES

from collections.abc import Mapping

import numpy as np

cnp.import_array()

__all__ = [f(rule) for rule in RULES for f in (str, "{}_groups".format)]

# Per rule: the sequences' names ('params', ...), the hyperparameters' names
# and defaults, and the positions of those that may be given per tensor.
cdef list PLURALS = [tuple(a.plural for a in r.arrays) for r in RULES.values()]
cdef list SINGULARS = _checks.ARRAY_NAMES
cdef list HYPERS = [tuple((h.name, h.default) for h in r.hypers) for r in RULES.values()]
# The sequence the others' lengths are compared with: the first that is not
# optimizer state (params, or grads for update_buffer).
cdef list REFERENCE = [next(i for i, a in enumerate(r.arrays) if a.state_key is None)
                       for r in RULES.values()]
cdef list PER_TENSOR = [tuple(i for i, h in enumerate(r.hypers) if h.name in r.per_tensor)
                        for r in RULES.values()]
# The rounding's keywords (as codegen.storage() names them for foreach) and defaults.
cdef tuple STORAGE = (("rounding", "nearest"), ("state_rounding", "nearest"),
                      ("masters", None), ("comps", None), ("seed", 0), ("step", 0),
                      ("tensors", None))


# ---------------------------------------------------------------- sequences

cdef tuple as_items(object obj, str func, str name):
    """A sequence of arrays as a tuple, or TypeError.

    A list is copied (a pointer copy): Python code that runs during the
    checks (a buffer exporter, a flag's ``__bool__``) may change the caller's
    list, never ours.  An array (or any buffer) is refused: it is one tensor,
    not a sequence.
    """
    if type(obj) is tuple:
        return <tuple>obj
    if type(obj) is list:
        return PyList_AsTuple(obj)
    if (isinstance(obj, str) or PyObject_CheckBuffer(obj)
            or not PySequence_Check(obj)):
        raise TypeError(f"{func}(): '{name}' must be a sequence (list or "
                        f"tuple) of {'mappings' if name == 'groups' else 'arrays'}, "
                        f"not {type(obj).__name__}")
    return tuple(obj)


cdef int check_length(tuple seq, str name, Py_ssize_t n, str ref_name,
                      str func) except -1:
    if len(seq) != n:
        raise ValueError(f"{func}(): '{name}' has {len(seq)} items but '{ref_name}' has {n}")
    return 0


cdef inline bint is_flag(object x):
    return type(x) is bool or isinstance(x, np.bool_)


cdef bint is_one(object value, int check):
    """``value`` is one value of a hyperparameter checked as ``check``, not a
    sequence of one per tensor."""
    if check == CHECK_FLAG:
        return is_flag(value)
    return (isinstance(value, (str, bytes)) or not PySequence_Check(value)
            or (cnp.PyArray_Check(value) and cnp.PyArray_NDIM(value) == 0))


cdef tuple per_tensor_values(int index, int j, object value, Py_ssize_t n, str ref_name,
                             str func):
    """``value``, a sequence of one value per tensor of hyperparameter ``j``,
    as a tuple of doubles as the kernels read them (every item checked here,
    so that reading one later runs no Python code)."""
    cdef const RuleSpec* rule = spec_of(index)
    cdef str name = HYPERS[index][j][0]
    if (isinstance(value, (str, bytes)) or not PySequence_Check(value)
            or (cnp.PyArray_Check(value) and cnp.PyArray_NDIM(value) == 0)):
        kind = "bool" if rule.check[j] == CHECK_FLAG else "number"
        raise TypeError(f"{func}(): '{name}' must be a {kind} or a sequence "
                        f"of {kind}s, not {type(value).__name__}")
    cdef tuple items = tuple(value)
    check_length(items, name, n, ref_name, func)
    cdef double out[MAX_HYPER]
    cdef list checked = []
    cdef Py_ssize_t i
    for i in range(n):
        if rule.check[j] == CHECK_FLAG and not is_flag(items[i]):
            raise TypeError(f"{func}(): '{name}[{i}]' must be a bool, not "
                            f"{type(items[i]).__name__}")
        read_hyper(index, j, items[i], out, f"{func}")
        checked.append(out[j])
    return tuple(checked)


# -------------------------------------------------------------------- groups

cdef class Group:
    """One group's checked hyperparameters and sequences, ready to add."""
    cdef momentum_task task  # its hyperparameters and rounding, every task's
    cdef tuple seqs         # per array, then the rounding's extra: a tuple of
                            # items, or None if unused
    cdef list flags         # (position, one checked value per tensor), or None
    cdef tuple tensors      # the stochastic rounding's key per tensor, or None
    cdef str extra_plural   # 'masters' or 'comps'
    cdef set nearest        # tensors without their comp or master, or None
    cdef Py_ssize_t n


cdef Group prepare(int index, str func, tuple seqs, tuple values, tuple storage):
    """Check one group's hyperparameters, rounding (``storage``, as STORAGE
    names it) and sequences (rule ``index``)."""
    cdef const RuleSpec* rule = spec_of(index)
    cdef Group group = Group()
    rounding, state_rounding, masters, comps, seed, step, tensors = storage
    read_rounding(rule, rounding if rule.param >= 0 else "nearest", state_rounding, seed,
                  step, 0, &group.task, func)
    cdef tuple plurals = <tuple>PLURALS[index]
    cdef int i, j
    cdef list checked = None
    group.flags = None
    for j in <tuple>PER_TENSOR[index]:
        if not is_one(values[j], rule.check[j]):
            # one value per tensor: checked below, set per task by add_group;
            # the group's checks see the default in its place
            if checked is None:
                checked, group.flags = list(values), []
            group.flags.append((j, values[j]))
            checked[j] = HYPERS[index][j][1]
    read_hypers(rule, index, values if checked is None else tuple(checked), group.task.hyper,
                func)
    extra = pick_extra(rule, &group.task, masters, comps, "s", func)
    group.extra_plural = "masters" if masters is not None else "comps"
    cdef list items = [None] * (rule.narrays + 1)
    cdef int ref = <int>REFERENCE[index]
    items[ref] = as_items(seqs[ref], func, plurals[ref])
    group.n = len(items[ref])
    for i in range(rule.narrays):
        seq = seqs[i]
        if i == ref:
            continue
        if seq is None:
            if uses(rule, i, group.task.hyper):
                missing_array(index, i, group.task.hyper, func, plurals[i],
                              "a sequence of arrays")
            continue
        items[i] = as_items(seq, func, plurals[i])
        check_length(items[i], plurals[i], group.n, plurals[ref], func)
        if not uses(rule, i, group.task.hyper):
            items[i] = None
    if extra is not None:
        items[rule.narrays] = as_items(extra, func, group.extra_plural)
        check_length(items[rule.narrays], group.extra_plural, group.n, plurals[ref], func)
    group.seqs = tuple(items)
    group.tensors = None
    if tensors is not None:
        if isinstance(tensors, (str, bytes)) or not PySequence_Check(tensors):
            raise TypeError(f"{func}(): 'tensors' must be a sequence of ints, not "
                            f"{type(tensors).__name__}")
        group.tensors = tuple(tensors)
        check_length(group.tensors, "tensors", group.n, plurals[ref], func)
        for i in range(group.n):
            key_part(group.tensors[i], f"tensors[{i}]", func)
    if group.flags is not None:
        group.flags = [(j, per_tensor_values(index, j, flags, group.n, plurals[ref],
                                            func))
                       for j, flags in group.flags]
    return group


cdef class Names:
    """Names arrays for messages: 'params[3]', or 'groups[1].params[0]'."""
    cdef tuple plurals
    cdef list starts
    cdef list groups
    cdef bint grouped
    cdef int index

    def __call__(self, Py_ssize_t task, int array):
        """The name of place ``array`` of task ``task`` (see source_of)."""
        cdef Py_ssize_t k = 0
        while self.starts[k + 1] <= task:
            k += 1
        cdef Group group = <Group>self.groups[k]
        if group.nearest is None or task - self.starts[k] not in group.nearest:
            array = source_of(spec_of(self.index), &group.task, array)
        plural = group.extra_plural if array == len(self.plurals) else self.plurals[array]
        name = f"{plural}[{task - self.starts[k]}]"
        return f"groups[{k}].{name}" if self.grouped else name


cdef Names names_of(int index, list groups, bint grouped):
    """The names of the arrays of ``groups`` (made only to word an error)."""
    cdef Names names = Names()
    names.plurals = <tuple>PLURALS[index]
    names.starts = [0]
    names.groups = groups
    names.grouped = grouped
    names.index = index
    cdef Group group
    for group in groups:
        names.starts.append(names.starts[len(names.starts) - 1] + group.n)
    return names


cdef int add_group(Batch batch, int index, Group group, Py_ssize_t first,
                   list groups, bint grouped, str func) except -1:
    """Check every tensor of ``group`` into ``batch``; tensor ``j`` is task
    ``first + j`` of the batch of ``groups``."""
    cdef const RuleSpec* rule = spec_of(index)
    cdef Place places[MAX_ARRAYS]
    cdef momentum_task* task
    cdef Py_ssize_t j
    cdef int i, count
    cdef tuple seq, flags
    cdef bint extra = has_extra(rule, &group.task)
    cdef tuple singular = <tuple>SINGULARS[index], names
    cdef tuple with_extra = (extra_names(rule, &group.task, singular,
                                         group.extra_plural.rstrip("s")) if extra else singular)
    for j in range(group.n):
        task = batch.next()
        memcpy(task, &group.task, sizeof(momentum_task))
        task.tensor = first + j if group.tensors is None else <unsigned long long>group.tensors[j]
        if group.flags is not None:
            for position, flags in group.flags:
                task.hyper[<int>position] = <double>flags[j]
        count, names = rule.narrays, singular
        if extra:
            if (<tuple>group.seqs[rule.narrays])[j] is None:
                # no comp or master: a float32 parameter, stepped to nearest
                task.rounding = MOMENTUM_ROUND_NEAREST
                if group.nearest is None:
                    group.nearest = set()
                group.nearest.add(j)
            else:
                count, names = rule.narrays + 1, with_extra
        for i in range(count):
            seq = <tuple>group.seqs[source_of(rule, task, i)]
            if seq is None:
                continue
            obj = seq[j]
            if obj is None:
                missing_array(index, source_of(rule, task, i), task.hyper, func,
                              names_of(index, groups, grouped)(first + j, i), "an array")
            if not cnp.PyArray_Check(obj):
                obj = as_array(obj, func, names_of(index, groups, grouped)(first + j, i))
                if batch.held is None:
                    batch.held = []
                batch.held.append(obj)
            numpy_place(obj, &places[i])
        if extra and count == rule.narrays and is_half(places[rule.param].dtype):
            name = names_of(index, groups, grouped)
            raise TypeError(f"{func}(): '{group.extra_plural}[{j}]' is None but "
                            f"'{name(first + j, rule.param)}' is "
                            f"{(<object>places[rule.param].source).dtype}; rounding="
                            f"{ROUNDINGS[group.task.rounding]!r} needs one for a 16-bit "
                            f"parameter")
        try:
            batch.add(rule, places, names, func)
        except (TypeError, ValueError):
            # Word the error with indexed names: the same check fails again.
            batch.add(rule, places, task_names(names_of(index, groups, grouped), first + j,
                                               count), func)
            raise
    return 0


cdef tuple task_names(Names names, Py_ssize_t task, int narrays):
    """The names of task ``task``'s arrays (a function of its own: a
    generator expression in add_group would cost a closure every call)."""
    return tuple([names(task, i) for i in range(narrays)])


cdef int run_groups(int index, str func, list groups, bint grouped) except -1:
    """Check every tensor of every group (each a Group of rule ``index``),
    then run them all as one batch; nothing is written on error."""
    cdef Group group
    cdef Py_ssize_t total = 0, first = 0, k
    for group in groups:
        total += group.n
    cdef Batch batch = Batch(total)
    for k in range(len(groups)):
        group = <Group>groups[k]
        try:
            add_group(batch, index, group, first, groups, grouped, func)
        except (TypeError, ValueError) as e:
            if grouped and "groups[" not in str(e):
                raise type(e)(f"{e} (in groups[{k}])") from None
            raise
        first += group.n
    cdef Py_ssize_t pair[4]
    if batch.overlap(pair):
        names = names_of(index, groups, grouped)
        raise ValueError(f"{func}(): '{names(pair[0], pair[1])}' and "
                         f"'{names(pair[2], pair[3])}' overlap in memory")
    batch.run()
    return 0


cdef int run_group(int index, str func, tuple seqs, tuple values, tuple storage) except -1:
    """run_groups() for one group."""
    return run_groups(index, func, [prepare(index, func, seqs, values, storage)], False)


cdef int run_mappings(int index, str func, object groups) except -1:
    """run_groups() for ``groups``, a sequence of mappings, each holding a
    group's sequences (by their plural names) and hyperparameters."""
    cdef tuple items = as_items(groups, func, "groups")
    cdef tuple plurals = <tuple>PLURALS[index]
    known = (frozenset(plurals) | {name for name, _ in <tuple>HYPERS[index]}
             | {name for name, _ in STORAGE
                if spec_of(index).param >= 0 or name not in ("rounding", "masters", "comps")})
    cdef list prepared = []
    hyper_names = {name for name, _ in <tuple>HYPERS[index]}
    for k, group in enumerate(items):
        if not isinstance(group, Mapping):
            raise TypeError(f"{func}(): 'groups[{k}]' must be a mapping, not "
                            f"{type(group).__name__}")
        unknown = group.keys() - known
        if unknown:
            raise TypeError(f"{func}(): 'groups[{k}]' has unknown keys {sorted(unknown)}")
        values = []
        for name, default in <tuple>HYPERS[index]:
            if name not in group and default is None:
                raise TypeError(f"{func}(): 'groups[{k}]' has no {name!r}")
            values.append(group.get(name, default))
        seqs = []
        for i, plural in enumerate(plurals):
            if plural not in group and spec_of(index).when[i] < 0:
                raise TypeError(f"{func}(): 'groups[{k}]' has no {plural!r}")
            seqs.append(group.get(plural))
        # A rule with its own ``step`` (adam's count) keys its stochastic
        # rounding with it, as its one-group face passes 0 for the storage's
        # step: the mapping's ``step`` is the rule's hyperparameter only.
        storage = tuple([0 if name == "step" and "step" in hyper_names
                         else group.get(name, default) for name, default in STORAGE])
        try:
            prepared.append(prepare(index, func, tuple(seqs), tuple(values), storage))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{e} (in groups[{k}])") from None
    return run_groups(index, func, prepared, True)


include "_foreach_faces.pxi"
