"""``python -m momentum bench``: how fast the kernels are, honestly.

The report, in order: the machine and the build; a bitwise correctness gate
against :mod:`momentum.reference` over every storage layout the kernels are
built for (exit status 1 if any bit differs); how many elements of a 16-bit
parameter one step changes, torch's paths against ours (torch's fused step
leaves them unchanged); the memory bandwidth this build can reach (copy,
STREAM triad, and a plain C loop that moves sgd's bytes); each rule, storage
layout (:mod:`momentum._bench.storage`) and size against the plain C loop
moving that layout's bytes (:mod:`momentum._bench.ceilings`), the float32
call, the NumPy reference and the peers (PyTorch, also its 16-bit paths,
Numba, numexpr; for adam and adamw torch.optim.Adam/AdamW and DeepSpeed's
CPU Adam, for lion lion-pytorch: momentum._bench.adam_peers); the 16-bit
and Adam issues' speed targets, met or not; the cost of one call on 16
elements; whole sgd and AdamW steps over real models' parameter shapes.
Timing is described in :mod:`momentum._bench.timing`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from time import perf_counter
from typing import Callable, Mapping, Sequence

import numpy as np

import momentum
from momentum import _probe
from momentum._bench import ceilings, changed, machine, report, storage, workloads
from momentum._bench.peers import (C_LOOP, TORCH_MODES, Step, layout_peers, ours, set_threads,
                                   stored, torch_steps)
from momentum._bench.report import size
from momentum._bench.rules import ELEMENTS_MOVED, RULES, arrays, check_rules, missing_dtypes
from momentum._bench.storage import Layout
from momentum.rules import RULES as TABLE
from momentum._bench.timing import Runner, Timing, interleaved, loop
from momentum._workloads import load_workload

KI, MI = 1 << 10, 1 << 20
SIZES = (4 * KI, 64 * KI, 1 * MI, 32 * MI)
QUICK_SIZES = (4 * KI, 64 * KI, 1 * MI)
# Rows this large are measured on one thread and on all threads.  (The kernels
# split work from 128 Ki elements, but below 1 Mi waking a second thread buys
# little, and a 2-core machine shared with other work makes it cost a lot.)
PARALLEL_FROM = 1 * MI
OVERHEAD_N = 16
# The NumPy reference of a 16-bit layout takes seconds per call beyond this.
REFERENCE_16BIT_UP_TO = 1 * MI


@dataclass(frozen=True)
class Plan:
    """What one run measures and how hard it tries."""

    sizes: Sequence[int]
    threads: Sequence[int]      # thread counts for rows of PARALLEL_FROM or more
    repeats: int                # interleaved samples per candidate
    target: float               # seconds per sample, at least
    bandwidth_n: int            # float64 elements per array of the DRAM probe
    workloads: Sequence[str]
    every_layout: bool = False  # every dtype combination, not only storage.NAMED
    rules: Sequence[str] = RULES  # the rules of the kernel rows

    def threads_for(self, n: int) -> Sequence[int]:
        """The thread counts a row of ``n`` elements is measured at."""
        return self.threads if n >= PARALLEL_FROM else self.threads[:1]


_START = perf_counter()


def progress(message: str) -> None:
    """One line of progress on stderr, with seconds since start (the report goes to stdout)."""
    print(f"[bench {perf_counter() - _START:5.1f}s] {message}", file=sys.stderr, flush=True)


def rates(t: Timing, n: int, bytes_per_element: int) -> dict:
    """``t`` with Melem/s and GB/s (10^9 bytes) added."""
    return {**t.as_dict(), "Melem_per_s": n / t.median / 1e6,
            "GB_per_s": bytes_per_element * n / t.median / 1e9}


def timed(steps: Mapping[str, Step], plan: Plan,
          runners: Mapping[str, Runner] | None = None) -> dict[str, Timing]:
    """Time ``steps`` (one call each) and ``runners`` (k calls each) interleaved, as planned."""
    return interleaved({**{name: loop(step) for name, step in steps.items()}, **(runners or {})},
                       plan.repeats, plan.target)


def gate(impl: Mapping[str, Callable] | None = None) -> list[str]:
    """The correctness gate: momentum's rules (or ``impl``) against the reference."""
    return check_rules(impl or {rule: getattr(momentum, rule) for rule in RULES})


