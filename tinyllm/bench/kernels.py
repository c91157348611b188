"""Kernel timings: every implementation of every family at every size of the sweep.

tinyllm's implementations (the NumPy reference and Numba) are timed in this process through
the registry, ``tinyllm.kernels.get(family, impl)``, on inputs built by the family's
``FAMILY.inputs`` (float32, seed 0). torch's equivalents are timed in a separate process
(``torch_peer``) on the very same inputs: this process writes them to ``.npy`` files in a
temporary folder and the peer loads them, so the peer builds nothing itself. They can also
be timed in this one (impl ``"torch-inproc"``) to show how much the thread pools disturb
each other.

"fwd" times ``forward(*arrays)`` (a fresh output each call); "fwd out=" (the families in
``specs.OUT_FAMILIES``) ``forward(*arrays, out=buf)`` into one preallocated buffer;
"fwd+bwd" times ``backward(dout, forward(*arrays)[1])`` with a fixed random ``dout`` (families without a backward have "fwd" only). Each row becomes
a JSON record (see ``tinyllm.bench``). Timing is ``tinyllm.stopwatch``.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

from .. import kernels as K
from ..kernels._harness import random_like
from ..stopwatch import measure, summarize
from . import torch_peer
from .machine import run_json_child
from .specs import GBPS, OUT_PASS, make_inputs


class PeerError(RuntimeError):
    """The torch peer process failed; the message holds its last line of stderr."""


def run_peer(spec: dict, threads: int, timeout: float) -> dict:
    """Run ``torch_peer.py`` as a plain script (no tinyllm, no Numba in that process) with
    ``spec``; return its JSON."""
    return run_json_child([sys.executable, os.path.abspath(torch_peer.__file__)],
                          dict(spec, threads=threads), threads, timeout, "the torch peer",
                          PeerError)


def our_callables(spec, impl: str) -> dict:
    """{"fwd": fn, "fwd+bwd": fn} for tinyllm's ``impl`` of one kernel case."""
    k = K.get(spec.family, impl)
    rng = np.random.default_rng(0)
    arrays, opts = make_inputs(spec, rng)
    fns = {"fwd": lambda: k.forward(*arrays, **opts)}
    if OUT_PASS in spec.passes:
        buf = np.empty_like(k.forward(*arrays, **opts)[0])
        fns[OUT_PASS] = lambda: k.forward(*arrays, out=buf, **opts)
    if "fwd+bwd" in spec.passes:
        out, _ = k.forward(*arrays, **opts)
        dout = random_like(out, rng)
        fns["fwd+bwd"] = lambda: k.backward(dout, k.forward(*arrays, **opts)[1])
    return fns


def _row(spec, impl, pass_, stats) -> dict:
    flops, nbytes = spec.work(pass_)
    work = nbytes if spec.unit == GBPS else flops
    sec = stats["median_ms"] / 1e3
    rate = work / sec / 1e9
    return {"name": spec.family, "impl": impl, "size": spec.label, "pass": pass_,
            **{k: stats[k] for k in ("median_ms", "min_ms", "max_ms", "repeats")},
            "work": work, "unit": spec.unit, "rate": rate,
            "rate_min": work / (stats["max_ms"] / 1e3) / 1e9,
            "rate_max": work / (stats["min_ms"] / 1e3) / 1e9,
            "fraction_of_ceiling": None, "ceiling": None,
            "ratio_to_torch": None, "flops": flops, "bytes": nbytes,
            "intensity": flops / nbytes, "gflops_per_s": flops / sec / 1e9,
            "x": spec.x, "x_name": spec.x_name, "params": spec.params, "dtype": spec.dtype}


def _hand_over(value, folder: str, stem: str):
    """One argument of a kernel call as the peer reads it: an array as a ``.npy`` file, a
    plain value as itself."""
    if isinstance(value, np.ndarray):
        path = os.path.join(folder, stem + ".npy")
        np.save(path, value)
        return {"npy": path}
    return {"value": value.item() if isinstance(value, np.generic) else value}


