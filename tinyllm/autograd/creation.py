"""Making tensors: ``tl.tensor``, ``tl.zeros``, ``tl.ones``, ``tl.randn``, and the default
random generator that ``tl.manual_seed`` seeds.

The default generator is one ``np.random.Generator``, seeded from fresh entropy when tinyllm
is imported. ``tl.manual_seed(seed)`` re-seeds it *in place* (the same object, so anything
holding it sees the new stream), as ``torch.manual_seed`` does. It is what is drawn from when
no ``rng`` is given to:

- ``tl.randn``;
- ``tl.dropout`` / ``F.dropout`` (``rng=None``);
- the layers of ``tl.nn`` built with ``rng=None`` (``Linear``, ``Embedding``, ``Dropout``,
  ``MLP``, ``CausalSelfAttention``, ``Block``): their initial weights and dropout masks.

It does *not* govern what takes its own seed: ``tl.models.GPT(cfg, seed=...)`` and
``AttentionRNN`` (each draws from ``np.random.default_rng(seed)``, so a seeded model is the
same whatever ``manual_seed`` said), the Trainer's batches (``TrainConfig.seed``), sampling in
``tl.generate`` (``seed=``), the gradient-check lab (``seed=``), and NumPy's own global state
(``np.random.seed``), which tinyllm never reads.

dtypes follow the engine's rules: Python lists and numbers become float32, ndarrays keep
their dtype, and ``zeros``/``ones``/``randn`` are float32 unless ``dtype`` says otherwise.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor

_default = np.random.default_rng()


def default_generator() -> np.random.Generator:
    """The Generator ``manual_seed`` seeds (always the same object)."""
    return _default


def manual_seed(seed: int) -> np.random.Generator:
    """Re-seed the default generator (see the module docstring for what it governs); returns
    it. ``seed`` is a non-negative int."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative int, got {seed!r}")
    _default.bit_generator.state = np.random.PCG64(int(seed)).state
    return _default


def _shape(op: str, shape) -> tuple:
    """``zeros(2, 3)`` and ``zeros((2, 3))`` both mean the shape (2, 3)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for n in shape:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{op}: the shape must be non-negative ints, got {shape!r}")
    return tuple(int(n) for n in shape)


def _dtype(op: str, dtype, requires_grad: bool) -> np.dtype:
    dt = np.dtype(np.float32 if dtype is None else dtype)
    if requires_grad and dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{op}: only float32/float64 tensors can require grad, got {dt}")
    return dt


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """A new Tensor holding a *copy* of ``data`` (a list, number, ndarray or Tensor), as
    ``torch.tensor`` copies; ``Tensor(ndarray)`` shares the array instead. Lists and numbers
    become float32, ndarrays keep their dtype, unless ``dtype`` is given."""
    if isinstance(data, Tensor):
        data = data.data
    arr = Tensor(data).data            # the engine's conversion and checks
    arr = np.array(arr, dtype=arr.dtype if dtype is None else np.dtype(dtype), copy=True)
    return Tensor(arr, requires_grad=requires_grad)


def zeros(*shape, dtype=None, requires_grad: bool = False) -> Tensor:
    """A Tensor of zeros: ``tl.zeros(2, 3)`` or ``tl.zeros((2, 3))``; float32 by default."""
    dt = _dtype("zeros", dtype, requires_grad)
    return Tensor(np.zeros(_shape("zeros", shape), dt), requires_grad=requires_grad)


def ones(*shape, dtype=None, requires_grad: bool = False) -> Tensor:
    """A Tensor of ones: ``tl.ones(2, 3)`` or ``tl.ones((2, 3))``; float32 by default."""
    dt = _dtype("ones", dtype, requires_grad)
    return Tensor(np.ones(_shape("ones", shape), dt), requires_grad=requires_grad)


def randn(*shape, dtype=None, requires_grad: bool = False, rng=None) -> Tensor:
    """Standard-normal samples, float32 by default: ``tl.randn(2, 3)``. Drawn (in float64,
    then cast, as the layers' initialisers do) from ``rng`` (a Generator or an int seed), or
    from the default generator that ``tl.manual_seed`` seeds."""
    dt = _dtype("randn", dtype, requires_grad)
    if dt.kind != "f":
        raise TypeError(f"randn: dtype must be float32 or float64, got {dt}")
    if rng is None:
        rng = _default
    elif not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return Tensor(rng.standard_normal(_shape("randn", shape)).astype(dt),
                  requires_grad=requires_grad)
