"""GPU benchmarks of the ``cuda`` kernels (issue 17), run by benchmarks/gpu_check.sh.

On one CUDA GPU, with CuPy device arrays in and out (no host copies in the timed region):

- the ceilings: HBM bandwidth measured as a device-to-device copy (bytes read + written,
  STREAM's convention) and the float32 GEMM rate of cuBLAS (CuPy's matmul, 2 n^3 FLOPs);
- each kernel family forward and backward, float32, at one size, against PyTorch's own op
  on the same GPU where torch sees it (and the two outputs compared);
- the issue's targets: softmax (8, 1024, 1024) forward as a % of the measured bandwidth, and
  flash attention forward at B=4, H=16, T=4096, hs=64 as a % of torch SDPA's speed.

Times are the median of CUDA-event timings after warm-up runs. Writes gpu_bench.json and
gpu_bench.md to --out. Without a GPU it stops at once: one line, exit 2.

    PYTHONPATH=. NUMBA_ENABLE_CUDASIM=0 python benchmarks/gpu_bench.py --out results/
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def fail(msg: str) -> None:
    print(f"gpu_bench: {msg}", file=sys.stderr)
    sys.exit(2)


def gpu_ms(cp, fn, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of fn() between two CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b))
    times.sort()
    return times[len(times) // 2]


def torch_ms(torch, fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def ceilings(cp, reps):
    n = 1 << 28                                         # 1 GiB of float32
    a = cp.ones(n, cp.float32)
    b = cp.empty_like(a)
    ms = gpu_ms(cp, lambda: cp.copyto(b, a), reps)
    hbm = 2 * n * 4 / ms / 1e6                          # GB/s, read + write
    m = 8192
    x = cp.random.standard_normal((m, m), dtype=cp.float32)
    y = cp.random.standard_normal((m, m), dtype=cp.float32)
    ms_g = gpu_ms(cp, lambda: cp.matmul(x, y), max(3, reps // 2))
    return {"hbm_GBps": hbm, "gemm_f32_TFLOPs": 2 * m ** 3 / ms_g / 1e9,
            "copy_bytes": 2 * n * 4, "gemm_n": m}


# ---------------------------------------------------------------- the kernels and their peers

def cases(np, rng):
    """(name, label, arrays, options, torch forward(tensors) or None, FAMILY work params)."""
    f32 = np.float32
    r = lambda *s: rng.standard_normal(s).astype(f32)  # noqa: E731
    out = []
    x = r(8, 1024, 1024) * 3
    out.append(("softmax", "x (8, 1024, 1024)", (x,), {}, lambda t, x: t.softmax(x, -1),
                {"shape": [8, 1024, 1024]}))
    x, w, b = r(8192, 768), 1 + r(768) * 0.1, r(768) * 0.1
    out.append(("layernorm", "x (8192, 768)", (x, w, b), {},
                lambda t, x, w, b: t.nn.functional.layer_norm(x, (768,), w, b, 1e-5),
                {"N": 8192, "C": 768}))
    z = r(8192, 8192) * 3
    tg = rng.integers(0, 8192, 8192)
    out.append(("cross_entropy", "logits (8192, 8192)", (z, tg), {},
                lambda t, z, tg: t.nn.functional.cross_entropy(z, tg), {"N": 8192, "V": 8192}))
    N, C, H = 4096, 768, 3072
    mlp = (r(N, C), r(C, H) * C ** -0.5, r(H) * 0.1, r(H, C) * H ** -0.5, r(C) * 0.1)

    def torch_mlp(t, x, W1, b1, W2, b2):
        F = t.nn.functional
        return F.gelu(x @ W1 + b1, approximate="tanh") @ W2 + b2
    out.append(("mlp", f"N={N} C={C} H={H}", mlp, {}, torch_mlp, {"N": N, "C": C, "H": H}))
    for causal in (True, False):
        q, k, v = (r(4, 16, 4096, 64) for _ in range(3))
        out.append(("attention", f"B4 H16 T4096 hs64 {'causal' if causal else 'full'}",
                    (q, k, v), {"causal": causal},
                    lambda t, q, k, v, c=causal: t.nn.functional.scaled_dot_product_attention(
                        q, k, v, is_causal=c),
                    {"B": 4, "H": 16, "T": 4096, "hs": 64, "causal": causal}))
    for B in (1, 64):
        q, kc, vc = r(B, 8, 1, 64), r(B, 8, 2048, 64), r(B, 8, 2048, 64)
        out.append(("decode_attention", f"B{B} H8 L2048 hs64", (q, kc, vc, 2048), {},
                    lambda t, q, k, v, L: t.nn.functional.scaled_dot_product_attention(q, k, v),
                    {"B": B, "H": 8, "L": 2048, "Lmax": 2048, "hs": 64}))
    return out


def rel_err(np, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def run_case(np, cp, torch, kernels, case, reps):
    name, label, arrays, opts, peer, params = case
    k = kernels.get(name, "cuda")
    dev = tuple(cp.asarray(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
                for a in arrays)
    out, cache = k.forward(*dev, **opts)
    dout = cp.asarray(np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype))
    row = {"family": name, "size": label}
    row["fwd_ms"] = gpu_ms(cp, lambda: k.forward(*dev, **opts), reps)
    big = name == "attention"
    row["bwd_ms"] = gpu_ms(cp, lambda: k.backward(dout, cache), max(2, reps // 4) if big
                           else reps, warmup=1)
    work = kernels.family(name).work(params, 4)
    row["fwd_GFLOPs"] = work.flops[0] / row["fwd_ms"] / 1e6
    row["fwd_GBps"] = work.bytes[0] / row["fwd_ms"] / 1e6
    row["bwd_GBps"] = work.bytes[1] / row["bwd_ms"] / 1e6
    row["bwd_GFLOPs"] = work.flops[1] / row["bwd_ms"] / 1e6
    if torch is not None and peer is not None:
        ts = [torch.as_tensor(a, device="cuda") if isinstance(a, np.ndarray) else a
              for a in arrays]
        for t in ts:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                t.requires_grad_(True)
        with torch.no_grad():
            ref = peer(torch, *ts)
        row["torch_fwd_ms"] = torch_ms(torch, lambda: peer(torch, *ts), reps)
        y = peer(torch, *ts)
        g = torch.as_tensor(cp.asnumpy(dout), device="cuda")
        if y.shape != g.shape:                           # the loss is a scalar
            g = g.reshape(y.shape)
        diff = [t for t in ts if isinstance(t, torch.Tensor) and t.requires_grad]

        def tb():
            yy = peer(torch, *ts)
            torch.autograd.grad(yy, diff, g)
        row["torch_fwdbwd_ms"] = torch_ms(torch, tb, max(2, reps // 4) if big else reps,
                                          warmup=1)
        row["fwd_vs_torch"] = row["torch_fwd_ms"] / row["fwd_ms"]      # > 1: faster
        row["max_rel_err_vs_torch"] = rel_err(np, cp.asnumpy(out),
                                              ref.detach().cpu().numpy().reshape(out.shape))
    return row


def markdown(info, ceil, rows) -> str:
    lines = [f"GPU: {info}", "",
             f"Ceilings: HBM {ceil['hbm_GBps']:.0f} GB/s (device copy, read + write); "
             f"cuBLAS float32 GEMM {ceil['gemm_f32_TFLOPs']:.1f} TFLOP/s ({ceil['gemm_n']}^3)",
             "", "| family | size | fwd ms | bwd ms | fwd GB/s | fwd GFLOP/s | torch fwd ms "
             "| torch fwd+bwd ms | fwd speed vs torch | err vs torch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | {r['size']} | failed: {r['error']} |")
            continue
        t = (f"{r['torch_fwd_ms']:.3f} | {r['torch_fwdbwd_ms']:.3f} | "
             f"{r['fwd_vs_torch']:.2f}x | {r['max_rel_err_vs_torch']:.1e}"
             if "torch_fwd_ms" in r else "- | - | - | -")
        lines.append(f"| {r['family']} | {r['size']} | {r['fwd_ms']:.3f} | {r['bwd_ms']:.3f} | "
                     f"{r['fwd_GBps']:.0f} | {r['fwd_GFLOPs']:.0f} | {t} |")
    return "\n".join(lines) + "\n"


def targets(ceil, rows) -> dict:
    out = {}
    for r in rows:
        if r.get("family") == "softmax" and "fwd_GBps" in r:
            out["softmax_fwd_pct_of_hbm"] = 100 * r["fwd_GBps"] / ceil["hbm_GBps"]
        if r.get("family") == "attention" and "fwd_vs_torch" in r:
            key = "attention_fwd_pct_of_sdpa_" + r["size"].split()[-1]
            out[key] = 100 * r["fwd_vs_torch"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_bench.json and gpu_bench.md")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--only", action="append", help="only these families")
    args = p.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        fail("NUMBA_ENABLE_CUDASIM is set: these are GPU benchmarks, unset it")
    import numpy as np

    from tinyllm import kernels
    from tinyllm.kernels import _cuda
    why = kernels.cuda_unavailable()
    if why:
        fail(why)
    if _cuda.mode() != "gpu":
        fail(f"the cuda kernels run in {_cuda.mode()} mode here, not on a GPU")
    import cupy as cp
    try:
        import torch
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    props = cp.cuda.runtime.getDeviceProperties(0)
    info = (f"{props['name'].decode() if isinstance(props['name'], bytes) else props['name']}, "
            f"{props['multiProcessorCount']} SMs, {props['totalGlobalMem'] / 2**30:.0f} GiB; "
            f"CuPy {cp.__version__}, torch {torch.__version__ if torch else 'absent'}")
    print(info, flush=True)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    ceil = ceilings(cp, args.reps)
    cp.get_default_memory_pool().free_all_blocks()
    print(f"ceilings: {ceil}", flush=True)
    rows = []
    rng = np.random.default_rng(0)
    for case in cases(np, rng):
        if args.only and case[0] not in args.only:
            continue
        try:
            row = run_case(np, cp, torch, kernels, case, args.reps)
        except Exception as e:  # noqa: BLE001  (a failed row is reported, the rest go on)
            row = {"family": case[0], "size": case[1], "error": f"{type(e).__name__}: {e}"}
        cp.get_default_memory_pool().free_all_blocks()
        rows.append(row)
        print(json.dumps(row), flush=True)
    tg = targets(ceil, rows)
    result = {"device": info, "ceilings": ceil, "rows": rows, "targets": tg,
              "seconds": time.time() - t0}
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(info, ceil, rows) + "\nTargets: " + ", ".join(
        f"{k} = {v:.0f}%" for k, v in tg.items()) + "\n"
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write(md)
    print(md)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
