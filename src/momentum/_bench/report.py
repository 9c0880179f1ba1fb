"""The benchmark's results as text tables and as a plot."""
from __future__ import annotations

from typing import Iterable

from momentum._bench import targets
from momentum._bench.ceilings import AVX512, HARDWARE, PORTABLE
from momentum._bench.peers import C_LOOP, PEERS

# One colour per candidate in every panel of the plot.
CANDIDATES = ("momentum", C_LOOP, "reference", *PEERS)

UNITS = {
    "median_s": "seconds per call (median of samples)",
    "q1_s": "seconds per call, first quartile", "q3_s": "seconds per call, third quartile",
    "Melem_per_s": "10^6 elements per second",
    "GB_per_s": "10^9 bytes per second: elements read + written (sgd, heavy_ball, lion 5, "
                "update_buffer 3, adam, adamw 7 without amsgrad, copy 2, triad 3, C fused "
                "loop 5) * itemsize / median_s",
    "median_us": "microseconds per call", "median_ms": "milliseconds per step",
    "bytes_per_call": "bytes", "pct_of_c_loop": "percent",
    "x_dram_c_loop": "ratio to the C fused loop's GB/s on arrays far larger than cache",
    "speedup_vs_reference": "reference seconds / momentum seconds",
    "ratio_to_momentum": "candidate seconds / momentum.foreach.sgd seconds",
}


def size(n: int) -> str:
    """``4096`` -> ``'4 Ki'``; sizes that are not a power-of-1024 multiple stay as they are."""
    for unit, scale in (("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return str(n)


def _iqr_pct(r: dict) -> str:
    return f"±{50 * (r['q3_s'] - r['q1_s']) / r['median_s']:.0f}%"


def _table(title: str, head: list[str], rows: list[list[str]], notes: list[str] = ()) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths)))
    out = ["", title, line(head), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out + [f"  {n}" for n in notes])


def plan_text(plan: dict) -> str:
    """What this run measures: sizes, threads, samples."""
    return (f"plan     sizes {', '.join(size(n) for n in plan['sizes'])}; threads "
            f"{', '.join(map(str, plan['threads']))}; {plan['repeats']} interleaved samples "
            f"of >= {plan['target_s'] * 1e3:g} ms per candidate, median ± half IQR")


def gate_text(failures: list[str], unchecked: dict[str, str] | None = None) -> str:
    """The correctness gate's verdict (and the dtypes it could not check)."""
    if not failures:
        skipped = "".join(f"; {d} layouts not checked: {why}" for d, why in (unchecked or {}).items())
        return ("\ncorrectness: every rule, storage layout and branch bitwise equal to "
                "momentum.reference" + skipped)
    return "\n".join(["\ncorrectness: FAILED, no speeds reported", *failures])


def changed_text(rows: list[dict]) -> str:
    """The fraction of a 16-bit parameter's elements one step changes, per candidate."""
    names = list(dict.fromkeys(k for r in rows for k in r["changed"]))
    body = [[r["dtype"], str(r["n"])] + [f"{100 * r['changed'][k]:.1f}%" if k in r["changed"]
                                          else "-" for k in names] for r in rows]
    return _table("Correctness: elements of a 16-bit parameter changed by one sgd step "
                  "(measured)", ["dtype", "n", *names], body,
                  ["one first step (buffer = gradient) at the typical hyperparameters from the "
                   "same standard normal param and grad;",
                   "float64, rounded: the step in float64, rounded to the dtype (what an exact "
                   "step changes). torch fused leaving parameters unchanged is pytorch issue "
                   "191763."] + _missing_notes(r["missing"] for r in rows))


def bandwidth_text(rows: list[dict]) -> str:
    """Copy, triad and C fused loop GB/s per thread count."""
    n = rows[0]["n"]
    body = [[str(r["threads"])] + [f"{r['results'][k]['GB_per_s']:.1f} {_iqr_pct(r['results'][k])}"
                                   for k in ("copy", "triad", C_LOOP)] for r in rows]
    return _table(f"Memory bandwidth, float64, {size(n)} elements per array (GB/s, median ± half IQR)",
                  ["threads", "copy", "triad", C_LOOP], body,
                  ["copy and triad count STREAM's bytes (writes to an array not read also cost a "
                   "read, not counted);",
                   "the C fused loop reads p, g, b and writes p, b in place, as sgd does: "
                   "the ceiling the rules are held to."])


def _available(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "results" in r]


