"""The layers a GPT is built from: Linear, Embedding, LayerNorm, Dropout, MLP,
CausalSelfAttention and Block, in the order nanoGPT's ``model.py`` builds them.

Legend: B = batch, T = time, C = channels (n_embd), H = heads, hs = head size (C / H),
Hd = MLP hidden width, V = vocabulary.

The transformer layers (MLP, CausalSelfAttention, Block) take their sizes from a config:
any object with ``n_embd``, ``n_head``, ``dropout`` and ``bias`` (``TransformerConfig``;
``tl.models.GPTConfig`` is one), so a model passes its config down instead of a row of
positional numbers: ``Block(cfg, rng, dtype)``. What is not a property of the architecture
(the init scale ``std`` / ``proj_std``, the dropout Generator) is a keyword.

Parameter names and layouts follow GPT-2's checkpoints: ``Linear.weight`` is (in, out), so
``y = x @ W + b`` with no transpose; attention's fused projection is ``c_attn`` (C -> 3C, in
q, k, v order) and the output projections are ``c_proj``.

Initialisation draws from a ``np.random.Generator`` (``rng``: a Generator, an int seed, or
None for the default generator that ``tl.manual_seed`` seeds), always in float64 and then cast, so a float32 and a float64 model
built from one seed hold the same numbers up to rounding. ``std=None`` gives PyTorch's
defaults (Linear: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias; Embedding: N(0, 1));
a number gives N(0, std) weights and zero biases, GPT-2's scheme.

Left out on purpose: dropout on the attention probabilities. The fused attention kernel
never materialises the T x T matrix, so there is nothing to drop; ``dropout`` here acts on
the residual branches (and on the embeddings, in GPT), as in nanoGPT's flash path minus its
``dropout_p``.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..autograd import Tensor, concat, default_generator
from ..autograd.ops import split_heads
from ..autograd import functional as F
from ..errors import ShapeError
from .module import Module, Parameter


def as_rng(rng) -> np.random.Generator:
    """A Generator from a Generator (returned as is), an int seed, or None: the default
    generator, which ``tl.manual_seed`` seeds (so ``tl.manual_seed(0); nn.Linear(3, 4)`` is
    reproducible, as in PyTorch)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return default_generator()
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def _positive(op: str, **sizes) -> None:
    for name, n in sizes.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {n!r}")


class TransformerConfig(Protocol):
    """The fields the transformer layers read (``tl.models.GPTConfig`` has them all)."""
    n_embd: int          # C: the residual-stream width
    n_head: int          # H: attention heads; n_embd must be a multiple
    dropout: float       # on the residual branches while training
    bias: bool           # biases in Linear and LayerNorm


def _dims(op: str, cfg, *names) -> tuple:
    """The named fields of cfg, or a TypeError naming the op and the field it lacks."""
    try:
        return tuple(getattr(cfg, n) for n in names)
    except AttributeError as e:
        raise TypeError(f"{op}: cfg must be a config with {', '.join(names)} (a GPTConfig, "
                        f"say), got {type(cfg).__name__} without {e.name!r}") from None


def _normal(rng, shape, std, dtype) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(dtype)


