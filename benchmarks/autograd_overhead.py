"""How much the autodiff engine costs over plain NumPy, for a few composite ops.

For each op: the plain NumPy forward, the same math as a tinyllm forward (graph recorded), and
tinyllm forward + backward. Medians over repeats after a warm-up; ratios against the NumPy
forward measured in the same run. Run: python benchmarks/autograd_overhead.py
"""
import os
import platform
import time

import numpy as np

import tinyllm as tl

F = tl.functional


def median_ms(fn, repeats=20, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts)), 1e3 * min(ts), 1e3 * max(ts)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_layer_norm(x, w, b):
    xc = x - x.mean(-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5) * w + b


def print_setup():
    """Versions and thread counts, so a figure can be compared with another run."""
    try:
        from threadpoolctl import threadpool_info
        pools = ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())
    except ImportError:
        pools = "unknown (threadpoolctl did not import)"
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"tinyllm {tl.__version__}, {os.cpu_count()} CPUs, BLAS threads: {pools}\n")


def main():
    print_setup()
    rng = np.random.default_rng(0)
    f32 = np.float32
    x = rng.standard_normal((64, 1024)).astype(f32)
    w, b = np.ones(1024, f32), np.zeros(1024, f32)
    cases = {
        "softmax (64,1024)": (lambda: np_softmax(x), lambda t: F.softmax(t[0]), [x]),
        "layer_norm (64,1024)": (lambda: np_layer_norm(x, w, b),
                                 lambda t: F.layer_norm(*t), [x, w, b]),
        "tiny add (4,4)": (lambda: x[:4, :4] + x[:4, :4],
                           lambda t: t[0] + t[0], [x[:4, :4].copy()]),
    }
    print(f"{'op':<22}{'numpy fwd ms':>14}{'tl fwd ms':>12}{'tl fwd+bwd ms':>15}"
          f"{'fwd ratio':>11}{'fwd+bwd ratio':>15}")
    for name, (ref, op, arrays) in cases.items():
        ts = [tl.Tensor(a, requires_grad=True) for a in arrays]
        dy = None

        def fwd():
            return op(ts)

        def fwd_bwd():
            nonlocal dy
            out = op(ts)
            dy = np.ones_like(out.data) if dy is None else dy
            out.backward(dy)
            for t in ts:
                t.grad = None
        t_ref, t_f, t_fb = median_ms(ref)[0], median_ms(fwd)[0], median_ms(fwd_bwd)[0]
        print(f"{name:<22}{t_ref:>14.3f}{t_f:>12.3f}{t_fb:>15.3f}{t_f / t_ref:>10.2f}x"
              f"{t_fb / t_ref:>14.2f}x")


if __name__ == "__main__":
    main()
