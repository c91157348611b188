"""``python -m tinyllm.optim [--params N] [--repeat R]``: time one optimizer step.

The parameters are float32 tensors shaped like a small GPT's (about N values in all: token
and position embeddings, then per layer two LayerNorms, c_attn, c_proj, c_fc, c_proj). Each
optimizer runs with the NumPy reference and with the Numba version of its kernel family
(``tinyllm.kernels.adam``, ``tinyllm.kernels.sgd``). The figure of merit is the memory
traffic: AdamW reads p, g, m, v and writes p, m, v, 28 bytes per float32 parameter, compared
with the measured copy bandwidth of this machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from ..autograd import Tensor
from ..kernels import num_threads, numba_available
from . import SGD, AdamW, clip_grad_norm_


def gpt_like_shapes(n_target: int, n_layer: int = 4, vocab: int = 4096, block: int = 256):
    """Parameter shapes of a GPT whose width is chosen so the total is about n_target."""
    def shapes(c):
        s = [(vocab, c), (block, c)]
        for _ in range(n_layer):
            s += [(c,), (c,), (c, 3 * c), (3 * c,), (c, c), (c,), (c,), (c,),
                  (c, 4 * c), (4 * c,), (4 * c, c), (c,)]
        return s + [(c,), (c,)]
    c = 8
    while sum(int(np.prod(x)) for x in shapes(c + 8)) <= n_target:
        c += 8
    return shapes(c)


def _median_ms(fn, repeat):
    fn()                                                    # warm up (and compile)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return 1e3 * statistics.median(ts), 1e3 * ts[0], 1e3 * ts[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tinyllm.optim", description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=30)
    a = ap.parse_args(argv)
    from .. import runtime
    runtime.configure()          # the layer tinyllm bench and the command line run Numba on
    if a.params < 1000 or a.repeat < 1:
        print("python -m tinyllm.optim: --params must be >= 1000 and --repeat >= 1",
              file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    shapes = gpt_like_shapes(a.params)
    n = sum(int(np.prod(s)) for s in shapes)
    have_numba = numba_available()
    print(f"{len(shapes)} float32 tensors, {n} values; numba {'on' if have_numba else 'off'}, "
          f"{num_threads()} numba threads (kernels run serially)")
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    copy_ms = _median_ms(lambda: np.copyto(dst, src), a.repeat)[0]
    bw = 8 * n / (copy_ms * 1e-3)
    print(f"copy {n} float32: {copy_ms:.3f} ms ({bw / 1e9:.1f} GB/s read+write)")
    for cls, kw, bytes_per in ((AdamW, {}, 28), (SGD, {"momentum": 0.9}, 20)):
        for fused in ((False, True) if have_numba else (False,)):
            ps = [Tensor(rng.standard_normal(s).astype(np.float32) * 0.02, requires_grad=True)
                  for s in shapes]
            for p in ps:
                p.grad = rng.standard_normal(p.shape).astype(np.float32)
            opt = cls(ps, lr=1e-4, fused=fused, **kw)
            med, lo, hi = _median_ms(opt.step, a.repeat)
            frac = bytes_per * n / (med * 1e-3) / bw
            print(f"{cls.__name__:5s} {'numba' if fused else 'numpy':5s} step: {med:.3f} ms "
                  f"(min {lo:.3f}, max {hi:.3f}); {frac:.0%} of copy bandwidth")
    ps = [Tensor(np.zeros(s, np.float32)) for s in shapes]
    for p in ps:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    med, lo, hi = _median_ms(lambda: clip_grad_norm_(ps, 1e9), a.repeat)
    print(f"clip_grad_norm_ (norm only): {med:.3f} ms (min {lo:.3f}, max {hi:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