def peer_case(spec, case_id: int, folder: str) -> dict:
    """The torch peer's description of one case: its inputs (built here by
    ``FAMILY.inputs``, seed 0, as for tinyllm's own timing) written under ``folder``."""
    arrays, opts = make_inputs(spec, np.random.default_rng(0))
    return {"id": case_id, "family": spec.family, "torch": spec.torch, "label": spec.label,
            "passes": list(spec.passes),
            "args": [_hand_over(a, folder, f"{case_id}_{j}") for j, a in enumerate(arrays)],
            "opts": {k: _hand_over(v, folder, f"{case_id}_{k}") for k, v in opts.items()}}


def run_kernels(specs: dict, timing: dict, *, threads: int, torch: bool,
                torch_inprocess: bool, log, peer_timeout: float) -> tuple:
    """(rows, notes, torch info or None): one row per family x size x implementation x
    pass."""
    rows, notes, peer_info = [], [], None
    cases = []                                  # specs the torch peer has an equivalent for
    for family, sweep in specs.items():
        impls = K.available(family)
        for spec in sweep:
            for impl in impls:
                if impl == "numpy" and not spec.ref:
                    notes.append(f"{family} {spec.label}: NumPy reference skipped (too slow "
                                 f"or too big at this size)")
                    continue
                try:
                    fns = our_callables(spec, impl)
                    for pass_ in spec.passes:
                        st = summarize(measure(fns[pass_], **timing))
                        rows.append(_row(spec, impl, pass_, st))
                        log(f"  {family:18s} {spec.label:28s} {impl:6s} {pass_:8s} "
                            f"{st['median_ms']:10.3f} ms")
                except Exception as e:  # noqa: BLE001  (one failing case must not lose the rest)
                    notes.append(f"{family} {spec.label} {impl} failed: "
                                 f"{type(e).__name__}: {e}")
                    log(f"  {notes[-1]}")
            if spec.torch:
                cases.append(spec)
    if torch and cases:
        log(f"  torch: {len(cases)} cases in a separate process ...")
        with tempfile.TemporaryDirectory(prefix="tinyllm-bench-") as folder:
            try:
                job = [peer_case(s, i, folder) for i, s in enumerate(cases)]
                res = run_peer({"job": "kernels", "timing": timing, "cases": job}, threads,
                               peer_timeout)
            except PeerError as e:
                notes.append(f"torch kernels not timed: {e}")
                log(f"  {e}")
            else:
                peer_info = res.get("torch")
                notes.extend(f"torch: {e}" for e in res.get("errors", []))
                for r in res["results"]:
                    rows.append(_row(cases[r["id"]], "torch", r["pass"],
                                     summarize(r["times_s"])))
    if torch and torch_inprocess and cases:
        log("  torch, in this process (beside Numba's pool) ...")
        rows.extend(_torch_inprocess(cases, timing, threads))
    ratio_to_torch(rows)
    return rows, notes, peer_info


def _torch_inprocess(specs, timing, threads) -> list:
    import torch
    torch.set_num_threads(threads)
    out = []
    for spec in specs:
        arrays, opts = make_inputs(spec, np.random.default_rng(0))
        fns = torch_peer.kernel_callables(torch, spec.torch, list(arrays), opts)
        for pass_ in spec.passes:
            st = summarize(measure(fns[pass_], **timing))
            out.append(_row(spec, "torch-inproc", pass_, st))
    return out


def apply_ceilings(rows: list, ceilings: dict) -> None:
    """Set each row's ``fraction_of_ceiling``: its rate over the copy bandwidth (GB/s
    figures) or the GEMM rate of its dtype (GFLOP/s figures); ``ceiling`` names which."""
    for r in rows:
        if r["unit"] == GBPS:
            key = "copy_GBps"
        else:
            key = "sgemm_GFLOPs" if r["dtype"] == "float32" else "dgemm_GFLOPs"
        c = ceilings[key]
        r["ceiling"] = key
        r["fraction_of_ceiling"] = r["rate"] / c if c > 0 else None


def ratio_to_torch(rows: list) -> None:
    """Set each row's ``ratio_to_torch`` = its median time / torch's (separate process)
    median time at the same kernel, size and pass (> 1: slower than torch)."""
    ref = {(r["name"], r["size"], r["pass"]): r["median_ms"] for r in rows
           if r["impl"] == "torch"}
    for r in rows:
        t = ref.get((r["name"], r["size"], r["pass"]))
        r["ratio_to_torch"] = r["median_ms"] / t if t else None