def bandwidth(plan: Plan) -> list[dict]:
    """Copy, triad and C fused loop GB/s on float64 arrays far larger than cache."""
    n = plan.bandwidth_n
    a, b, c = (np.ones(n) for _ in range(3))
    rows = []
    for threads in plan.threads:
        progress(f"bandwidth, {n // MI} Mi float64, {threads} thread(s)")
        timings = timed({}, plan, {
            "copy": lambda k: _probe.time_copy(a, b, k, threads),
            "triad": lambda k: _probe.time_triad(a, b, c, k, threads),
            C_LOOP: lambda k: _probe.time_fused(a, b, c, k, threads),
        })
        moved = {"copy": 2, "triad": 3, C_LOOP: 5}
        rows.append({"threads": threads, "n": n, "dtype": "float64",
                     "results": {k: rates(t, n, moved[k] * 8) for k, t in timings.items()}})
    return rows


def kernel_row(rule: str, layout: Layout, n: int, threads: int, arrays: Mapping,
               plan: Plan, dram: Mapping[int, float]) -> dict:
    """One rule in one storage layout at one size and thread count: every
    candidate and every C loop of the layout, interleaved."""
    set_threads(threads)
    table = TABLE[rule]
    peer_steps, missing = layout_peers(rule, layout, arrays)
    steps = {**stored(rule, layout, arrays), **peer_steps}
    if layout.uniform(table) not in ("float32", "float64") and n > REFERENCE_16BIT_UP_TO:
        del steps["reference"]
        missing["reference"] = f"not timed above {size(REFERENCE_16BIT_UP_TO)} in 16 bits"
    c_loops = ceilings.loops(layout, n, threads, rule)
    timings = timed(steps, plan, c_loops)
    moved, c_moved = layout.bytes_per_element(table), ceilings.bytes_per_element(layout, rule)
    results = {name: rates(t, n, c_moved if name in c_loops else moved)
               for name, t in timings.items()}
    ceiling = max(c_loops, key=lambda name: results[name]["GB_per_s"], default=None)
    ours_gbps = results["momentum"]["GB_per_s"]
    ref = timings.get("reference")
    return {
        "rule": rule, "layout": layout.label(table), "dtype": layout.uniform(table),
        "n": n, "threads": threads, "bytes_per_element": moved,
        "bytes_per_call": moved * n, "results": results, "missing": missing,
        "c_loops": list(c_loops), "ceiling": ceiling,
        "pct_of_c_loop": 100 * ours_gbps / results[ceiling]["GB_per_s"] if ceiling else None,
        "x_dram_c_loop": ours_gbps / dram[threads],
        "speedup_vs_reference": ref.median / timings["momentum"].median if ref else None,
    }


def kernels(plan: Plan, dram: Mapping[int, float]) -> list[dict]:
    """Every rule, storage layout, size and thread count of the plan; a
    layout NumPy cannot hold here (bfloat16 without ml_dtypes) is a row
    saying so.  Each row also gets its speed over the all-float32 row's."""
    rows = []
    for rule in plan.rules:
        for layout in storage.layouts(TABLE[rule], every=plan.every_layout):
            label = layout.label(TABLE[rule])
            for n in plan.sizes:
                try:
                    arrays = storage.make(layout, n, rule=TABLE[rule])
                except ImportError as error:
                    rows.append({"rule": rule, "layout": label, "n": n,
                                 "unavailable": str(error).split(":")[0]})
                    break
                for threads in plan.threads_for(n):
                    progress(f"{rule} {label} {size(n)} elements, {threads} thread(s)")
                    rows.append(kernel_row(rule, layout, n, threads, arrays, plan, dram))
                del arrays
    float32 = {(r["rule"], r["n"], r["threads"]): r["results"]["momentum"]["median_s"]
               for r in rows if r.get("dtype") == "float32"}
    for r in rows:
        if "results" in r:
            r["x_float32"] = float32[r["rule"], r["n"], r["threads"]] / r["results"]["momentum"]["median_s"]
    return rows


