"""Weight-quantised layers for inference: QuantLinear, QuantEmbedding, quantize_model.

A scheme is (bits, granularity, group) as in the ``qmatmul`` kernel family (its docstring
has the equations): symmetric codes Q = clip(rint(W / s), -qmax, qmax), one scale s per
tensor, per output channel or per group of ``group`` input rows; int4 packed two per byte.
``SCHEMES`` names them:

    "int8"  (8, channel)   "int8-tensor" (8, tensor)   "int8-g32" (8, group of 32)
    "int4"  (4, channel)   "int4-tensor" (4, tensor)   "int4-g32" (4, group of 32)

``QuantLinear(linear, scheme)``: y = x @ deq(Q) + b through the ``qmatmul`` kernel (the
Numba version never builds the float weight). The codes and scales are plain arrays
(``qweight``, ``scales``), not Parameters: nothing trains them, and ``state_dict`` holds only
the bias (a frozen Parameter, kept in float). Inference only: calling it on a Tensor that
requires grad while grad mode is on raises.

``QuantEmbedding(embedding, scheme)`` quantises a tied token table E (V, C) once, stored as
the output head's (C, V) weight E^T in the kernel's (in, out) layout. Its output channels
are the tokens, so per-channel scales of E^T are per-row scales of E, and groups run along
C inside a token's vector. One quantised copy serves both uses:

    lookup   wte[idx]      = deq(E^T)[:, idx]^T     (..., C)  a gather of columns
    head     x @ wte^T     = qmatmul(x, E^T)        (..., V)

``quantize_model(model, scheme, keep_embeddings=True)`` returns a copy of a model with every
Linear replaced by a QuantLinear and, with ``keep_embeddings=False``, a tied ``wte``
Embedding by a QuantEmbedding. Position embeddings, LayerNorms and biases stay in float.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import kernels
from ..autograd import Tensor, is_grad_enabled
from ..errors import ShapeError
from ..kernels import qmatmul
from ..kernels.qmatmul import dequantize, pack, quantize
from .layers import Embedding, Linear
from .module import Module, Parameter

SCHEMES = {
    "int8": (8, "channel", 32), "int8-tensor": (8, "tensor", 32), "int8-g32": (8, "group", 32),
    "int4": (4, "channel", 32), "int4-tensor": (4, "tensor", 32), "int4-g32": (4, "group", 32),
}


def scheme_of(scheme) -> tuple:
    """A name in ``SCHEMES`` or a (bits, granularity, group) tuple -> the tuple."""
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(f"quantisation scheme must be one of {', '.join(SCHEMES)}, got "
                             f"{scheme!r}")
        return SCHEMES[scheme]
    try:
        bits, gran, group = scheme
    except (TypeError, ValueError):
        raise ValueError(f"quantisation scheme must be a name or (bits, granularity, group), "
                         f"got {scheme!r}") from None
    return int(bits), gran, int(group)


def _no_grad_input(op, x):
    if is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad:
        raise RuntimeError(f"{op}: quantised layers are inference-only; call them under "
                           f"tl.no_grad() on inputs that need no gradient")


class QuantLinear(Module):
    """y = x @ deq(qweight) + bias. ``QuantLinear(linear, scheme="int8")`` quantises a
    Linear's weight (in, out); ``QuantLinear.from_arrays(...)`` rebuilds one from stored
    arrays. x (..., in) -> (..., out)."""

    def __init__(self, linear: Linear | None = None, scheme="int8"):
        super().__init__()
        self.bits, self.granularity, self.group = scheme_of(scheme)
        if linear is None:                       # from_arrays fills the rest
            return
        if not isinstance(linear, Linear):
            raise TypeError(f"QuantLinear: expected a Linear, got {type(linear).__name__}")
        w = linear.weight.data                   # (in, out)
        q, s = quantize(w, self.bits, self.granularity, self.group)
        self._set(pack(q, self.bits), s, linear.in_features, linear.out_features,
                  None if linear.bias is None else linear.bias.data.copy())

    @classmethod
    def from_arrays(cls, qweight, scales, in_features, out_features, scheme, bias=None):
        m = cls(None, scheme)
        m._set(qweight, scales, int(in_features), int(out_features), bias)
        # one empty call validates the stored shapes against the scheme (a ShapeError)
        m.forward_array(np.zeros((0, m.in_features), m.scales.dtype))
        return m

    def _set(self, qweight, scales, n_in, n_out, bias):
        self.in_features, self.out_features = n_in, n_out
        self.qweight = np.ascontiguousarray(qweight)           # int8 (in, out) / uint8 packed
        self.scales = np.ascontiguousarray(scales)             # (1, 1) / (1, out) / (G, out)
        self.bias = None if bias is None else Parameter(np.asarray(bias), requires_grad=False)
        self._prepared = None                                  # the Numba operands, on use

    def forward_array(self, x: np.ndarray) -> np.ndarray:
        """x (..., in) ndarray -> (..., out) ndarray, through the current qmatmul kernel."""
        if x.shape[-1:] != (self.in_features,):
            raise ShapeError(f"{self!r}: input has shape {tuple(x.shape)}, its last dimension "
                             f"must be {self.in_features}")
        x = x.astype(self.scales.dtype, copy=False)
        k = kernels.get("qmatmul")
        if k is qmatmul.NUMBA:                   # checked once: the per-token fast path
            p = self._prepared
            if p is None or p[0] is not self.qweight or p[1] is not self.scales:
                p = self._prepared = (self.qweight, self.scales) + qmatmul.prepare(
                    self.qweight, self.scales, self.bits, self.granularity, self.group,
                    self.in_features)
            lead = x.shape[:-1]
            x2 = np.ascontiguousarray(x.reshape(-1, self.in_features))
            y = qmatmul.forward_prepared(x2, *p[2:], self.bits)
            y = y.reshape(lead + (self.out_features,))
        else:
            y, _ = k.forward(x, self.qweight, self.scales, self.bits, self.granularity,
                             self.group, self.in_features)
        if self.bias is not None:
            y += self.bias.data
        return y

    def forward(self, x: Tensor) -> Tensor:
        _no_grad_input("QuantLinear", x)
        return Tensor(self.forward_array(x.data if isinstance(x, Tensor) else np.asarray(x)))

    def dequantized(self) -> np.ndarray:
        """The float weight deq(Q) (in, out) this layer multiplies by (for tests and study)."""
        return dequantize(self.qweight, self.scales, self.bits, self.granularity, self.group,
                          self.in_features)

    def quant_arrays(self) -> dict:
        return {"qweight": self.qweight, "scales": self.scales}

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes + scales + bias."""
        b = 0 if self.bias is None else self.bias.data.nbytes
        return self.qweight.nbytes + self.scales.nbytes + b

    def __repr__(self):
        g = f"{self.group}" if self.granularity == "group" else ""
        return (f"QuantLinear({self.in_features}, {self.out_features}, int{self.bits} "
                f"{self.granularity}{g}, bias={self.bias is not None})")


