"""Reporting a benchmark result (the dict ``tinyllm.bench.run`` returns): the stdout table,
the JSON file, the two PNG plots and the Markdown of ``benchmarks/RESULTS.md``.

- ``table(result)``: plain text, one line per kernel row and per end-to-end entry.
- ``write_json(result, path)``: written to a temporary file next to ``path``, then renamed.
- ``plot_times(result, path)``: time against size on log axes, one panel per kernel, one
  line per implementation (solid: forward, dashed: forward + backward).
- ``plot_roofline(result, path)``: each kernel at its largest size placed by arithmetic
  intensity (FLOPs / byte) and achieved GFLOP/s, under the roofs min(GEMM rate,
  intensity x copy bandwidth) measured on this machine.
- ``markdown(result)``: the body of ``benchmarks/RESULTS.md``.

The plots are drawn on ``matplotlib.figure.Figure`` objects (no pyplot state, matplotlib's
backend left as it is).
"""
from __future__ import annotations

import json
import math
import os
import tempfile

IMPL_ORDER = ("numpy", "numba", "torch", "torch-inproc")
IMPL_STYLE = {"numpy": ("tab:gray", "s"), "numba": ("tab:blue", "o"),
              "torch": ("tab:red", "^"), "torch-inproc": ("tab:orange", "v")}


def roofline_path(plot_path: str) -> str:
    """Where the roofline goes when the time plot goes to ``plot_path``."""
    stem, ext = os.path.splitext(plot_path)
    return f"{stem}_roofline{ext or '.png'}"


def _fmt_rate(v):
    return "-" if v is None else (f"{v:.3g}" if v < 100 else f"{v:,.0f}")


def _fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def _fmt_pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def _ms(r):
    return f"{r['median_ms']:.3f} ({r['min_ms']:.3f}-{r['max_ms']:.3f})"


def _sorted_kernels(rows):
    fam = []
    for r in rows:
        if r["name"] not in fam:
            fam.append(r["name"])

    def key(r):
        impl = IMPL_ORDER.index(r["impl"]) if r["impl"] in IMPL_ORDER else 99
        return (fam.index(r["name"]), r["x"], r["size"], r["pass"] != "fwd", impl)
    return sorted(rows, key=key)


def setup_lines(result) -> list:
    m, c = result["machine"], result["ceilings"]
    th = m["threads"]
    blas = ", ".join(f"{p['api']} {p['library']} {p['threads']}" for p in th.get("blas", []))
    v = m["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("python", "numpy", "scipy", "numba", "torch",
                                              "cupy", "tinyllm") if v.get(k))
    torch_th = m.get("torch_threads")
    return [f"CPU: {m['cpu']}, {m['cores']} cores; GPU: {m['gpu'] or 'none'}",
            f"threads: {m['threads_requested']} requested; BLAS [{blas}]; numba "
            f"{th.get('numba')} ({th.get('numba_layer')}); torch "
            f"{torch_th if torch_th is not None else '-'} (in its own process)",
            f"versions: {vers}",
            f"ceilings: copy {c['copy_GBps']:.1f} GB/s, sgemm {c['sgemm_GFLOPs']:.1f} GFLOP/s, "
            f"dgemm {c['dgemm_GFLOPs']:.1f} GFLOP/s"] + _load_line(m.get("load"))


def _load_line(load) -> list:
    if not load:
        return []

    def avg(v):
        return "-" if not v else f"{v[0]:.2f}"
    steal = load.get("steal_fraction")
    return [f"host: load average {avg(load.get('loadavg_start'))} before, "
            f"{avg(load.get('loadavg_end'))} after; CPU time stolen by the hypervisor "
            f"{'-' if steal is None else f'{100 * steal:.1f}%'}"]