def kernels_text(rows: list[dict]) -> str:
    """Each rule and layout against its C loop (same size), DRAM, float32 and the reference."""
    body = []
    for r in _available(rows):
        ours, ref = r["results"]["momentum"], r["results"].get("reference")
        body.append([r["rule"], r["layout"], size(r["n"]), str(r["threads"]),
                     str(r["bytes_per_element"]),
                     f"{ours['Melem_per_s'] / 1e3:.2f}", f"{ours['GB_per_s']:.1f}", _iqr_pct(ours),
                     f"{r['x_float32']:.2f}x",
                     *([f"{r['results'][r['ceiling']]['GB_per_s']:.1f}", _CEILING_TAGS[r["ceiling"]],
                        f"{r['pct_of_c_loop']:.0f}%"] if r["ceiling"] else ["-", "-", "-"]),
                     f"{r['x_dram_c_loop']:.2f}x",
                     f"{ref['GB_per_s']:.2f}" if ref else "-",
                     f"{r['speedup_vs_reference']:.1f}x" if ref else "-"])
    notes = [f"- {r['rule']} {r['layout']}: {r['unavailable']}"
             for r in rows if "unavailable" in r]
    return _table("Kernels: momentum in each storage layout vs the C loop moving its bytes, "
                  "float32, DRAM and momentum.reference",
                  ["rule", "layout", "size", "thr", "B/el", "Gelem/s", "GB/s", "IQR", "x f32",
                   "C GB/s", "C", "% C", "vs DRAM", "ref GB/s", "speed-up"], body,
                  ["layout: the dtype of each array in argument order (f32>bf16: a float32 "
                   "master written to a bfloat16 param), then the rounding if not nearest;",
                   "B/el: bytes read + written per element; x f32: the all-float32 call's time "
                   "/ this call's (same rule, size, threads);",
                   "C: the fastest plain C loop moving the layout's bytes (sgd's shape; "
                   "Adam's for adam and adamw, none for their float64 and kahan rows) on "
                   "same-size arrays: f = float fused loop, p = portable build, a = AVX-512 "
                   "build, h = vcvtneps2bf16;",
                   "% C: momentum's GB/s over that loop's; vs DRAM: over the float64 fused loop's "
                   "on arrays far larger than cache (above 1x = served from cache).",
                   "speed-up: reference time / momentum time."] + notes)


_CEILING_TAGS = {C_LOOP: "f", PORTABLE: "p", AVX512: "a", HARDWARE: "h"}


def peers_text(rows: list[dict]) -> str:
    """Each peer's GB/s and how many times longer it takes than momentum."""
    body = []
    for r in _available(rows):
        if all(peer in r["missing"] for peer in PEERS):
            continue
        ours = r["results"]["momentum"]["median_s"]
        cells = []
        for peer in PEERS:
            res = r["results"].get(peer)
            cells.append(f"{res['GB_per_s']:.1f} ({res['median_s'] / ours:.1f}x)" if res
                         else "-")
        body.append([r["rule"], r["layout"], size(r["n"]), str(r["threads"]),
                     f"{r['results']['momentum']['GB_per_s']:.1f}", *cells])
    return _table("Peers on identical data: GB/s (peer time / momentum time)",
                  ["rule", "layout", "size", "thr", "momentum", *PEERS], body,
                  _missing_notes(r["missing"] for r in _available(rows)))


def targets_text(rows: list[dict]) -> str:
    """The 16-bit issue's speed targets on this run's sgd rows: value, bound, met."""
    body = [[c.target, c.layout, size(c.n), str(c.threads), f"{c.value:.2f}",
             f"{'<=' if c.at_most else '>='} {c.bound:g}", "met" if c.met else "NOT met"]
            for c in targets.checks(rows)]
    if not body:
        return "\nTargets: none of the sizes they are set at were measured"
    met = sum(row[-1] == "met" for row in body)
    return _table(f"Targets of the 16-bit storage issue (sgd): {met} of {len(body)} met",
                  ["target", "layout", "size", "thr", "value", "bound", ""], body,
                  ["x: time of the named candidate / momentum's time; cost over nearest: "
                   "time / the bf16 nearest call's time - 1."])


