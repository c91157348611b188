"""Where one GPT training step's time goes, op by op, beside PyTorch's profiler on the same
step (``tinyllm bench --profile``; ``benchmarks/profile_step.py`` writes the committed tables).

Each engine runs in a child process of its own, building the model and batch of
``tinyllm.bench.e2e`` (same config, same AdamW, same data):

- **tinyllm** (``python -m tinyllm.bench.profile '<spec-json>'``): ``warm_steps`` untimed
  steps, ``steps`` timed ones without the profiler (the step time), then ``steps`` more
  under ``tinyllm.stopwatch.OpProfile``: the engine records every graph node's forward and
  backward (seconds inside it, and the bytes of freshly allocated arrays it returned), the
  matrix-product tiles nested in each node, and the phases of the step (forward, backward,
  clip, optimiser, zero_grad). A phase's time outside its nodes is the Python and engine
  overhead between them (module calls, shape checks, the graph walk, gradient sums).
- **torch** (``torch_peer.py``, job ``"profile"``): the same protocol, with
  ``torch.profiler`` over the profiled steps and ``record_function`` around each phase;
  every aten op's self CPU time.

``categorise`` puts both engines' ops into the same buckets (matrix products, attention,
layer norm, GELU and the MLP's elementwise work, cross-entropy, embedding, other
elementwise and shape ops, optimiser, overhead), so that the table can say where one engine
spends more than the other. Figures are per step (totals over the profiled steps divided by
their number); the profiler's own cost makes a profiled step slower than an unprofiled one,
which is why both step times are shown.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from ..stopwatch import OpProfile

PHASES = ("forward", "backward", "clip", "optimiser", "zero_grad")
# (warm-up steps, timed steps and as many profiled ones): full and --quick
STEPS = {False: (8, 10), True: (2, 3)}


def child(spec: dict) -> dict:
    """tinyllm's side (runs in the child process)."""
    from .. import runtime
    runtime.configure(threads=int(spec["threads"]), keep_freed_memory=True)
    from .. import optim
    from .e2e import build
    model, opt, params, x, y, _ = build(spec)
    model.train()
    prof = OpProfile()

    def step(p):
        with p.phase("forward"):
            _, loss = model(x, y)
            lv = float(loss.data)
        if not math.isfinite(lv):
            raise RuntimeError(f"tinyllm GPT: the loss is {lv}")
        with p.phase("zero_grad"):
            opt.zero_grad()
        with p.phase("backward"):
            loss.backward()
        with p.phase("clip"):
            optim.clip_grad_norm_(params, 1.0)
        with p.phase("optimiser"):
            opt.step()

    plain = OpProfile()                       # phases timed, no op recording (not active)
    for _ in range(spec["warm_steps"]):
        step(plain)
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step(plain)
        times.append(time.perf_counter() - t0)
    t_prof = time.perf_counter()
    with prof:
        for _ in range(spec["steps"]):
            step(prof)
    t_prof = time.perf_counter() - t_prof
    n = spec["steps"]
    ops = [{"phase": ph, "name": name, "ms": 1e3 * r[0] / n, "calls": r[1] / n,
            "fresh_MB": r[2] / n / 2 ** 20} for (ph, name), r in prof.ops.items()]
    nested = [{"phase": ph, "node": node, "name": name, "ms": 1e3 * r[0] / n,
               "calls": r[1] / n} for (ph, node, name), r in prof.nested.items()]
    return {"engine": "tinyllm", "step_ms": 1e3 * float(np.median(times)),
            "step_ms_all": [1e3 * t for t in times],
            "profiled_step_ms": 1e3 * t_prof / n,
            "phases": {k: 1e3 * v[0] / n for k, v in prof.phases.items()},
            "ops": ops, "nested": nested}


# ------------------------------------------------------------------ categories

CATEGORIES = ("matrix products", "attention", "layer norm", "GELU / MLP elementwise",
              "cross-entropy", "embedding", "other elementwise + shape ops", "optimiser",
              "overhead (Python, engine, allocator)")


def _torch_category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
                            "aten::linear")) and "backward" not in n:
        return "matrix products"
    if "attention" in n:
        return "attention"
    if "layer_norm" in n:
        return "layer norm"
    if "gelu" in n:
        return "GELU / MLP elementwise"
    if any(k in n for k in ("log_softmax", "nll_loss", "cross_entropy")):
        return "cross-entropy"
    if "embedding" in n:
        return "embedding"
    if n.startswith("optimizer.") or any(k in n for k in ("_foreach", "lerp", "addcdiv",
                                                         "addcmul", "linalg_vector_norm")):
        return "optimiser"
    return "other elementwise + shape ops"


def _tinyllm_category(name: str) -> str:
    if name in ("Linear", "MatMul"):
        return "matrix products"
    if name.startswith(("attention", "decode_attention")):
        return "attention"
    if name.startswith("layernorm"):
        return "layer norm"
    if name.startswith("mlp"):
        return "GELU / MLP elementwise"
    if name.startswith("cross_entropy"):
        return "cross-entropy"
    if name == "Embedding":
        return "embedding"
    return "other elementwise + shape ops"


def _gemm_by_node(res: dict) -> dict:
    """{(phase, node): ms of matrix-product tiles inside that node} of a tinyllm result."""
    gemm = {}
    for r in res["nested"]:
        gemm[r["phase"], r["node"]] = gemm.get((r["phase"], r["node"]), 0.0) + r["ms"]
    return gemm


