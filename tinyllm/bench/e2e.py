"""End to end: GPT training and generation, tinyllm beside the same model in torch.

Each (configuration, engine) pair runs in a child process of its own, which only builds and
runs that one model, so its peak resident memory is that model's (plus its engine's
imports, reported as ``memory_MiB.base``):

    python -m tinyllm.bench.e2e '<spec-json>'          # tinyllm's child; prints JSON
    python tinyllm/bench/torch_peer.py '<spec-json>'   # torch's child (job "e2e")

What a child does, the same way in both engines:

1. builds the GPT of ``spec["model"]`` (dropout 0, tied head, float32, the char vocabulary
   of the embedded corpus) and AdamW (lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on the
   matrices only, as ``tinyllm.train.Trainer`` sets it up);
2. runs ``warm_steps`` training steps (this also loads the compiled kernels), then times
   ``train_steps`` steps of the Trainer's step: forward with the loss, ``float(loss)``,
   zero_grad, backward, clip the gradient norm to 1, AdamW step; the peak resident memory
   is the high-water mark over those timed steps (reset after the warm-up);
3. times greedy generation (B=1) of ``gen_tokens`` tokens after a ``prompt_len``-token
   prompt, with the KV cache and without it (the whole context re-run per token).
"""
from __future__ import annotations

import math
import sys

import numpy as np

from .kernels import PeerError, run_peer
from .machine import run_json_child, thread_info
from ..stopwatch import rss_mb, summarize, train_and_generate


def vocab_size() -> int:
    """The char vocabulary of the embedded corpus (what ``tinyllm train`` uses)."""
    from ..data import load_corpus
    from ..data.tokenizers import CharTokenizer
    return CharTokenizer(load_corpus(None)).vocab_size


def build(spec: dict):
    """The GPT, AdamW and one batch of ``spec`` (step 1 of the module docstring): returns
    ``(model, opt, params, x, y, rng)`` (rng: the Generator the batch came from, which the
    prompt is drawn from next, as in the torch peer). The profiler (``tinyllm.bench.profile``) builds the same."""
    from .. import optim
    from ..models import GPT, GPTConfig
    m, V = spec["model"], spec["vocab_size"]
    cfg = GPTConfig(vocab_size=V, block_size=m["block_size"], n_layer=m["n_layer"],
                    n_head=m["n_head"], n_embd=m["n_embd"], dropout=0.0, bias=True)
    model = GPT(cfg, seed=spec.get("seed", 0))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = optim.AdamW(optim.param_groups_for_decay(named, 0.1), lr=1e-3, betas=(0.9, 0.99),
                      eps=1e-8, weight_decay=0.1)
    rng = np.random.default_rng(spec.get("seed", 0))
    B, T = m["batch_size"], m["block_size"]
    data = rng.integers(0, V, size=(B, T + 1))
    return model, opt, params, data[:, :-1].copy(), data[:, 1:].copy(), rng


def child(spec: dict) -> dict:
    """tinyllm's side of one configuration (runs in the child process)."""
    from .. import runtime
    runtime.configure(threads=int(spec["threads"]), keep_freed_memory=True)  # pinned for good
    from .. import generate, kernels, optim
    m, V = spec["model"], spec["vocab_size"]
    base = rss_mb()["rss"]
    model, opt, params, x, y, rng = build(spec)
    B, T = x.shape
    after_model = rss_mb()["rss"]

    def step():
        _, loss = model(x, y)
        lv = float(loss.data)
        if not math.isfinite(lv):
            raise RuntimeError(f"tinyllm GPT: the loss is {lv}")
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(params, 1.0)
        opt.step()

    prompt = rng.integers(0, V, size=(1, m["prompt_len"]))
    n = m["gen_tokens"]
    model.train()
    res = train_and_generate(step, lambda c: generate(model, prompt, n, temperature=0.0,
                                                      use_cache=c), m, base, after_model)
    res["train"]["tokens_per_step"] = B * T
    return dict(res, params=int(sum(p.data.size for p in params)), threads=thread_info(),
                kernel_impl=kernels.default_impl())