def adam_targets_text(rows: list[dict]) -> str:
    """The Adam issue's speed targets on this run's adam, adamw and lion rows."""
    body = [[c.target, c.layout, size(c.n), str(c.threads), f"{c.value:.2f}",
             f">= {c.bound:g}", "met" if c.met else "NOT met"]
            for c in targets.adam_checks(rows)]
    if not body:
        return "\nAdam targets: none of the rows they are set on were measured"
    met = sum(row[-1] == "met" for row in body)
    return _table(f"Targets of the Adam issue: {met} of {len(body)} met",
                  ["target", "rule, layout", "size", "thr", "value", "bound", ""], body,
                  ["x: the named candidate's time / momentum's time; of the C loop: "
                   "momentum's GB/s / the fastest plain C loop's moving the same bytes."])


def _missing_notes(missing: Iterable[dict[str, str]]) -> list[str]:
    """One note per reason a peer is absent: ``'-' torch fused: not installed``."""
    why: dict[str, dict[str, None]] = {}
    for row in missing:
        for peer, reason in row.items():
            why.setdefault(reason, {})[peer] = None
    return [f"- {', '.join(peers)}: {reason}" for reason, peers in why.items()]


def overhead_text(row: dict) -> str:
    """Microseconds per call on 16 elements."""
    body = [[name, f"{r['median_us']:.2f}", _iqr_pct(r)] for name, r in row["results"].items()]
    return _table(f"Call overhead: sgd on {row['n']} {row['dtype']} elements, "
                  f"{row['threads']} thread(s)",
                  ["candidate", "µs/call", "IQR"], body, _missing_notes([row["missing"]]))


def workloads_text(rows: list[dict], rule: str = "sgd") -> str:
    """Milliseconds per whole optimizer step of ``rule``, and ratios to momentum.foreach's."""
    body = []
    for w in rows:
        for name, r in w["results"].items():
            body.append([w["name"], f"{w['tensors']}", f"{w['elements'] / 1e6:.1f}",
                         str(w["threads"]), name,
                         f"{r['median_ms']:.2f}", _iqr_pct(r), f"{r['GB_per_s']:.1f}",
                         f"{r['ratio_to_momentum']:.2f}x"])
    return _table(f"Model workloads: one float32 {rule} step over every tensor",
                  ["model", "tensors", "Melem", "thr", "candidate", "ms/step", "IQR", "GB/s",
                   "vs foreach"],
                  body, [f"vs foreach: candidate time / momentum.foreach.{rule} time "
                         "(above 1x: foreach faster)."]
                  + _missing_notes(w["missing"] for w in rows))


def require_matplotlib() -> None:
    """Fail early, with a clear message, when a plot is asked for without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'momentum-kernels[plot]'") from None


def plot(results: dict, path: str) -> None:
    """GB/s against size (log x) per rule (columns) and storage layout (rows)
    at one thread; each layout's fastest C loop dashed, DRAM ceiling as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = results["plan"]["threads"][0]
    rows = [r for r in _available(results["kernels"]) if r["threads"] == threads]
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    layouts = {rule: list(dict.fromkeys(r["layout"] for r in rows if r["rule"] == rule))
               for rule in rules}
    height = max(map(len, layouts.values()))
    dram = next(b for b in results["bandwidth"] if b["threads"] == threads)
    fig, axes = plt.subplots(height, len(rules), figsize=(5 * len(rules), 4 * height),
                             squeeze=False, sharex=True)
    for j, rule in enumerate(rules):
        for i in range(height):
            ax = axes[i][j]
            if i >= len(layouts[rule]):
                ax.axis("off")
                continue
            mine = [r for r in rows if r["rule"] == rule and r["layout"] == layouts[rule][i]]
            for colour, name in enumerate(CANDIDATES):
                pts = [(r["n"], r["results"][r["ceiling"] if name == C_LOOP else name]["GB_per_s"])
                       for r in mine if (r["ceiling"] if name == C_LOOP else name in r["results"])]
                if pts:
                    ax.plot(*zip(*pts), "--" if name == C_LOOP else "-", marker="o",
                            color=f"C{colour}", label="C loop (fastest)" if name == C_LOOP else name)
            ax.axhline(dram["results"][C_LOOP]["GB_per_s"], color="k", linestyle=":",
                       label=f"DRAM ceiling (C fused loop, {size(dram['n'])})")
            ax.set(xscale="log", yscale="log", title=f"{rule}, {layouts[rule][i]}, {threads} thread",
                   xlabel="elements", ylabel="GB/s")
            ax.grid(True, which="both", alpha=0.3)
    # The panel with the most candidates carries the legend.
    max(axes.flat, key=lambda a: len(a.get_lines())).legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
