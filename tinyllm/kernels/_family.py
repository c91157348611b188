"""The declarative description of a kernel family: what every consumer needs to know about it
besides its code.

Each family module ``tinyllm/kernels/<name>.py`` defines ``FAMILY = Family(...)`` next to its
``REFERENCE`` and ``NUMBA`` kernels. The registry, ``python -m tinyllm.kernels.<name>``,
``tinyllm bench``, the torch peer and the contract test all read this one object, so a size,
an input builder or a FLOP formula is written once.

A size is a ``Size``: shape parameters as plain JSON numbers (so they can be written to a
benchmark record and sent to another process), plus whether the NumPy reference is worth
running at that size. ``inputs(params, dtype, rng)`` turns parameters into the arrays and
options of ``forward(*arrays, **options)``; ``work(params, itemsize)`` counts one call's
floating-point operations and the bytes that must move through memory at least once (read +
write, STREAM's convention), forward and backward. ``label(params)`` names a size in tables
and benchmark records; ``sweep`` is the name of the x axis of the time-against-size plot and
``sweep_value(params)`` its value (by default ``params[sweep]``).

The module imports nothing from tinyllm, so it can describe a family to any consumer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

GBPS, GFLOPS = "GB/s", "GFLOP/s"


@dataclass(frozen=True)
class Size:
    params: dict              # shape parameters, JSON numbers / bools only
    ref: bool = True          # False: the NumPy reference is too slow or too big here


@dataclass(frozen=True)
class Work:
    flops: tuple              # (forward, backward) floating-point operations of one call
    bytes: tuple              # (forward, backward) bytes that must move at least once


@dataclass(frozen=True)
class Family:
    name: str
    inputs: Callable          # (params, dtype, rng) -> (arrays tuple, options dict)
    work: Callable            # (params, itemsize) -> Work
    label: Callable           # params -> a short human label, e.g. "B1 H8 T1024 hs64 causal"
    unit: str                 # GBPS or GFLOPS: the figure the family is judged by
    sweep: str                # the name of the x axis of the time-vs-size plot
    test_sizes: tuple         # Sizes for the contract test: small and awkward
    quick_sizes: tuple        # Sizes for ``tinyllm bench --quick``
    full_sizes: tuple         # Sizes for ``tinyllm bench`` and ``python -m``
    # implementation against the reference: max |impl - ref| / max |ref| per array
    tol: dict = field(default_factory=lambda: {"float32": 1e-5, "float64": 1e-10})
    torch: str | None = None  # name of the PyTorch equivalent in the torch peer (None: none)
    out_dtype: str | None = None   # the outputs' dtype when it is not the inputs' (a norm
                                   # summed in float64); None: outputs keep the inputs' dtype
    free_inputs: bool = False      # the inputs are any number of arrays of any shape, each
                                   # with its own float dtype (the gradient norm)
    backward: bool = True     # False: no backward (an optimiser update, a norm); the
                              # contract test and the bench then check and time forward only
    sweep_value: Callable | None = None   # params -> the x of the plot (None: params[sweep])

    def sizes(self, which: str) -> tuple:
        """``"test"``, ``"quick"`` or ``"full"``."""
        try:
            return {"test": self.test_sizes, "quick": self.quick_sizes,
                    "full": self.full_sizes}[which]
        except KeyError:
            raise KeyError(f"{self.name}: sizes are 'test', 'quick' or 'full', "
                           f"not {which!r}") from None

    def x(self, params: dict):
        """The sweep variable's value at ``params`` (the plot's x)."""
        return self.sweep_value(params) if self.sweep_value else params[self.sweep]
