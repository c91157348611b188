"""``tinyllm bench``: how fast the kernels and the GPT run here, against the machine's own
limits and against PyTorch.

    tinyllm bench [--quick] [--only NAME ...] [--json FILE] [--plot FILE.png]
                  [--threads N] [--repeats N] [--no-torch] [--torch-inprocess]
    python benchmarks/run_all.py          # the full run: JSON, plots and RESULTS.md

What a run does, in order:

1. applies the process-wide settings (``tinyllm.runtime``: Numba's threading layer) and
   pins the thread count (default: every core) of NumPy's BLAS (threadpoolctl), Numba and
   torch (its own process gets the same count), and records it with the CPU and versions;
2. measures the ceilings: copy bandwidth (GB/s) and sgemm / dgemm (GFLOP/s) (``ceilings``),
   at the start and again at the end (the higher counts; a drift over 10% gets a note);
3. times each kernel family at each size of its sweep (``specs``) for each implementation
   (the NumPy reference, Numba, torch when it imports) and pass
   ("fwd", "fwd+bwd"), after a warm-up, as the median with min and max over repeats
   (``kernels``); torch runs in a separate process (``torch_peer``) so that its thread
   pool and Numba's do not share the two cores;
4. end to end, for config A (4L/4H/128, block 128, batch 16: the ``small`` training
   preset) and config B (6L/6H/384, block 256, batch 8: the ``medium`` one): GPT
   training tokens/s and peak memory, and greedy generation tokens/s with and without the
   KV cache, each beside the same model in torch (``e2e``);
5. prints a table, writes the JSON and the plots (``report``).

``--quick`` shrinks every sweep to two small sizes and the end-to-end runs to a few steps
(about a minute); ``--only`` picks kernel families (and ``e2e``); the ceilings are always
measured.

JSON (``run`` returns the same dict)::

    {"quick": bool, "seconds": float, "date": str, "command": str,
     "machine": {"cpu": str, "cores": int, "platform": str, "gpu": str | null,
                 "threads_requested": int, "torch_threads": int | null,
                 "threads": {"blas": [{"api", "threads", "version", "library"}],
                             "numba": int, "numba_layer": str},
                 "numpy_blas": str | null, "versions": {"python", "numpy", "scipy", "numba",
                 "llvmlite", "threadpoolctl", "torch", "cupy", "tinyllm": str | null},
                 "load": {"loadavg_start", "loadavg_end": [1, 5, 15 min], "steal_fraction"}},
     "ceilings": {"copy_GBps": float, "sgemm_GFLOPs": float, "dgemm_GFLOPs": float,
                  "start": {the same three}, "end": {the same three},
                  "detail": {"start" | "end": {"copy": {...}, "sgemm": {...},
                                               "dgemm": {...}}}},
     "kernels": [{"name": family, "impl": "numpy" | "numba" | "torch"
                  | "torch-inproc", "size": str, "pass": "fwd" | "fwd+bwd",
                  "median_ms", "min_ms", "max_ms": float, "repeats": int,
                  "work": float (bytes or FLOPs of one call, as "unit" says),
                  "unit": "GB/s" | "GFLOP/s", "rate": float (work / median time, in unit),
                  "rate_min", "rate_max": float (from the slowest / fastest repeat),
                  "fraction_of_ceiling": float (rate / the ceiling named in "ceiling":
                  "copy_GBps" for GB/s, "sgemm_GFLOPs" for float32 GFLOP/s),
                  "ratio_to_torch": float | null (median time / torch's median time),
                  "flops", "bytes": float, "intensity": float (flops / bytes),
                  "gflops_per_s": float, "x": int, "x_name": str (the sweep variable),
                  "params": {...}, "dtype": "float32"}, ...],
     "e2e": [{"config": "A" | "B", "label": str, "impl": "tinyllm" | "torch",
              "vocab_size": int, "params": int,
              "train": {"median_ms", "min_ms", "max_ms" (one step), "repeats",
                        "tokens_per_step", "tokens_per_s", "tokens_per_s_min",
                        "tokens_per_s_max", "flops_per_token" (6 N + 12 L C T),
                        "gflops_per_s", "fraction_of_ceiling" (of sgemm)},
              "generate_cache", "generate_nocache": {"median_ms", ... (one whole
                        generation), "tokens", "tokens_per_s", ...},
              "memory_MiB": {"base" (after imports), "after_model", "peak_train" (peak
                            resident memory over the timed training steps),
                            "peak_is_train_only": bool},
              "ratio_to_torch": {"train", "generate_cache", "generate_nocache"} | null,
              "kernel_impl": "numba" | "numpy" | null (torch), "threads": {...}}
             | {"config", "label", "impl", "error": str}, ...],
     "notes": [str, ...],          # skipped references, torch peer failures, a noisy host
     "plots": [str, ...], "phases_s": {"ceilings", "kernels", "e2e": seconds}}

``machine.load`` holds the load average before and after and ``steal_fraction``, the
share of CPU time the hypervisor gave to other guests during the run (above 5% a note
says the figures are noisy).

Progress lines go to stderr, the table to stdout. There is one kernel record per
implementation x size x pass. Bad input (an unknown
``--only`` name, an output path that cannot be written, ``--threads`` out of range) raises
``BenchUsageError`` before anything is measured; the CLI turns it into one line and exit 2.
"""
from __future__ import annotations

import os
import sys
import time

from ..kernels import FAMILIES

NAMES = FAMILIES + ("e2e",)


class BenchUsageError(ValueError):
    """A bad benchmark option (the command line prints it as one line, exit 2)."""