def _run_child(spec: dict, threads: int, timeout: float) -> dict:
    return run_json_child([sys.executable, "-m", "tinyllm.bench.e2e"], spec, threads, timeout,
                          "the tinyllm child", PeerError)


def _entry(ms, impl: str, V: int, res: dict) -> dict:
    def rate(times, per):
        s = summarize(times)
        return dict(s, tokens_per_s=per / (s["median_ms"] / 1e3),
                    tokens_per_s_min=per / (s["max_ms"] / 1e3),
                    tokens_per_s_max=per / (s["min_ms"] / 1e3))
    tr = res["train"]
    out = {"config": ms.name, "label": ms.label, "impl": impl, "vocab_size": V,
           "params": res["params"], "train": dict(rate(tr["times_s"], tr["tokens_per_step"]),
                                                  tokens_per_step=tr["tokens_per_step"])}
    for src, dst in (("gen_cache", "generate_cache"), ("gen_nocache", "generate_nocache")):
        g = res[src]
        out[dst] = dict(rate(g["times_s"], g["tokens"]), tokens=g["tokens"])
    out["memory_MiB"] = res["memory_MiB"]
    out["kernel_impl"] = res.get("kernel_impl")          # tinyllm: numba (or TINYLLM_KERNELS)
    out["ratio_to_torch"] = None
    if "torch" in res:
        out["threads"] = {"torch": res["torch"]["threads"],
                          "interop": res["torch"]["interop_threads"]}
    else:
        out["threads"] = res.get("threads")
    return out


METRICS = ("train", "generate_cache", "generate_nocache")


def apply_ceilings(entries: list, ceilings: dict) -> None:
    """Each training figure as a fraction of the sgemm ceiling."""
    for e in entries:
        if "train" in e:
            e["train"]["fraction_of_ceiling"] = (e["train"]["gflops_per_s"]
                                                 / ceilings["sgemm_GFLOPs"])


def run_e2e(models: list, *, threads: int, torch: bool, log, timeout: float) -> tuple:
    """(entries, notes): per configuration, tinyllm's and (when torch imports) torch's.
    Training is also given in GFLOP/s (``ModelSpec.train_flops_per_token``)."""
    V = vocab_size()
    entries, notes = [], []
    for ms in models:
        spec = {"model": ms.to_json(), "vocab_size": V, "threads": threads, "seed": 0}
        pair = {}
        runs = [("tinyllm", lambda s=spec: _run_child(s, threads, timeout))]
        if torch:
            runs.append(("torch", lambda s=spec: run_peer(dict(s, job="e2e"), threads,
                                                          timeout)))
        for impl, go in runs:
            log(f"  e2e config {ms.name} ({ms.label}), {impl} ...")
            try:
                e = pair[impl] = _entry(ms, impl, V, go())
                tr = e["train"]
                tr["flops_per_token"] = ms.train_flops_per_token(e["params"])
                tr["gflops_per_s"] = tr["flops_per_token"] * tr["tokens_per_s"] / 1e9
                tr["fraction_of_ceiling"] = None          # set by apply_ceilings
            except PeerError as e:
                notes.append(f"e2e {ms.name} {impl}: {e}")
                entries.append({"config": ms.name, "label": ms.label, "impl": impl,
                                "error": str(e)})
                log(f"  {e}")
        if "torch" in pair:
            for e in pair.values():
                e["ratio_to_torch"] = {k: e[k]["median_ms"] / pair["torch"][k]["median_ms"]
                                       for k in METRICS}
        entries.extend(pair.values())
    return entries, notes


def main(argv=None) -> int:
    from .machine import child_main
    return child_main(child, argv)


if __name__ == "__main__":
    sys.exit(main())