class QuantEmbedding(Module):
    """A token table E (V, C) stored quantised as the tied head's weight E^T (C, V) (module
    docstring). ``forward(idx)`` -> (..., C) rows; ``head(x)`` x (..., C) -> (..., V)."""

    def __init__(self, embedding: Embedding | None = None, scheme="int8"):
        super().__init__()
        self.scheme = scheme_of(scheme)
        if embedding is None:
            return
        if not isinstance(embedding, Embedding):
            raise TypeError(f"QuantEmbedding: expected an Embedding, got "
                            f"{type(embedding).__name__}")
        lin = Linear.__new__(Linear)                 # E^T as a bias-free Linear to quantise
        Module.__init__(lin)
        lin.in_features, lin.out_features = embedding.embedding_dim, embedding.num_embeddings
        lin.weight = Parameter(np.ascontiguousarray(embedding.weight.data.T))   # (C, V)
        lin.bias = None
        self._set(QuantLinear(lin, self.scheme))

    @classmethod
    def from_arrays(cls, qweight, scales, num_embeddings, embedding_dim, scheme):
        m = cls(None, scheme)
        m._set(QuantLinear.from_arrays(qweight, scales, embedding_dim, num_embeddings, scheme))
        return m

    def _set(self, table: QuantLinear):
        object.__setattr__(self, "_table", table)    # not a child: its arrays are ours
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features
        self.qweight, self.scales = table.qweight, table.scales

    @property
    def dtype(self):
        return self.scales.dtype

    def lookup(self, idx) -> np.ndarray:
        """idx int (...) -> deq(E^T)[:, idx]^T (..., C), dequantising only those rows."""
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"QuantEmbedding: idx must be integers, got {idx.dtype}")
        flat = idx.reshape(-1)
        V = self.num_embeddings
        if flat.size and (flat.min() < 0 or flat.max() >= V):
            raise IndexError(f"QuantEmbedding: token ids must be in [0, {V}), got "
                             f"{flat.min()}..{flat.max()}")
        t = self._table
        cols = t.qweight[:, flat]                               # (C or C/2, n) codes
        s = t.scales if t.granularity == "tensor" else t.scales[:, flat]
        rows = dequantize(cols, s, t.bits, t.granularity, t.group, t.in_features)   # (C, n)
        return np.ascontiguousarray(rows.T).reshape(idx.shape + (self.embedding_dim,))

    def forward(self, idx) -> Tensor:
        return Tensor(self.lookup(idx.data if isinstance(idx, Tensor) else idx))

    def head(self, x):
        """Logits of the tied head: x (..., C) @ deq(E^T) -> (..., V); Tensor or ndarray in,
        the same kind out."""
        if isinstance(x, Tensor):
            _no_grad_input("QuantEmbedding.head", x)
            return Tensor(self._table.forward_array(x.data))
        return self._table.forward_array(x)

    def quant_arrays(self) -> dict:
        return {"qweight": self.qweight, "scales": self.scales}

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scales.nbytes

    def __repr__(self):
        b, g, n = self.scheme
        return f"QuantEmbedding({self.num_embeddings}, {self.embedding_dim}, int{b} {g})"


def quantize_model(model: Module, scheme="int8", keep_embeddings: bool = True) -> Module:
    """A copy of ``model`` with every Linear a QuantLinear (and, unless ``keep_embeddings``,
    the tied token table ``transformer.wte`` a QuantEmbedding). The original is untouched."""
    scheme = scheme_of(scheme)
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if isinstance(m, Linear):
            out.set_submodule(name, QuantLinear(m, scheme))
    if not keep_embeddings:
        try:
            wte = out.get_submodule("transformer.wte")
        except KeyError:
            raise ValueError(f"quantize_model: keep_embeddings=False needs a tied token table "
                             f"at transformer.wte; {type(model).__name__} has none") from None
        out.set_submodule("transformer.wte", QuantEmbedding(wte, scheme))
    return out.eval()


def model_nbytes(model: Module) -> int:
    """Bytes of a model's stored arrays: float Parameters plus quantised codes and scales."""
    n = sum(p.data.nbytes for p in model.parameters())
    for _, m in model.named_modules():
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            n += m.qweight.nbytes + m.scales.nbytes
    return n


__all__ = ["SCHEMES", "scheme_of", "QuantLinear", "QuantEmbedding", "quantize_model",
           "model_nbytes"]