class Linear(Module):
    """y = x @ W + b. weight (in, out), bias (out,) or None. x (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=np.float32, rng=None, std: float | None = None):
        super().__init__()
        _positive("Linear", in_features=in_features, out_features=out_features)
        rng = as_rng(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        shape = (self.in_features, self.out_features)
        if std is None:                        # PyTorch's default: U(-k, k), k = 1/sqrt(in)
            k = 1.0 / np.sqrt(in_features)
            w = rng.uniform(-k, k, shape)
            b = rng.uniform(-k, k, (out_features,))
        else:
            w = rng.standard_normal(shape) * std
            b = np.zeros(out_features)
        self.weight = Parameter(w.astype(dtype))
        self.bias = Parameter(b.astype(dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ShapeError(f"Linear({self.in_features}, {self.out_features}): input has "
                             f"shape {tuple(x.shape)}, its last dimension must be "
                             f"{self.in_features}")
        if x.ndim <= 2:
            return F.linear(x, self.weight, self.bias)
        # one (N, in) @ (in, out) GEMM instead of a batched matmul, whose weight gradient
        # would be a stack of per-batch products summed afterwards
        lead = tuple(x.shape[:-1])
        y = F.linear(x.reshape((-1, self.in_features)), self.weight, self.bias)
        return y.reshape(lead + (self.out_features,))

    def __repr__(self):
        return (f"Linear({self.in_features}, {self.out_features}, "
                f"bias={self.bias is not None})")


class Embedding(Module):
    """Rows of a (num, dim) table: idx int (...) -> (..., dim)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=np.float32, rng=None,
                 std: float | None = None):
        super().__init__()
        _positive("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        rng = as_rng(rng)
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = Parameter(_normal(rng, (num_embeddings, embedding_dim),
                                        1.0 if std is None else std, dtype))

    def forward(self, idx) -> Tensor:
        return F.embedding(idx, self.weight)

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.embedding_dim})"