def categorise(res: dict) -> dict:
    """{category: ms per step} for one engine's result; the categories add up to the
    profiled step. tinyllm: a node's matrix-product tiles (nested) count as matrix products,
    the rest of the node under its own category; the optimiser, clip and zero_grad phases
    as the optimiser; a phase's time outside its nodes as overhead."""
    cat = dict.fromkeys(CATEGORIES, 0.0)
    step = res["profiled_step_ms"]
    if res["engine"] == "tinyllm":
        gemm = _gemm_by_node(res)
        inside = dict.fromkeys(res["phases"], 0.0)
        for r in res["ops"]:
            g = gemm.get((r["phase"], r["name"]), 0.0)
            cat["matrix products"] += g
            cat[_tinyllm_category(r["name"])] += r["ms"] - g
            inside[r["phase"]] = inside.get(r["phase"], 0.0) + r["ms"]
        for ph, ms in res["phases"].items():
            if ph in ("forward", "backward"):
                cat["overhead (Python, engine, allocator)"] += ms - inside.get(ph, 0.0)
            else:
                cat["optimiser"] += ms
    else:
        for r in res["ops"]:
            cat[_torch_category(r["name"])] += r["self_ms"]
    cat["overhead (Python, engine, allocator)"] += max(0.0, step - sum(cat.values()))
    return cat


# ------------------------------------------------------------------ running both

def run(models: list, *, threads: int, torch: bool, warm_steps: int, steps: int, log,
        timeout: float = 1800) -> list:
    """For each ModelSpec: {"config", "label", "tinyllm": result, "torch": result or an
    error}. Each engine in its own process."""
    from .e2e import vocab_size
    from .kernels import PeerError, run_peer
    from .machine import run_json_child
    V = vocab_size()
    out = []
    for ms in models:
        spec = {"model": ms.to_json(), "vocab_size": V, "threads": threads, "seed": 0,
                "warm_steps": warm_steps, "steps": steps}
        entry = {"config": ms.name, "label": ms.label}
        log(f"  profile config {ms.name} ({ms.label}), tinyllm ...")
        entry["tinyllm"] = run_json_child([sys.executable, "-m", "tinyllm.bench.profile"],
                                          spec, threads, timeout, "the tinyllm child",
                                          PeerError)
        if torch:
            log(f"  profile config {ms.name} ({ms.label}), torch ...")
            try:
                entry["torch"] = run_peer(dict(spec, job="profile"), threads, timeout)
            except PeerError as e:
                entry["torch"] = {"error": str(e)}
        out.append(entry)
    return out


def table(entries: list, top: int = 14) -> str:
    """The breakdown as Markdown: per configuration, the step times, the categories side by
    side, then each engine's heaviest ops."""
    lines = []
    for e in entries:
        ours, theirs = e["tinyllm"], e.get("torch")
        have = theirs is not None and "error" not in theirs
        lines.append(f"### Config {e['config']}: {e['label']}")
        lines.append("")
        head = f"step (unprofiled median): tinyllm {ours['step_ms']:.1f} ms"
        if have:
            head += (f", torch {theirs['step_ms']:.1f} ms: tinyllm's tokens/s = "
                     f"{theirs['step_ms'] / ours['step_ms']:.2f}x torch's")
        lines.append(head + ".")
        lines.append(f"Profiled step: tinyllm {ours['profiled_step_ms']:.1f} ms"
                     + (f", torch {theirs['profiled_step_ms']:.1f} ms" if have else "")
                     + " (the profilers' own cost included).")
        lines.append("")
        a = categorise(ours)
        b = categorise(theirs) if have else {}
        lines.append("| where | tinyllm ms | torch ms | tinyllm - torch |")
        lines.append("|---|---|---|---|")
        for c in CATEGORIES:
            tb = f"{b[c]:.2f}" if have else "-"
            diff = f"{a[c] - b[c]:+.2f}" if have else "-"
            lines.append(f"| {c} | {a[c]:.2f} | {tb} | {diff} |")
        lines.append(f"| **step** | {sum(a.values()):.2f} | "
                     + (f"{sum(b.values()):.2f} | {sum(a.values()) - sum(b.values()):+.2f} |"
                        if have else "- | - |"))
        lines.append("")
        lines.append("tinyllm, by graph node (ms per step; gemm = its matrix-product tiles; "
                     "fresh MB = arrays it allocated):")
        lines.append("")
        lines.append("| phase | node | ms | of which gemm | calls | fresh MB |")
        lines.append("|---|---|---|---|---|---|")
        gemm = _gemm_by_node(ours)
        for r in sorted(ours["ops"], key=lambda r: -r["ms"])[:top]:
            g = gemm.get((r["phase"], r["name"]), 0.0)
            lines.append(f"| {r['phase']} | {r['name']} | {r['ms']:.2f} | {g:.2f} | "
                         f"{r['calls']:.0f} | {r['fresh_MB']:.1f} |")
        for ph in PHASES:
            if ph in ours["phases"]:
                inside = sum(r["ms"] for r in ours["ops"] if r["phase"] == ph)
                lines.append(f"| {ph} | (whole phase; outside nodes: "
                             f"{ours['phases'][ph] - inside:.2f}) | "
                             f"{ours['phases'][ph]:.2f} | | | |")
        lines.append("")
        if have:
            lines.append("torch, by aten op (self CPU ms per step):")
            lines.append("")
            lines.append("| op | self ms | calls |")
            lines.append("|---|---|---|")
            for r in sorted(theirs["ops"], key=lambda r: -r["self_ms"])[:top]:
                lines.append(f"| {r['name']} | {r['self_ms']:.2f} | {r['calls']:.0f} |")
            lines.append("")
        elif theirs is not None:
            lines.append(f"torch: {theirs['error']}")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .machine import child_main
    return child_main(child, argv)


if __name__ == "__main__":
    sys.exit(main())
