"""What the benchmark measures: the kernel size sweeps and the end-to-end model configurations.

A ``KernelSpec`` is one kernel family at one size, read from the family's declarative
description (``tinyllm.kernels.family(name)``, the ``FAMILY`` of its module): the sizes of
``tinyllm bench --quick`` and ``tinyllm bench`` are its ``quick`` and ``full`` sizes, the work
of one call is its ``work`` (floating-point operations and bytes that must move through memory
at least once, read + write, STREAM's convention, which is also how the copy ceiling counts),
and the inputs are built by its ``inputs``. A spec carries everything the timing needs and
nothing that does timing: the shape parameters (plain JSON numbers), the sweep variable for
the time-against-size plot, and the work. The figure a kernel is judged by (``unit``) is GB/s
for the memory-bound families and GFLOP/s for the compute-bound ones; the other number still
places it on the roofline (arithmetic intensity = FLOPs / bytes).

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

from .. import kernels as K
from ..kernels import GBPS, GFLOPS  # noqa: F401  (the bench's units)

PASSES = ("fwd", "fwd+bwd")
# families whose forward also writes into a preallocated ``out=`` buffer: timed both ways
# ("fwd" allocates its output, as ``torch.softmax(x)`` does; "fwd out=" does not, as
# ``torch.softmax(x, out=buf)``), since a large output's fresh pages can cost more than the
# kernel itself
OUT_PASS = "fwd out="
OUT_FAMILIES = ("softmax",)


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
    torch: str | None = None   # the torch peer's equivalent (FAMILY.torch), None: none
    dtype: str = "float32"
    passes: tuple = PASSES     # ("fwd",) for a family without a backward

    def work(self, pass_: str) -> tuple:
        """(flops, bytes) of one call of ``pass_`` ("fwd", "fwd out=" or "fwd+bwd")."""
        if pass_ in ("fwd", OUT_PASS):
            return self.flops[0], self.bytes[0]
        return self.flops[0] + self.flops[1], self.bytes[0] + self.bytes[1]

    def to_json(self) -> dict:
        return asdict(self)


def spec_of(family: str, size, dtype: str = "float32") -> KernelSpec:
    """The KernelSpec of one ``Size`` of a family."""
    fam = K.family(family)
    p = size.params
    w = fam.work(p, np.dtype(dtype).itemsize)
    return KernelSpec(family, fam.label(p), p, fam.x(p), fam.sweep, fam.unit, tuple(w.flops),
                      tuple(w.bytes), size.ref, fam.torch, dtype,
                      _passes(family, fam.backward))


def _passes(family: str, backward: bool) -> tuple:
    first = ("fwd", OUT_PASS) if family in OUT_FAMILIES else ("fwd",)
    return first + (("fwd+bwd",) if backward else ())


def kernel_specs(quick: bool) -> dict:
    """family -> list of KernelSpec, smallest size first, for every family."""
    which = "quick" if quick else "full"
    return {name: [spec_of(name, s) for s in K.family(name).sizes(which)]
            for name in K.FAMILIES}


def make_inputs(spec: KernelSpec, rng) -> tuple:
    """(arrays tuple, options dict) for ``kernel.forward(*arrays, **options)``."""
    return K.family(spec.family).inputs(spec.params, np.dtype(spec.dtype), rng)


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
    warm_steps: int = 8           # a step settles after ~10 (both engines: fresh memory,
                                  # caches); fewer warm-up steps let the timed ones drift
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
        timing = {"A": {}, "B": dict(train_steps=8, warm_steps=5)}
    return [ModelSpec.from_preset(name, preset, **timing[name])
            for name, preset in CONFIG_PRESETS.items()]