def call_overhead(plan: Plan) -> dict:
    """Microseconds per sgd call on 16 float32 elements, at the plan's fewest threads."""
    progress(f"call overhead, {OVERHEAD_N} elements")
    set_threads(plan.threads[0])
    data = arrays(OVERHEAD_N, np.float32)
    steps = ours("sgd", *data)
    torch_modes, missing = torch_steps(TORCH_MODES, [data[0]], [data[1]], [data[2]])
    steps.update({f"{mode} step": step for mode, step in torch_modes.items()})
    timings = timed(steps, plan)
    return {"n": OVERHEAD_N, "dtype": "float32", "threads": plan.threads[0], "missing": missing,
            "results": {k: {**t.as_dict(), "median_us": t.median * 1e6}
                        for k, t in timings.items()}}


def model_steps(plan: Plan) -> list[dict]:
    """Whole sgd steps over every tensor of each workload, at each thread count."""
    rows = []
    for name in plan.workloads:
        model = workloads.arena(load_workload(name)["shapes"])
        steps, missing = workloads.steps(model)
        elements = sum(v.size for v in model.param_views)
        for threads in plan.threads:
            progress(f"workload {name}, {threads} thread(s)")
            set_threads(threads)
            timings = timed(steps, plan)
            ours_s = timings[workloads.BASELINE].median
            rows.append({
                "name": name, "tensors": len(model), "elements": elements,
                "threads": threads, "missing": missing,
                "results": {k: {**rates(t, elements,
                                        ELEMENTS_MOVED["sgd"] * model.dtype.itemsize),
                                "median_ms": t.median * 1e3,
                                "ratio_to_momentum": t.median / ours_s}
                            for k, t in timings.items()},
            })
        # Free this model before the next is made: GPT-2 small alone takes 1.5 GB.
        del model, steps
    return rows


