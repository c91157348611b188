"""What the benchmark measures: the kernel size sweeps and the end-to-end model configurations.

A ``KernelSpec`` is one kernel family at one size. It carries everything the timing needs
and nothing that does timing: the shape parameters (plain JSON numbers, so the torch peer
process can build the same shapes without importing tinyllm), the sweep variable for the
time-against-size plot, and the work of one call counted two ways, floating-point
operations and bytes that must move through memory at least once (read + write, STREAM's
convention, which is also how the copy ceiling counts). The figure a kernel is judged by
(``unit``) is GB/s for the memory-bound families and GFLOP/s for the compute-bound ones; the
other number still places it on the roofline (arithmetic intensity = FLOPs / bytes).

The FLOP counts of the memory-bound families are nominal (an exp counts as one operation);
only their byte counts matter for their figure. The byte counts of the compute-bound
families count each input, output and saved activation once.

Sizes. The full sweep holds the issue's reference sizes: softmax (8, 1024, 1024); causal
attention B1 H8 T{128..2048} hs64; MLP N=2048 C=768 H=3072; layernorm (8192, 768);
cross-entropy (8192, 8192). ``--quick`` uses two small sizes per family. The NumPy
reference is skipped where it would take too long or need too much memory (``ref=False``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

GBPS, GFLOPS = "GB/s", "GFLOP/s"
PASSES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class KernelSpec:
    family: str
    label: str             # e.g. "B1 H8 T1024 hs64 causal"
    params: dict           # shape parameters, JSON numbers only
    x: int                 # the sweep variable's value ...
    x_name: str            # ... and its name (the plot's x axis)
    unit: str              # GBPS or GFLOPS: the figure the kernel is judged by
    flops: tuple           # (forward, backward) floating-point operations of one call
    bytes: tuple           # (forward, backward) bytes that must move, float32
    ref: bool = True       # time the NumPy reference at this size
    torch: bool = True     # the torch peer has an equivalent
    dtype: str = "float32"

    def work(self, pass_: str) -> tuple:
        """(flops, bytes) of one call of ``pass_`` ("fwd" or "fwd+bwd")."""
        if pass_ == "fwd":
            return self.flops[0], self.bytes[0]
        return self.flops[0] + self.flops[1], self.bytes[0] + self.bytes[1]

    def to_json(self) -> dict:
        return asdict(self)


IT = 4  # float32 itemsize


def _softmax(shape, ref=True):
    n = int(np.prod(shape))
    # forward reads x, writes y; backward reads dy, y, writes dx. FLOPs: max, sub, exp, sum,
    # div (5 n) and dy*y, sum, sub, mul (4 n)
    return KernelSpec("softmax", f"x {tuple(shape)}", {"shape": list(shape)}, n, "elements",
                      GBPS, (5 * n, 4 * n), (2 * n * IT, 3 * n * IT), ref)


def _cross_entropy(N, V, ref=True):
    n = N * V
    # forward reads the logits; backward reads them and writes dlogits. FLOPs: max, sub,
    # exp, sum (4 n) and exp, scale, one-hot subtract (3 n)
    return KernelSpec("cross_entropy", f"logits ({N}, {V})", {"N": N, "V": V}, N, "N", GBPS,
                      (4 * n, 3 * n), (n * IT + 8 * N, 2 * n * IT + 8 * N), ref)


def _layernorm(N, C, ref=True):
    n = N * C
    # forward reads x, writes y; backward reads dy, x, writes dx (+ the C-sized params).
    # FLOPs: mean, var, normalise, scale+shift (~8 n); backward ~12 n
    return KernelSpec("layernorm", f"x ({N}, {C})", {"N": N, "C": C}, N, "N", GBPS,
                      (8 * n, 12 * n), ((2 * n + 2 * C) * IT, (3 * n + 3 * C) * IT), ref)


def _mlp(N, C, H, ref=True):
    # FLOPs: forward two (N, C, H) products, backward four (+ GELU, ignored)
    f = 2 * N * C * H
    # bytes: forward reads x, W1, W2, writes the pre-activation and y; backward reads dy,
    # the pre-activation, x, W1, W2, writes dx, dW1, dW2
    fb = (2 * N * C + 2 * C * H + N * H) * IT
    bb = (3 * N * C + N * H + 4 * C * H) * IT
    return KernelSpec("mlp", f"N={N} C={C} H={H}", {"N": N, "C": C, "H": H}, N, "N",
                      GFLOPS, (2 * f, 4 * f), (fb, bb), ref)


def _attention(B, H, T, hs, causal=True, ref=True):
    # FLOPs: Q K^T and P V are 2 T T hs each per head (half when causal); the backward does
    # five such products (recomputed S, dV, dP, dQ, dK): about 2.5x
    f = 2 * 2 * B * H * T * T * hs // (2 if causal else 1)
    n = B * H * T * hs
    # bytes: forward reads q, k, v, writes out (+ lse); backward reads q, k, v, out, dout,
    # lse, writes dq, dk, dv
    return KernelSpec("attention", f"B{B} H{H} T{T} hs{hs} {'causal' if causal else 'full'}",
                      {"B": B, "H": H, "T": T, "hs": hs, "causal": causal}, T, "T", GFLOPS,
                      (f, int(2.5 * f)), ((4 * n + B * H * T) * IT, (8 * n + B * H * T) * IT),
                      ref)


def _additive(B, S, D, masked=False, ref=True):
    Dh = Dx = A = D
    # FLOPs as in tinyllm.kernels.additive_attention's harness cases
    fwd = 2 * B * Dh * A + 2 * B * S * Dx * A + B * S * (4 * A + 2 * Dx)
    bwd = 4 * B * Dh * A + 4 * B * S * Dx * A + B * S * (8 * A + 4 * Dx)
    # bytes: forward reads h, x, W_q, W_k, v_a, writes c and alpha; backward reads them again
    # with dc, dalpha, writes dh, dx, dW_q, dW_k
    fb = (B * Dh + B * S * Dx + Dh * A + Dx * A + A + B * Dx + B * S) * IT
    bb = (2 * B * Dh + 2 * B * S * Dx + 2 * Dh * A + 2 * Dx * A + 2 * B * S + B * Dx) * IT
    params = {"B": B, "S": S, "Dh": Dh, "Dx": Dx, "A": A, "masked": masked}
    return KernelSpec("additive_attention", f"B={B} S={S} D={D}" + (" masked" if masked else ""),
                      params, S, "S", GFLOPS, (fwd, bwd), (fb, bb), ref)


def _decode(B, H, L, hs, ref=True):
    n = B * H * L * hs
    # FLOPs: q.k_s and sum_s P_s v_s are 2 L hs each per head; backward about 3x.
    # bytes: forward reads the L cached keys and values; backward reads them, writes dk, dv
    return KernelSpec("decode_attention", f"B{B} H{H} L{L} hs{hs}",
                      {"B": B, "H": H, "L": L, "Lmax": L, "hs": hs}, L, "L", GBPS,
                      (4 * n, 12 * n), ((2 * n + 2 * B * H * hs) * IT,
                                        (4 * n + 4 * B * H * hs) * IT), ref)


def kernel_specs(quick: bool) -> dict:
    """family -> list of KernelSpec, smallest size first."""
    if quick:
        return {
            "softmax": [_softmax((8, 64, 256)), _softmax((8, 128, 1024))],
            "cross_entropy": [_cross_entropy(256, 1024), _cross_entropy(1024, 1024)],
            "layernorm": [_layernorm(256, 768), _layernorm(1024, 768)],
            "mlp": [_mlp(128, 128, 512), _mlp(256, 256, 1024)],
            "attention": [_attention(1, 8, 64, 64), _attention(1, 8, 128, 64)],
            "additive_attention": [_additive(16, 8, 64), _additive(16, 16, 64)],
            "decode_attention": [_decode(1, 8, 64, 64), _decode(1, 8, 128, 64)],
        }
    return {
        "softmax": [_softmax((8, T, 1024)) for T in (128, 256, 512, 1024, 2048)],
        "cross_entropy": [_cross_entropy(N, 8192) for N in (512, 1024, 2048, 4096, 8192)],
        "layernorm": [_layernorm(N, 768) for N in (512, 1024, 2048, 4096, 8192)],
        "mlp": [_mlp(N, 768, 3072) for N in (256, 512, 1024, 2048)],
        # the reference builds T x T scores and keeps four of them in its backward: at
        # T=2048 that is ~0.5 GB and seconds per call, so it stops at 1024
        "attention": [_attention(1, 8, T, 64, ref=T <= 1024) for T in (128, 256, 512, 1024,
                                                                         2048)],
        "additive_attention": [_additive(64, S, 128) for S in (16, 32, 64, 128, 256)],
        "decode_attention": [_decode(1, 8, L, 64) for L in (128, 256, 512, 1024, 2048)],
    }


def make_inputs(spec: KernelSpec, rng) -> tuple:
    """(arrays tuple, options dict) for ``kernel.forward(*arrays, **options)``, float32."""
    p, dt = spec.params, np.dtype(spec.dtype)

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dt)

    f = spec.family
    if f == "softmax":
        return (randn(*p["shape"], scale=3.0),), {}
    if f == "cross_entropy":
        t = rng.integers(0, p["V"], size=p["N"])
        t[::7] = -100                                   # some ignored rows
        return (randn(p["N"], p["V"], scale=3.0), t), {}
    if f == "layernorm":
        C = p["C"]
        return (randn(p["N"], C, scale=2.0) + dt.type(0.5), 1 + randn(C, scale=0.1),
                randn(C, scale=0.1)), {}
    if f == "mlp":
        N, C, H = p["N"], p["C"], p["H"]
        return (randn(N, C), randn(C, H, scale=C ** -0.5), randn(H, scale=0.1),
                randn(H, C, scale=H ** -0.5), randn(C, scale=0.1)), {}
    if f == "attention":
        shape = (p["B"], p["H"], p["T"], p["hs"])
        return (randn(*shape), randn(*shape), randn(*shape)), {"causal": p["causal"]}
    if f == "additive_attention":
        B, S, Dh, Dx, A = p["B"], p["S"], p["Dh"], p["Dx"], p["A"]
        opts = {}
        if p["masked"]:
            opts["mask"] = np.arange(S)[None, :] <= (np.arange(B) % S)[:, None]
        return (randn(B, Dh), randn(B, S, Dx), randn(Dh, A, scale=Dh ** -0.5),
                randn(Dx, A, scale=Dx ** -0.5), randn(A)), opts
    if f == "decode_attention":
        B, H, Lmax, hs = p["B"], p["H"], p["Lmax"], p["hs"]
        return (randn(B, H, 1, hs), randn(B, H, Lmax, hs), randn(B, H, Lmax, hs),
                p["L"]), {}
    raise KeyError(f"no inputs for kernel family {f!r}")


# ------------------------------------------------------------------ end to end

@dataclass(frozen=True)
class ModelSpec:
    """One GPT configuration of the end-to-end comparison (dropout 0 in both engines, so
    both run the same arithmetic; tied head; float32). The shape and batch come from a
    training preset (``from_preset``); the timing settings are the benchmark's own."""
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    train_steps: int = 10         # timed steps, after warm_steps untimed ones
    warm_steps: int = 2
    prompt_len: int = 8
    new_tokens: int = 128         # capped so prompt + new tokens fit in block_size
    gen_repeats: int = 3          # timed generations per path, after one untimed

    @classmethod
    def from_preset(cls, name: str, preset: str, **timing) -> "ModelSpec":
        """The shape and batch size of ``tinyllm train --model gpt --config <preset>``
        (its dropout is not used: the comparison runs without dropout)."""
        from ..train.runs import GPT_PRESETS
        p = GPT_PRESETS[preset]
        m = p.model
        return cls(name, m.n_layer, m.n_head, m.n_embd, m.block_size, p.data.batch_size,
                   **timing)

    @property
    def label(self) -> str:
        return (f"{self.n_layer}L/{self.n_head}H/{self.n_embd} block {self.block_size} "
                f"batch {self.batch_size}")

    def gen_tokens(self) -> int:
        return min(self.new_tokens, self.block_size - self.prompt_len)

    def train_flops_per_token(self, params: int) -> float:
        """FLOPs of one training token (forward + backward), nanoGPT's / PaLM's estimate:
        6 per matrix parameter (every parameter but the position table) plus 12 L C T for
        the attention scores and their use."""
        C, L, T = self.n_embd, self.n_layer, self.block_size
        return 6 * (params - T * C) + 12 * L * C * T

    def to_json(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        d["gen_tokens"] = self.gen_tokens()
        return d


# config A is the "small" training preset (the reference, 4L/4H/128, block 128,
# batch 16), config B the "medium" one (6L/6H/384, block 256, batch 8)
CONFIG_PRESETS = {"A": "small", "B": "medium"}


def model_specs(quick: bool) -> list:
    """Config A (the issue's reference) and config B (the larger one)."""
    if quick:
        timing = {"A": dict(train_steps=2, warm_steps=1, new_tokens=24, gen_repeats=1),
                  "B": dict(train_steps=1, warm_steps=1, new_tokens=12, gen_repeats=1)}
    else:
        timing = {"A": {}, "B": dict(train_steps=8)}
    return [ModelSpec.from_preset(name, preset, **timing[name])
            for name, preset in CONFIG_PRESETS.items()]