def table(result) -> str:
    out = setup_lines(result)
    rows = _sorted_kernels(result["kernels"])
    if rows:
        out += ["", f"{'kernel':<19}{'size':<30}{'pass':<9}{'impl':<13}"
                    f"{'median ms (min-max)':>30}{'rate':>10} {'unit':<8}{'of ceil':>8}"
                    f"{'vs torch':>9}"]
        for r in rows:
            out.append(f"{r['name']:<19}{r['size']:<30}{r['pass']:<9}{r['impl']:<13}"
                       f"{_ms(r):>30}{_fmt_rate(r['rate']):>10} {r['unit']:<8}"
                       f"{_fmt_pct(r['fraction_of_ceiling']):>8}"
                       f"{_fmt_ratio(r['ratio_to_torch']):>9}")
    if result.get("e2e"):
        out += ["", f"{'e2e':<5}{'model':<36}{'impl':<9}{'train tok/s':>12}{'of sgemm':>9}"
                    f"{'peak MiB':>10}"
                    f"{'gen tok/s cache':>17}{'no cache':>10}  vs torch (train/cache/no cache)"]
        for e in result["e2e"]:
            if "error" in e:
                out.append(f"{e['config']:<5}{e['label']:<36}{e['impl']:<9}  {e['error']}")
                continue
            rt = e.get("ratio_to_torch") or {}
            ratios = "/".join(_fmt_ratio(rt.get(k)) for k in ("train", "generate_cache",
                                                               "generate_nocache"))
            out.append(f"{e['config']:<5}{e['label']:<36}{e['impl']:<9}"
                       f"{e['train']['tokens_per_s']:>12,.0f}"
                       f"{_fmt_pct(e['train'].get('fraction_of_ceiling')):>9}"
                       f"{e['memory_MiB']['peak_train']:>10,.0f}"
                       f"{e['generate_cache']['tokens_per_s']:>17,.1f}"
                       f"{e['generate_nocache']['tokens_per_s']:>10,.1f}  {ratios}")
    if result.get("notes"):
        out += [""] + [f"note: {n}" for n in result["notes"]]
    out.append(f"\n{'quick' if result['quick'] else 'full'} run, {result['seconds']:.0f} s; "
               "ratios are time / torch's time (> 1: slower than torch)")
    return "\n".join(out)


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(result, path: str) -> None:
    """Write ``result`` as JSON at ``path`` atomically (a temporary file beside it, then
    renamed), with the mode a plain ``open`` would give (0644 under the usual umask; mkstemp
    alone makes it 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".json", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(result), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _compact(v) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:g}"


def plot_times(result, path: str) -> str:
    from ..autograd.figures import new_figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, NullLocator
    rows = result["kernels"]
    fams = []
    for r in rows:
        if r["name"] not in fams:
            fams.append(r["name"])
    ncol = min(4, max(1, len(fams)))
    nrow = max(1, math.ceil(len(fams) / ncol))
    fig = new_figure(figsize=(4.2 * ncol, 3.3 * nrow + 0.6))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    impls = [i for i in IMPL_ORDER if any(r["impl"] == i for r in rows)]
    for ax, fam in zip(axes.flat, fams):
        mine = [r for r in rows if r["name"] == fam]
        for impl in impls:
            color, marker = IMPL_STYLE.get(impl, ("k", "x"))
            for pass_, ls in (("fwd", "-"), ("fwd+bwd", "--")):
                pts = sorted((r["x"], r["median_ms"], r["min_ms"], r["max_ms"]) for r in mine
                             if r["impl"] == impl and r["pass"] == pass_)
                if not pts:
                    continue
                xs, med, lo, hi = zip(*pts)
                ax.errorbar(xs, med, yerr=[[m - a for m, a in zip(med, lo)],
                                           [b - m for m, b in zip(med, hi)]],
                            color=color, marker=marker, ls=ls, ms=4, capsize=2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        xs = sorted({r["x"] for r in mine})
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(xs, [_compact(x) for x in xs])
        if len(xs) > 1:
            ax.set_xlim(xs[0] / 1.25, xs[-1] * 1.25)
        ax.set_title(fam, fontsize=10)
        ax.set_xlabel(mine[0]["x_name"])
        ax.set_ylabel("ms per call")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(fams):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=IMPL_STYLE.get(i, ("k", "x"))[0],
                      marker=IMPL_STYLE.get(i, ("k", "x"))[1], label=i) for i in impls]
    handles += [Line2D([], [], color="k", ls="-", label="forward"),
                Line2D([], [], color="k", ls="--", label="forward + backward")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    th = result["machine"]["threads_requested"]
    fig.suptitle(f"tinyllm kernels: median time per call against size, bars = min-max "
                 f"({result['machine']['cpu']}, {th} threads)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    return path


def plot_roofline(result, path: str) -> str:
    from matplotlib import colormaps
    from ..autograd.figures import new_figure
    c = result["ceilings"]
    rows = result["kernels"]
    fig = new_figure(figsize=(8, 5.5))
    ax = fig.subplots()
    ai = [r["intensity"] for r in rows] or [1.0]
    lo, hi = min(ai + [0.05]) / 2, max(ai + [200]) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for peak, name, ls in ((c["sgemm_GFLOPs"], "sgemm", "-"), (c["dgemm_GFLOPs"], "dgemm", ":")):
        ax.plot(xs, [min(peak, x * c["copy_GBps"]) for x in xs], "k", ls=ls, lw=1.2,
                label=f"roof: min({name} {peak:.0f} GFLOP/s, AI x copy {c['copy_GBps']:.1f} GB/s)")
    fams = []
    for r in rows:
        if r["name"] not in fams:
            fams.append(r["name"])
    cmap = colormaps["tab10"]
    for i, fam in enumerate(fams):
        mine = [r for r in rows if r["name"] == fam]
        xmax = max(r["x"] for r in mine)
        for r in mine:
            if r["x"] != xmax:
                continue
            marker = IMPL_STYLE.get(r["impl"], ("k", "x"))[1]
            filled = r["pass"] == "fwd"
            ax.scatter(r["intensity"], r["gflops_per_s"], marker=marker, s=40,
                       facecolors=cmap(i % 10) if filled else "none", edgecolors=cmap(i % 10))
        big = next(r["size"] for r in mine if r["x"] == xmax)
        ax.scatter([], [], color=cmap(i % 10), label=f"{fam} {big}")
    for impl in [i for i in IMPL_ORDER if any(r["impl"] == i for r in rows)]:
        ax.scatter([], [], marker=IMPL_STYLE[impl][1], facecolors="none", edgecolors="k",
                   label=impl)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs / byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("roofline: filled = forward, hollow = forward + backward", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_plots(result, path: str) -> list:
    return [plot_times(result, path), plot_roofline(result, roofline_path(path))]


def markdown(result, command: str = "python benchmarks/run_all.py") -> str:
    """The body of benchmarks/RESULTS.md for ``result``."""
    lines = ["# Benchmark results", "",
             f"Produced by `{command}` ({'quick' if result['quick'] else 'full'} run, "
             f"{result['seconds']:.0f} s, {result.get('date', '')}). Medians over repeats "
             "after a warm-up, with min-max; rates as a fraction of the ceilings measured in "
             "the same run; ratios are time / torch's time, torch timed in a process of its "
             "own (> 1: slower than torch).", ""]
    lines += [f"- {s}" for s in setup_lines(result)]
    lines += ["", "## Kernels", "",
              "| kernel | size | pass | impl | median ms (min-max) | rate | of ceiling | "
              "vs torch |", "|---|---|---|---|---:|---:|---:|---:|"]
    for r in _sorted_kernels(result["kernels"]):
        lines.append(f"| {r['name']} | {r['size']} | {r['pass']} | {r['impl']} | {_ms(r)} | "
                     f"{_fmt_rate(r['rate'])} {r['unit']} | "
                     f"{_fmt_pct(r['fraction_of_ceiling'])} | {_fmt_ratio(r['ratio_to_torch'])} |")
    if result.get("e2e"):
        lines += ["", "## End to end (GPT, float32, dropout 0, tied head)", "",
                  "| config | model | impl | params | train tok/s (min-max) | train of "
                  "sgemm | peak MiB (base) | gen tok/s, KV cache | gen tok/s, no cache | "
                  "vs torch (train / cache / no cache) |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for e in result["e2e"]:
            if "error" in e:
                lines.append(f"| {e['config']} | {e['label']} | {e['impl']} | "
                             f"{e['error']} | | | | | | |")
                continue
            t = e["train"]
            rt = e.get("ratio_to_torch") or {}
            mem = e["memory_MiB"]
            lines.append(
                f"| {e['config']} | {e['label']} | {e['impl']} | {e['params']:,} | "
                f"{t['tokens_per_s']:,.0f} ({t['tokens_per_s_min']:,.0f}-"
                f"{t['tokens_per_s_max']:,.0f}) | {_fmt_pct(t.get('fraction_of_ceiling'))} | "
                f"{mem['peak_train']:,.0f} "
                f"({mem['base']:,.0f}) | {e['generate_cache']['tokens_per_s']:,.1f} | "
                f"{e['generate_nocache']['tokens_per_s']:,.1f} | "
                + " / ".join(_fmt_ratio(rt.get(k)) for k in ("train", "generate_cache",
                                                              "generate_nocache")) + " |")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                         for p in result["plots"]]
    return "\n".join(lines) + "\n"
