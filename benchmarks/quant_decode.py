"""Batch-1 KV-cache decode speed of a GPT-2-small-shaped model: fp32 against int8 and int4.

    PYTHONPATH=. python benchmarks/quant_decode.py [--rounds 5] [--tokens 32] [--quick]

GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768), random
weights (GPT(cfg, seed=0)). Each variant runs in its own worker process, built once
(fp32; int8 per channel; int4 group-32; each quantised variant with the tied
embedding/head kept in fp32 and quantised too); the parent then asks them in turn, round
after round (alternating, so a slower stretch of a shared machine hits every variant), to
prefill a 16-token prompt and time ``--tokens`` greedy ``decode_step`` calls. Reported: the
median tokens/s over the rounds, the ratio to fp32, the bytes of weights each token reads
(every matrix once: the blocks' Linears, the head; LayerNorms and biases included, the small
KV cache left out), and the machine's copy bandwidth (``tinyllm.bench.ceilings``: bytes read
+ written per second, STREAM's convention), with the tokens/s it would allow were reading
the weights the only cost.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

VARIANTS = {                          # name -> (method or None, keep_embeddings)
    "fp32": (None, True),
    "int8": ("int8", True),
    "int8 +emb": ("int8", False),
    "int4-g32": ("int4-g32", True),
    "int4-g32 +emb": ("int4-g32", False),
}


def _config(quick):
    from tinyllm.models import GPTConfig
    if quick:                          # a smoke test of the script itself
        return GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=128)
    return GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


def bytes_per_token(model) -> int:
    """Bytes of the weights one decoding step reads: each Linear / QuantLinear, the head
    (the tied table, float or quantised), the LayerNorms; wpe reads one row."""
    from tinyllm.nn import Embedding, LayerNorm, Linear, QuantEmbedding, QuantLinear
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, Linear):
            n += m.weight.data.nbytes + (0 if m.bias is None else m.bias.data.nbytes)
        elif isinstance(m, (QuantLinear, QuantEmbedding)):
            n += m.nbytes
        elif isinstance(m, LayerNorm):
            n += sum(p.data.nbytes for p in m.parameters())
        elif isinstance(m, Embedding) and name.endswith("wte"):
            n += m.weight.data.nbytes                              # the head reads all of it
        elif isinstance(m, Embedding):
            n += m.weight.data[0].nbytes                           # one position row
    return n


def worker(variant, tokens, quick):
    import tinyllm as tl
    from tinyllm.models import GPT
    from tinyllm.nn import quantize_model
    method, keep = VARIANTS[variant]
    # the settings `tinyllm generate` runs each with: Numba's "omp" layer (cheap launches)
    # for a quantised model, "workqueue" for the float one (tinyllm.runtime)
    tl.runtime.configure(numba_layer=tl.runtime.inference_layer() if method else
                         tl.runtime.DEFAULT_NUMBA_LAYER)
    model = GPT(_config(quick), seed=0).eval()
    if method is not None:
        model = quantize_model(model, method, keep)               # a copy; drop the float one
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 16))

    def run():
        cache = model.new_kv_cache(1, max_len=16 + tokens + 1)
        logits = model.prefill(prompt, cache)
        t0 = time.perf_counter()
        for _ in range(tokens):
            logits = model.decode_step(logits.argmax(-1), cache)
        return tokens / (time.perf_counter() - t0), int(logits.argmax())
    with tl.no_grad():
        run()                                                     # compile, warm the caches
        print(json.dumps({"ready": True, "bytes": bytes_per_token(model),
                          "layer": tl.runtime.numba_layer_in_effect()}), flush=True)
        for line in sys.stdin:
            if line.strip() != "go":
                break
            tps, last = run()
            print(json.dumps({"tok_s": tps, "last": last}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="a tiny model (smoke test)")
    ap.add_argument("--only", action="append", help="variants to run (default: all)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.tokens, a.quick)
    names = a.only or list(VARIANTS)
    from tinyllm.bench.ceilings import copy_bandwidth
    from tinyllm.kernels import num_threads
    threads = num_threads()
    copy = copy_bandwidth(256, threads, {"warmup": 2, "min_repeats": 10, "max_repeats": 30,
                                         "budget_s": 0.5})["GBps"]
    procs, info = {}, {}
    for n in names:                       # built one after another (peak memory)
        cmd = [sys.executable, __file__, "--worker", n, "--tokens", str(a.tokens)]
        p = subprocess.Popen(cmd + (["--quick"] if a.quick else []), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        info[n] = json.loads(p.stdout.readline())
        procs[n] = p
    rates = {n: [] for n in names}
    last = {}
    for _ in range(a.rounds):
        for n in names:
            procs[n].stdin.write("go\n")
            procs[n].stdin.flush()
            r = json.loads(procs[n].stdout.readline())
            rates[n].append(r["tok_s"])
            last[n] = r["last"]
    for p in procs.values():
        p.stdin.close()
        p.wait()
    cfg = _config(a.quick)
    print(f"GPT {cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd}, vocab {cfg.vocab_size}: batch-1 "
          f"KV-cache greedy decode, 16-token prompt, {a.tokens} tokens, {a.rounds} "
          f"alternating rounds, {threads} threads; Numba layers: "
          f"{', '.join(sorted({i['layer'] for i in info.values()}))}")
    print(f"copy bandwidth ceiling: {copy:.1f} GB/s (read + write)")
    base = statistics.median(rates["fp32"]) if "fp32" in rates else None
    print(f"{'variant':<15} {'tok/s':>8} {'x fp32':>7} {'MB/token':>9} {'ceiling tok/s':>14} "
          f"{'spread':>13}")
    out = {}
    for n in names:
        med = statistics.median(rates[n])
        mb = info[n]["bytes"] / 1e6
        ratio = f"{med / base:7.2f}" if base else "      -"
        print(f"{n:<15} {med:8.1f} {ratio} {mb:9.1f} {copy * 1e3 / mb:14.1f} "
              f"{min(rates[n]):6.1f}-{max(rates[n]):<6.1f}")
        out[n] = {"tok_s": med, "rounds": rates[n], "bytes_per_token": info[n]["bytes"]}
    print(json.dumps({"copy_GBps": copy, "threads": threads, "variants": out}))


if __name__ == "__main__":
    main()