def adamw_model_steps(plan: Plan) -> list[dict]:
    """Whole float32 AdamW steps over every tensor of each workload, at each thread count."""
    moved = storage.Layout((("param", "float32"), ("grad", "float32"), ("buf", "float32")))
    moved = moved.bytes_per_element(TABLE["adamw"])
    rows = []
    for name in plan.workloads:
        model = workloads.adamw_arena(load_workload(name)["shapes"])
        steps, missing = workloads.adamw_steps(model)
        elements = sum(v.size for v in model.param_views)
        for threads in plan.threads:
            progress(f"AdamW workload {name}, {threads} thread(s)")
            set_threads(threads)
            timings = timed(steps, plan)
            ours_s = timings[workloads.ADAMW_BASELINE].median
            rows.append({
                "name": name, "tensors": len(model), "elements": elements,
                "threads": threads, "missing": missing, "rule": "adamw",
                "results": {k: {**rates(t, elements, moved), "median_ms": t.median * 1e3,
                                "ratio_to_momentum": t.median / ours_s}
                            for k, t in timings.items()},
            })
        del model, steps
    return rows


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line of ``python -m momentum bench``."""
    parser = argparse.ArgumentParser(prog="python -m momentum bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, sizes up to 1 Mi, only the many-small model (under a minute)")
    parser.add_argument("--json", metavar="FILE", help="write every result, with units, to FILE")
    parser.add_argument("--plot", metavar="FILE.png", help="plot GB/s against size (needs matplotlib)")
    parser.add_argument("--every-layout", action="store_true",
                        help="every storage dtype combination and rounding the kernels are "
                             "built for, not only the named layouts (much longer)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="run everything at N threads (default: 1, and all for large sizes)")
    # For the tests: a short run on chosen sizes and workloads.
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", help=argparse.SUPPRESS)
    parser.add_argument("--rules", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_plan(opts: argparse.Namespace) -> Plan:
    """The plan the command-line options ask for."""
    most = momentum.get_num_threads()
    threads = [opts.threads] if opts.threads else sorted({1, most})
    sizes = QUICK_SIZES if opts.quick else SIZES
    names = workloads.by_size()
    if opts.quick:
        names = names[:1]
    if opts.sizes:
        sizes = [int(s) for s in opts.sizes.split(",")]
    if opts.workloads is not None:
        names = [w for w in opts.workloads.split(",") if w]
    return Plan(sizes=sizes, threads=threads,
                repeats=3 if opts.quick else 7, target=1e-3 if opts.quick else 5e-3,
                bandwidth_n=16 * MI if opts.quick else 32 * MI, workloads=names,
                every_layout=opts.every_layout,
                rules=opts.rules.split(",") if opts.rules else RULES)


def unwritable(path: str) -> str | None:
    """Why ``path`` cannot be written as a file, or None when it can.

    Tried for real (opened for appending, and removed again if that created
    it): permission bits alone say nothing true for root, or for a read-only
    or special file system.
    """
    if os.path.isdir(path):
        return "is a directory"
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return (f"{folder} is not a folder" if os.path.exists(folder)
                else f"folder {folder} does not exist")
    existed = os.path.lexists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        return e.strerror or str(e)
    if not existed:
        os.remove(path)
    return None


def main(argv: Sequence[str]) -> int:
    """Run the benchmark; print the report; exit status 1 if the gate fails,
    2 if an output file cannot be written (checked before anything runs)."""
    opts = parse_args(argv)
    for option, path in (("--json", opts.json), ("--plot", opts.plot)):
        why = unwritable(path) if path else None
        if why:
            print(f"python -m momentum bench: cannot write {option} {path}: {why}",
                  file=sys.stderr)
            return 2
    if opts.plot:
        report.require_matplotlib()
    plan = make_plan(opts)
    results: dict = {"units": report.UNITS, "machine": machine.machine(),
                     "plan": {"sizes": list(plan.sizes), "threads": list(plan.threads),
                              "repeats": plan.repeats, "target_s": plan.target}}
    print("\n".join(machine.header_lines(results["machine"])), flush=True)
    print(report.plan_text(results["plan"]), flush=True)
    progress("correctness gate")
    failures = gate()
    results["correctness"] = {"passed": not failures, "failures": failures,
                              "unchecked_dtypes": missing_dtypes()}
    print(report.gate_text(failures, missing_dtypes()), flush=True)
    if failures:
        return 1
    progress("16-bit parameters changed by one step")
    results["changed"] = changed.rows()
    print(report.changed_text(results["changed"]), flush=True)
    results["bandwidth"] = bandwidth(plan)
    print(report.bandwidth_text(results["bandwidth"]), flush=True)
    dram = {row["threads"]: row["results"][C_LOOP]["GB_per_s"] for row in results["bandwidth"]}
    results["kernels"] = kernels(plan, dram)
    print(report.kernels_text(results["kernels"]), flush=True)
    print(report.peers_text(results["kernels"]), flush=True)
    print(report.targets_text(results["kernels"]), flush=True)
    print(report.adam_targets_text(results["kernels"]), flush=True)
    results["call_overhead"] = call_overhead(plan)
    print(report.overhead_text(results["call_overhead"]), flush=True)
    results["workloads"] = model_steps(plan)
    print(report.workloads_text(results["workloads"]), flush=True)
    results["adamw_workloads"] = adamw_model_steps(plan)
    print(report.workloads_text(results["adamw_workloads"], "adamw"), flush=True)
    set_threads(0)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote results to {os.path.abspath(opts.json)}")
    if opts.plot:
        report.plot(results, opts.plot)
        print(f"wrote plot to {os.path.abspath(opts.plot)}")
    return 0