class LayerNorm(Module):
    """Normalise the last axis: (x - mean) / sqrt(var + eps) * weight + bias.
    weight starts at 1, bias (None when ``bias=False``) at 0."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True, dtype=np.float32):
        super().__init__()
        _positive("LayerNorm", dim=dim)
        if not eps > 0:
            raise ValueError(f"LayerNorm: eps must be > 0, got {eps!r}")
        self.dim, self.eps = int(dim), float(eps)
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def __repr__(self):
        return f"LayerNorm({self.dim}, eps={self.eps}, bias={self.bias is not None})"


class Dropout(Module):
    """Inverted dropout while ``training``; the identity in eval mode or with p = 0.

    The mask comes from ``self.rng``, a ``np.random.Generator`` the layer owns (or shares:
    pass one Generator to several layers). Reproducible from a seed, and its state is
    saveable: ``state = layer.rng.bit_generator.state`` and later
    ``layer.rng.bit_generator.state = state``.
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if not (isinstance(p, (int, float, np.floating)) and 0.0 <= p <= 1.0):
            raise ValueError(f"Dropout: p must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = as_rng(rng)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training, self.rng)

    def __repr__(self):
        return f"Dropout(p={self.p})"


class ReLU(Module):
    """max(x, 0), elementwise: the module form of ``tl.relu``, for ``Sequential``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class GELU(Module):
    """GELU, elementwise, as ``torch.nn.GELU``: the exact erf form by default
    (``approximate="none"``, PyTorch's default), or GPT-2's tanh form (``"tanh"``, what
    ``tl.gelu`` and the GPT's MLP use)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"GELU: approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate=self.approximate)

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


class Tanh(Module):
    """tanh(x), elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class MLP(Module):
    """GPT-2's feed-forward block through the fused ``mlp`` kernel::

        y = GELU_tanh(x @ c_fc.weight + c_fc.bias) @ c_proj.weight + c_proj.bias

    ``MLP(cfg, rng=None, dtype=np.float32, *, hidden=None, std=None, proj_std=None,
    dropout_rng=None)``: C = cfg.n_embd, dropout cfg.dropout, biases when cfg.bias.
    x (..., C) -> (..., C); hidden width Hd (default 4C). ``proj_std`` initialises
    ``c_proj.weight`` (GPT-2 scales it down by sqrt(2 n_layer)); dropout follows c_proj.
    """

    def __init__(self, cfg: TransformerConfig, rng=None, dtype=np.float32, *,
                 hidden: int | None = None, std: float | None = None,
                 proj_std: float | None = None, dropout_rng=None):
        super().__init__()
        n_embd, dropout, bias = _dims("MLP", cfg, "n_embd", "dropout", "bias")
        hidden = 4 * n_embd if hidden is None else hidden
        _positive("MLP", n_embd=n_embd, hidden=hidden)
        rng = as_rng(rng)
        self.c_fc = Linear(n_embd, hidden, bias, dtype, rng, std)
        self.c_proj = Linear(hidden, n_embd, bias, dtype, rng,
                             std if proj_std is None else proj_std)
        self.dropout = Dropout(dropout, rng if dropout_rng is None else dropout_rng)

    def forward(self, x: Tensor) -> Tensor:
        if not (isinstance(self.c_fc, Linear) and isinstance(self.c_proj, Linear)):
            # a quantised layer (tl.nn.QuantLinear) in either place: the unfused equations
            return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))
        y = F.mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight,
                  self.c_proj.bias)                                  # (..., C)
        return self.dropout(y)


class CausalSelfAttention(Module):
    """Multi-head causal self-attention, GPT-2 style.

    x (B, T, C) -> c_attn -> q, k, v each (B, H, T, hs) -> fused causal attention ->
    (B, T, C) -> c_proj -> dropout. c_attn's weight (C, 3C) holds the q, k and v
    projections side by side, as in GPT-2: one product, whose output ``split_heads`` cuts
    into the three (B, H, T, hs) tensors.

    ``kv``, for inference under ``tl.no_grad()``, is ``(k_buf, v_buf, pos)``: this layer's
    preallocated key and value arrays (B, H, Lmax, hs) and the absolute position of x's
    first token. The new keys and values are written at ``pos : pos + T``; then
    - ``pos == 0`` (prefill): attention over x itself, the same fused kernel as training;
    - ``T == 1`` (decode): the one query against the ``pos + 1`` cached positions, with the
      ``decode_attention`` kernel;
    - ``T > 1`` after a filled cache (chunked prefill, e.g. verifying a speculative draft):
      the query at absolute position pos + t attends causally to the cached keys
      0..pos-1 and the new keys pos..pos+t,

          out_t = sum_{s <= pos+t} softmax_s(c q_t . k_s) v_s,     t = 0..T-1,

      which is ``decode_attention`` with length pos + t + 1, once per new query (T is a
      handful of draft tokens; each call reads the cache in place).

    ``CausalSelfAttention(cfg, rng=None, dtype=np.float32, *, std=None, proj_std=None,
    dropout_rng=None, n_head=None)`` with C = cfg.n_embd, H = cfg.n_head, hs = C / H.
    ``n_head`` (a head-pruned layer) keeps hs but has that many heads: the attention width
    A = n_head hs, c_attn (C, 3A), c_proj (A, C); by default A = C.
    """

    def __init__(self, cfg: TransformerConfig, rng=None, dtype=np.float32, *,
                 std: float | None = None, proj_std: float | None = None, dropout_rng=None,
                 n_head: int | None = None):
        super().__init__()
        n_embd, cfg_heads, dropout, bias = _dims("CausalSelfAttention", cfg, "n_embd",
                                                 "n_head", "dropout", "bias")
        _positive("CausalSelfAttention", n_embd=n_embd, n_head=cfg_heads)
        if n_embd % cfg_heads:
            raise ValueError(f"CausalSelfAttention: n_embd ({n_embd}) must be divisible by "
                             f"n_head ({cfg_heads})")
        n_head = cfg_heads if n_head is None else n_head
        _positive("CausalSelfAttention", n_head=n_head)
        rng = as_rng(rng)
        self.n_embd, self.n_head = int(n_embd), int(n_head)
        self.head_size = n_embd // cfg_heads                   # hs
        A = self.n_head * self.head_size                       # attention width (C unpruned)
        self.c_attn = Linear(n_embd, 3 * A, bias, dtype, rng, std)
        self.c_proj = Linear(A, n_embd, bias, dtype, rng,
                             std if proj_std is None else proj_std)
        self.resid_dropout = Dropout(dropout, rng if dropout_rng is None else dropout_rng)

    def forward(self, x: Tensor, kv=None) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.n_embd:
            raise ShapeError(f"CausalSelfAttention: x must be (B, T, {self.n_embd}), got "
                             f"{tuple(x.shape)}")
        B, T, C = x.shape
        H, hs = self.n_head, self.head_size
        if kv is None:
            # one (B T, C) @ (C, 3A) product with its bias (a Linear node, or a quantised
            # one), cut into heads by one node whose backward fills one (B T, 3A) gradient
            # (ops.SplitHeads)
            qkv = self.c_attn(x.reshape((B * T, C)))            # (B T, 3A)
            q, k, v = split_heads(qkv, B, T, H, hs)            # (B, H, T, hs) each
            y = F.scaled_dot_product_attention(q, k, v, causal=True)  # (B, H, T, hs)
        else:
            # inference (no backward to pay for): one (C, 3C) product, fewest ops per token
            qkv = self.c_attn(x).reshape((B, T, 3, H, hs)).transpose((2, 0, 3, 1, 4))
            y = self._cached(qkv[0], qkv[1], qkv[2], kv)       # (3, B, H, T, hs) -> ...
        y = y.transpose((0, 2, 1, 3)).reshape((B, T, H * hs))  # (B, T, H, hs) -> (B, T, A)
        return self.resid_dropout(self.c_proj(y))

    @staticmethod
    def _cached(q, k, v, kv):
        k_buf, v_buf, pos = kv
        T = q.shape[2]
        if pos + T > k_buf.shape[2]:
            raise ShapeError(f"CausalSelfAttention: {T} new positions at {pos} overflow a "
                             f"KV cache of length {k_buf.shape[2]}")
        k_buf[:, :, pos:pos + T] = k.data                      # (B, H, T, hs) into the cache
        v_buf[:, :, pos:pos + T] = v.data
        if pos == 0:
            return F.scaled_dot_product_attention(q, k, v, causal=True)
        if T == 1:
            return F.decode_attention(q, k_buf, v_buf, pos + 1)  # (B, H, 1, hs)
        # chunked prefill: new query t (absolute position pos + t) is decode attention
        # against the cache's first pos + t + 1 positions (its causal past, itself included)
        rows = [F.decode_attention(q[:, :, t:t + 1], k_buf, v_buf, pos + t + 1)
                for t in range(T)]                             # T x (B, H, 1, hs)
        return concat(rows, axis=2)                            # (B, H, T, hs)


class Block(Module):
    """A pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    ``Block(cfg, rng=None, dtype=np.float32, *, std=None, proj_std=None, dropout_rng=None,
    hidden=None, n_head=None)``; the MLP's hidden width is ``hidden`` (default 4 cfg.n_embd)
    and the attention has ``n_head`` heads of cfg.n_embd / cfg.n_head each (default
    cfg.n_head): other values make a structurally pruned block."""

    def __init__(self, cfg: TransformerConfig, rng=None, dtype=np.float32, *,
                 std: float | None = None, proj_std: float | None = None, dropout_rng=None,
                 hidden: int | None = None, n_head: int | None = None):
        super().__init__()
        (n_embd, bias) = _dims("Block", cfg, "n_embd", "bias")
        rng = as_rng(rng)
        init = dict(std=std, proj_std=proj_std, dropout_rng=dropout_rng)
        self.ln_1 = LayerNorm(n_embd, bias=bias, dtype=dtype)
        self.attn = CausalSelfAttention(cfg, rng, dtype, n_head=n_head, **init)
        self.ln_2 = LayerNorm(n_embd, bias=bias, dtype=dtype)
        self.mlp = MLP(cfg, rng, dtype, hidden=4 * n_embd if hidden is None else hidden,
                       **init)

    def forward(self, x: Tensor, kv=None) -> Tensor:
        x = x + self.attn(self.ln_1(x), kv)                    # (B, T, C)
        return x + self.mlp(self.ln_2(x))                      # (B, T, C)


__all__ = ["Linear", "Embedding", "LayerNorm", "Dropout", "MLP", "CausalSelfAttention",
           "Block", "TransformerConfig", "as_rng", "ReLU", "GELU", "Tanh"]
