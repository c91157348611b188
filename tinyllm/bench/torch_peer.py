"""PyTorch's side of the benchmark, in a process of its own.

    python -m tinyllm.bench.torch_peer '<spec-json>'      # or: python path/to/torch_peer.py …

prints one JSON object on stdout. The benchmark runs this file as a plain script (so the
process imports only NumPy and torch, never tinyllm or Numba): torch's and Numba's thread
pools distort each other when they share a process (docs: notes/numba-performance.md,
lesson 10), and a separate process also keeps torch's memory apart from tinyllm's.

Jobs (``spec["job"]``):

- ``"kernels"``: ``spec["cases"]`` is a list of ``{"id", "family", "torch", "label",
  "passes", "args", "opts"}``. The inputs are not built here: the benchmark builds them with
  the family's ``FAMILY.inputs`` and hands them over, each argument either ``{"npy": path}``
  (an array in a ``.npy`` file) or ``{"value": v}``. ``case["torch"]`` (the family's
  ``FAMILY.torch``) names the torch equivalent in ``TORCH`` below, called with the same
  arguments as tinyllm's forward (arrays as tensors): softmax → ``torch.softmax``;
  cross_entropy → ``F.cross_entropy(ignore_index=-100)``; layernorm → ``F.layer_norm``;
  mlp → ``addmm``, tanh ``gelu``, ``addmm``; attention and decode_attention →
  ``F.scaled_dot_product_attention``; additive_attention → the same equations written in
  torch (tanh scores, masked softmax, weighted sum). "fwd" runs under ``torch.no_grad()``;
  "fwd+bwd" makes the float inputs ``requires_grad`` and takes ``torch.autograd.grad`` with a
  random upstream gradient. Returns the raw times.
- ``"e2e"``: a minimal GPT-2 in torch (``TorchGPT``: pre-norm blocks, SDPA, tanh GELU,
  tied head, a preallocated KV cache for decoding) with the config in ``spec["model"]``:
  training steps (forward, backward, clip to norm 1, AdamW) and greedy generation with and
  without the KV cache, plus the process's resident memory.
- ``"profile"``: the same model's training step under ``torch.profiler``, each aten op's
  self CPU time per step (``tinyllm bench --profile``; ``tinyllm.bench.profile``).

Timing is ``tinyllm/stopwatch.py`` (``measure``, ``summarize``), loaded by its file path when
this runs as a script, so both sides are timed the same way.
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np


def _stopwatch():
    """tinyllm's stopwatch module: imported normally inside the package, loaded by file path
    (tinyllm/stopwatch.py imports nothing from tinyllm) when this runs as a plain script."""
    try:
        from .. import stopwatch
        return stopwatch
    except ImportError:
        import importlib.util
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                            "stopwatch.py")
        spec = importlib.util.spec_from_file_location("tinyllm_stopwatch", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


_sw = _stopwatch()
measure, summarize, rss_mb = _sw.measure, _sw.summarize, _sw.rss_mb


# ------------------------------------------------------------------ memory

# ------------------------------------------------------------------ kernels
# torch's equivalent of each family, called like tinyllm's forward(*args, **opts)

def _softmax(torch, x):
    return torch.softmax(x, -1)


def _cross_entropy(torch, z, t, ignore_index=-100):
    return torch.nn.functional.cross_entropy(z, t, ignore_index=ignore_index)


def _layernorm(torch, x, w, b, eps=1e-5):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def _mlp(torch, x, W1, b1, W2, b2):
    F = torch.nn.functional
    return torch.addmm(b2, F.gelu(torch.addmm(b1, x, W1), approximate="tanh"), W2)


def _attention(torch, q, k, v, causal=True):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))


def _decode_attention(torch, q, k, v, L):
    return torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :L], v[:, :, :L])


def _additive_attention(torch, h, x, W_q, W_k, v_a, mask=None):
    u = torch.tanh((h @ W_q)[:, None, :] + x @ W_k)          # (B, S, A)
    e = u @ v_a                                              # (B, S)
    if mask is not None:
        e = e.masked_fill(~mask, float("-inf"))
    alpha = torch.softmax(e, -1)                             # (B, S)
    c = torch.bmm(alpha[:, None, :], x)[:, 0]                # (B, Dx)
    return c, alpha


TORCH = {"softmax": _softmax, "cross_entropy": _cross_entropy, "layernorm": _layernorm,
         "mlp": _mlp, "attention": _attention, "decode_attention": _decode_attention,
         "additive_attention": _additive_attention}


# the families with an ``out=`` form (tinyllm.bench.specs.OUT_FAMILIES)
TORCH_OUT = {"softmax": lambda torch, x, out: torch.softmax(x, -1, out=out)}


def _load(arg):
    return np.load(arg["npy"]) if "npy" in arg else arg["value"]


def kernel_callables(torch, name: str, args: list, opts: dict, seed: int = 0) -> dict:
    """{"fwd": fn, "fwd+bwd": fn}: torch's equivalent ``TORCH[name]`` of one kernel case on
    the given NumPy inputs (arrays become tensors; float arrays are the differentiable
    inputs), ready to time."""
    if name not in TORCH:
        raise KeyError(f"torch peer: no equivalent named {name!r}")
    fn = TORCH[name]
    gen = torch.Generator().manual_seed(seed)

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
    inputs = [tensor(a) for a in args]
    kw = {k: tensor(v) for k, v in opts.items()}
    with torch.no_grad():
        out = fn(torch, *inputs, **kw)
    outs = out if isinstance(out, tuple) else (out,)
    douts = [torch.randn(o.shape, generator=gen) for o in outs]
    leaves = [x.detach().requires_grad_(True) if torch.is_tensor(x) and x.is_floating_point()
              else x for x in inputs]
    wrt = [x for x in leaves if torch.is_tensor(x) and x.requires_grad]

    def fwd():
        with torch.no_grad():
            fn(torch, *inputs, **kw)

    def fwd_bwd():
        o = fn(torch, *leaves, **kw)
        o = o if isinstance(o, tuple) else (o,)
        torch.autograd.grad(o, wrt, douts)

    fns = {"fwd": fwd, "fwd+bwd": fwd_bwd}
    if name in TORCH_OUT:                       # "fwd out=": into one preallocated buffer
        with torch.no_grad():
            buf = torch.empty_like(outs[0])

        def fwd_out():
            with torch.no_grad():
                TORCH_OUT[name](torch, *inputs, out=buf, **kw)
        fns["fwd out="] = fwd_out
    return fns


def run_kernels(spec: dict) -> dict:
    import torch
    timing = spec.get("timing", {})
    results, errors = [], []
    for case in spec["cases"]:
        try:
            fns = kernel_callables(torch, case["torch"], [_load(a) for a in case["args"]],
                                   {k: _load(v) for k, v in case["opts"].items()})
            for pass_ in case["passes"]:
                results.append({"id": case["id"], "pass": pass_,
                                "times_s": measure(fns[pass_], **timing)})
        except Exception as e:  # noqa: BLE001  (one failing case must not lose the rest)
            errors.append(f"{case['family']} {case.get('label', '')}: "
                          f"{type(e).__name__}: {e}")
    # what this process has imported, for the test that it stays free of tinyllm and Numba
    modules = {m: m in sys.modules for m in ("tinyllm", "numba")}
    return {"results": results, "errors": errors, "modules": modules}


# ------------------------------------------------------------------ a minimal GPT-2 in torch

def torch_gpt(torch, cfg: dict):
    """A GPT-2 (pre-norm, tanh GELU, biases, tied head, dropout 0) with tinyllm's GPT
    config keys and GPT-2's initialisation; ``model(idx, targets)`` -> (logits, loss), and
    ``prefill`` / ``decode`` over a preallocated KV cache."""
    nn, F = torch.nn, torch.nn.functional
    C, H, L, V, Tmax = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["vocab_size"], \
        cfg["block_size"]
    hs = C // H

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x, cache=None, pos=0):
            B, T, _ = x.shape
            q, k, v = (t.view(B, T, H, hs).transpose(1, 2)
                       for t in self.c_attn(self.ln_1(x)).split(C, dim=2))
            if cache is None or T > 1:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                if cache is not None:                      # prefill at positions 0..T-1
                    cache[0][:, :, :T] = k
                    cache[1][:, :, :T] = v
            else:                                          # one new token at ``pos``
                kc, vc = cache
                kc[:, :, pos] = k[:, :, 0]
                vc[:, :, pos] = v[:, :, 0]
                y = F.scaled_dot_product_attention(q, kc[:, :, :pos + 1], vc[:, :, :pos + 1])
            x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(Tmax, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            for name, prm in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(prm)
                elif prm.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                    nn.init.normal_(prm, 0.0, std)

        def forward(self, idx, targets=None, cache=None, pos=0):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe.weight[pos:pos + T]
            for i, blk in enumerate(self.h):
                x = blk(x, None if cache is None else cache[i], pos)
            logits = F.linear(self.ln_f(x), self.wte.weight)           # tied head
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
            return logits, loss

        def new_cache(self, B):
            return [(torch.zeros(B, H, Tmax, hs), torch.zeros(B, H, Tmax, hs))
                    for _ in range(L)]

    return GPT()


def torch_generate(torch, model, idx, n: int, use_cache: bool):
    """Greedy continuation of idx (B, T) by n tokens."""
    block = model.wpe.weight.shape[0]
    with torch.inference_mode():
        if not use_cache:
            for _ in range(n):
                logits, _ = model(idx[:, -block:])
                idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            return idx
        T = idx.shape[1]
        assert T + n - 1 <= block, "the benchmark keeps the cache from overflowing"
        cache = model.new_cache(idx.shape[0])
        logits, _ = model(idx, cache=cache, pos=0)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = [idx, nxt]
        for pos in range(T, T + n - 1):
            logits, _ = model(nxt, cache=cache, pos=pos)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
        return torch.cat(out, dim=1)


def _build(torch, spec: dict):
    """The GPT, AdamW (weight decay on the matrices only, as tinyllm's Trainer) and batch of
    ``spec``: ``(model, params, opt, x, y, rng)``, rng the Generator the batch came from
    (the prompt is drawn from it next). Jobs "e2e" and "profile" share it."""
    m, V = spec["model"], spec["vocab_size"]
    torch.manual_seed(spec.get("seed", 0))
    model = torch_gpt(torch, dict(m, vocab_size=V))
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 and p is not model.wte.weight
             and p is not model.wpe.weight]
    ids = {id(p) for p in decay}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": [p for p in params if id(p) not in ids],
                              "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    rng = np.random.default_rng(spec.get("seed", 0))
    B, T = m["batch_size"], m["block_size"]
    data = torch.from_numpy(rng.integers(0, V, size=(B, T + 1)))
    return model, params, opt, data[:, :-1].contiguous(), data[:, 1:].contiguous(), rng


def run_e2e(spec: dict) -> dict:
    import torch
    m, V = spec["model"], spec["vocab_size"]
    base = rss_mb()["rss"]
    model, params, opt, x, y, rng = _build(torch, spec)
    B, T = m["batch_size"], m["block_size"]
    after_model = rss_mb()["rss"]

    def step():
        _, loss = model(x, y)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"torch GPT: the loss is {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    prompt = torch.from_numpy(rng.integers(0, V, size=(1, m["prompt_len"])))
    n = m["gen_tokens"]
    model.train()
    res = _sw.train_and_generate(step, lambda c: torch_generate(torch, model, prompt, n, c), m,
                                 base, after_model, before_generate=model.eval)
    res["train"]["tokens_per_step"] = B * T
    return dict(res, params=sum(p.numel() for p in params))


def run_profile(spec: dict) -> dict:
    """The e2e model's training step under ``torch.profiler`` (see tinyllm.bench.profile):
    ``warm_steps`` untimed, ``steps`` timed without the profiler, ``steps`` profiled with a
    ``record_function`` around each phase; every op's self CPU time per step."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    model, params, opt, x, y, _ = _build(torch, spec)
    model.train()
    phases = ("forward", "zero_grad", "backward", "clip", "optimiser")

    def step():
        with record_function("forward"):
            _, loss = model(x, y)
            lv = loss.item()
        if not math.isfinite(lv):
            raise RuntimeError(f"torch GPT: the loss is {lv}")
        with record_function("zero_grad"):
            opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("clip"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        with record_function("optimiser"):
            opt.step()

    for _ in range(spec["warm_steps"]):
        step()
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    n = spec["steps"]
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    t_prof = time.perf_counter() - t0
    ops, ph = [], {}
    for ev in prof.key_averages():
        if ev.key in phases:
            ph[ev.key] = ev.cpu_time_total / 1e3 / n
            continue
        ops.append({"name": ev.key, "self_ms": ev.self_cpu_time_total / 1e3 / n,
                    "calls": ev.count / n})
    return {"engine": "torch", "step_ms": 1e3 * float(np.median(times)),
            "step_ms_all": [1e3 * t for t in times], "profiled_step_ms": 1e3 * t_prof / n,
            "phases": ph, "ops": ops}


# ------------------------------------------------------------------ entry point

def torch_info(torch) -> dict:
    return {"version": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "parallel_info": torch.__config__.parallel_info().splitlines()[:8]}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0] if argv else sys.stdin.read())
    import torch
    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    job = {"kernels": run_kernels, "e2e": run_e2e, "profile": run_profile}[spec["job"]]
    out = job(spec)
    out["torch"] = torch_info(torch)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    # run as a file, this folder is sys.path[0]; drop it so nothing here shadows a module
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path.pop(0)
    sys.exit(main())