def check_output(path: str, flag: str, suffix: str | None = None) -> None:
    """Raise BenchUsageError unless a file can be written at ``path``."""
    if suffix and not path.lower().endswith(suffix):
        raise BenchUsageError(f"{flag} must name a {suffix} file, got {path!r}")
    if os.path.isdir(path):
        raise BenchUsageError(f"{flag} {path!r} is a folder, not a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise BenchUsageError(f"{flag} {path!r}: the folder {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path)
                                                     and not os.access(path, os.W_OK)):
        raise BenchUsageError(f"{flag} {path!r} is not writable")


def parse_only(only) -> list | None:
    """``--only`` values (repeatable, comma-separated) -> names, or None for everything."""
    if not only:
        return None
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    for n in names:
        if n not in NAMES:
            raise BenchUsageError(f"--only: unknown name {n!r}; choose from "
                                  f"{', '.join(NAMES)}")
    return names


def check_args(only=None, json_path=None, plot_path=None, threads=None, repeats=None):
    from .machine import max_threads
    from .report import roofline_path
    names = parse_only(only)
    if json_path is not None:
        check_output(json_path, "--json")
    if plot_path is not None:
        check_output(plot_path, "--plot", ".png")
        check_output(roofline_path(plot_path), "--plot (its roofline)", ".png")
    if threads is not None and not 1 <= threads <= max_threads():
        raise BenchUsageError(f"--threads must be in [1, {max_threads()}], got {threads}")
    if repeats is not None and repeats < 1:
        raise BenchUsageError(f"--repeats must be at least 1, got {repeats}")
    return names


def timing_settings(quick: bool, repeats: int | None) -> dict:
    """Keyword arguments of ``tinyllm.stopwatch.measure`` for this run."""
    if repeats is not None:
        return {"warmup": 1, "min_repeats": repeats, "max_repeats": repeats, "budget_s": 0.0}
    if quick:
        return {"warmup": 1, "min_repeats": 3, "max_repeats": 10, "budget_s": 0.1}
    return {"warmup": 2, "min_repeats": 5, "max_repeats": 50, "budget_s": 1.0}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(quick: bool = False, only=None, json_path: str | None = None,
        plot_path: str | None = None, threads: int | None = None, repeats: int | None = None,
        torch: bool = True, torch_inprocess: bool = False, log=_stderr, out=print,
        command: str | None = None) -> dict:
    """Run the benchmark (see the module docstring); returns the JSON dict."""
    from .. import runtime
    from . import machine, report
    from .ceilings import combine, measure_ceilings
    from .e2e import apply_ceilings as e2e_apply
    from .e2e import run_e2e
    from .kernels import apply_ceilings as kernels_apply
    from .kernels import run_kernels
    from .specs import kernel_specs, model_specs
    names = check_args(only, json_path, plot_path, threads, repeats)
    threads = threads or min(machine.cores(), machine.max_threads())
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    timing = timing_settings(quick, repeats)
    have_torch = torch and machine.torch_installed()
    notes = []
    if torch and not have_torch:
        notes.append("torch is not installed: no torch figures")
    try:
        load_start = os.getloadavg()
    except OSError:
        load_start = None
    ticks = machine.cpu_ticks()
    phases = {}
    runtime.configure()                  # Numba's threading layer, before any kernel runs
    pinned = runtime.Pinned(threads)
    try:
        info = machine.describe(threads)
        log(f"tinyllm bench ({'quick' if quick else 'full'}), {threads} threads: ceilings ...")
        start = measure_ceilings(quick, threads)
        phases["ceilings"] = time.perf_counter() - t0
        specs = {f: s for f, s in kernel_specs(quick).items() if names is None or f in names}
        timeout = 600 if quick else 3600
        rows, peer_info = [], None
        if specs:
            rows, more, peer_info = run_kernels(
                specs, timing, threads=threads, torch=have_torch,
                torch_inprocess=torch_inprocess, log=log,
                peer_timeout=timeout)
            notes += more
            phases["kernels"] = time.perf_counter() - t0 - sum(phases.values())
        entries = []
        if names is None or "e2e" in names:
            entries, more = run_e2e(model_specs(quick), threads=threads, torch=have_torch,
                                    log=log, timeout=timeout)
            notes += more
            phases["e2e"] = time.perf_counter() - t0 - sum(phases.values())
        log("  ceilings again ...")
        ceilings, drift = combine(start, measure_ceilings(quick, threads))
        phases["ceilings"] += time.perf_counter() - t0 - sum(phases.values())
        if drift:
            notes.append(drift)
        kernels_apply(rows, ceilings)
        e2e_apply(entries, ceilings)
        info["threads"] = machine.thread_info()
    finally:
        pinned.restore()
    info["load"] = machine.load_report(ticks, load_start)
    steal = info["load"]["steal_fraction"]
    if steal is not None and steal > 0.05:
        notes.append(f"{100 * steal:.0f}% of the CPU time was stolen by the hypervisor "
                     f"during this run: a shared, busy host; the figures are noisy")
    info["torch_threads"] = (peer_info or {}).get("threads")
    if info["torch_threads"] is None:
        info["torch_threads"] = next((e["threads"]["torch"] for e in entries
                                      if e.get("impl") == "torch" and "threads" in e), None)
    result = {"quick": bool(quick), "seconds": 0.0,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "command": command or " ".join(["tinyllm", "bench"] + (["--quick"] if quick
                                                                      else [])),
              "machine": info, "ceilings": ceilings, "kernels": rows, "e2e": entries,
              "notes": notes, "plots": [], "phases_s": phases}
    if plot_path is not None:
        result["plots"] = report.write_plots(result, plot_path)
    result["seconds"] = time.perf_counter() - t0
    if json_path is not None:
        report.write_json(result, json_path)
    if out is not None:
        out(report.table(result))
    return result


__all__ = ["run", "check_args", "BenchUsageError", "NAMES"]
