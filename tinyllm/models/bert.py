"""Bert: a bidirectional, BERT-style transformer encoder with an MLM head and task heads.

Legend: B = batch, T = time, C = n_embd, H = n_head, hs = C / H, Hd = n_inner (MLP width),
V = vocab_size, L = n_layer. ``key_mask`` (B, T) bool is True at real tokens and False at
padding; padded keys are never attended to (the ``attention`` kernel's key-padding mask), so
a padded position's token changes nothing at the real positions.

    x      = word_embeddings[idx] + position_embeddings[pos] + token_type_embeddings[tt]
    x      = x + attn(LN(x), key_mask); x = x + ffn(LN(x))     L pre-LN layers
    h      = LN_final(x)                                         (B, T, C)  ``encode``
    MLM    : logits = LN(gelu(h W_t + b_t)) @ word_embeddings^T + bias   (B, T, V)
    span   : (start, end) = h @ qa_outputs                       (B, T) each

Unlike the original BERT (post-LN), the norms come before each sub-layer, with one more
after the last layer (``encoder.LayerNorm``): pre-LN trains without a warm-up-critical
schedule at this size. Everything else keeps BERT's parameter names, so a reader of
BERT's checkpoints recognises them::

    embeddings.word_embeddings / position_embeddings / token_type_embeddings
    encoder.layer.{i}.attention.LayerNorm            pre-attention norm
    encoder.layer.{i}.attention.self.qkv             fused q, k, v: (C, 3C), in q, k, v order
    encoder.layer.{i}.attention.output.dense         (C, C)
    encoder.layer.{i}.intermediate.LayerNorm         pre-MLP norm
    encoder.layer.{i}.intermediate.dense             "fc1": (C, Hd), then GELU (tanh form)
    encoder.layer.{i}.output.dense                   "fc2": (Hd, C)
    encoder.LayerNorm                                the final norm
    cls.predictions.transform.dense / .LayerNorm, cls.predictions.bias   the MLM head
    qa_outputs                                       the span head: (C, 2) -> start, end

(BERT keeps q, k and v as three Linears; one fused (C, 3C) product is faster here, and LoRA
adapts its column slices, ``LORA_TARGETS``.) The MLM decoder is tied to the word
embeddings, as in BERT. Initialisation: every weight N(0, 0.02), biases 0, norms 1, drawn in
float64 from ``np.random.default_rng(seed)`` and cast.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..autograd import Tensor
from ..autograd import functional as F
from ..errors import ShapeError
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, Parameter
from ._config import ConfigDict


@dataclass
class BertConfig(ConfigDict):
    vocab_size: int          # V, specials included
    max_position: int = 128  # the longest input (rows of position_embeddings)
    n_layer: int = 4         # L
    n_head: int = 4          # H
    n_embd: int = 64         # C; a multiple of n_head
    n_inner: int = 256       # Hd: the MLP's hidden width
    type_vocab_size: int = 2  # segments: 0 = question (or plain text), 1 = context
    dropout: float = 0.0     # on the embeddings and the residual branches while training
    bias: bool = True

    def __post_init__(self):
        for f in ("vocab_size", "max_position", "n_layer", "n_head", "n_embd", "n_inner",
                  "type_vocab_size"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"BertConfig: {f} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"BertConfig: n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"BertConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, (bool, np.bool_)):
            raise ValueError(f"BertConfig: bias must be a bool, got {self.bias!r}")


class _Part(Module):
    """A named container (embeddings, attention, output, ...): BERT's names go through it."""


class BertSelfAttention(Module):
    """x (B, T, C) -> qkv -> q, k, v (B, H, T, hs) -> bidirectional attention over the
    unmasked keys -> (B, T, C). ``qkv`` is called as a module, ``qkv(x)``, so a LoRA layer
    can stand in for it."""

    def __init__(self, cfg: BertConfig, rng, dtype, std):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = Linear(cfg.n_embd, 3 * cfg.n_embd, cfg.bias, dtype, rng, std)

    def forward(self, x: Tensor, key_mask=None) -> Tensor:
        B, T, C = x.shape
        H = self.n_head
        qkv = self.qkv(x)                                            # (B, T, 3C)
        qkv = qkv.reshape((B, T, 3, H, C // H)).transpose((2, 0, 3, 1, 4))  # (3, B, H, T, hs)
        q, k, v = qkv[0], qkv[1], qkv[2]
        kw = {} if key_mask is None else {"key_mask": key_mask}
        y = F.scaled_dot_product_attention(q, k, v, causal=False, **kw)  # (B, H, T, hs)
        return y.transpose((0, 2, 1, 3)).reshape((B, T, C))


class BertLayer(Module):
    """One pre-LN encoder layer: x + attn(LN(x)), then x + fc2(gelu(fc1(LN(x))))."""

    def __init__(self, cfg: BertConfig, rng, dtype, std, drop_rng):
        super().__init__()
        C = cfg.n_embd
        self.attention = _Part()
        self.attention.LayerNorm = LayerNorm(C, bias=cfg.bias, dtype=dtype)
        self.attention.self = BertSelfAttention(cfg, rng, dtype, std)
        self.attention.output = _Part()
        self.attention.output.dense = Linear(C, C, cfg.bias, dtype, rng, std)
        self.intermediate = _Part()
        self.intermediate.LayerNorm = LayerNorm(C, bias=cfg.bias, dtype=dtype)
        self.intermediate.dense = Linear(C, cfg.n_inner, cfg.bias, dtype, rng, std)
        self.output = _Part()
        self.output.dense = Linear(cfg.n_inner, C, cfg.bias, dtype, rng, std)
        self.dropout = Dropout(cfg.dropout, drop_rng)

    def forward(self, x: Tensor, key_mask=None) -> Tensor:
        a = self.attention
        y = a.output.dense(a.self(a.LayerNorm(x), key_mask))         # (B, T, C)
        x = x + self.dropout(y)
        h = self.intermediate.LayerNorm(x)
        fc1, fc2 = self.intermediate.dense, self.output.dense
        if type(fc1) is Linear and type(fc2) is Linear:              # the fused mlp kernel
            y = F.mlp(h, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        else:                                                        # e.g. LoRA in either
            y = fc2(F.gelu(fc1(h), approximate="tanh"))              # the same equations
        return x + self.dropout(y)


# what LoRA can adapt: name -> (module path in layer i, first column, last column + 1)
def lora_targets(cfg: BertConfig, names, layers=None) -> dict:
    """``{module path: {slice name: (lo, hi)}}`` for ``tl.nn.apply_lora``, for the named
    projections (q, k, v: column slices of the fused qkv; o: attention.output.dense; fc1,
    fc2: the MLP) in the given layers (default all)."""
    C = cfg.n_embd
    where = {"q": ("attention.self.qkv", 0, C), "k": ("attention.self.qkv", C, 2 * C),
             "v": ("attention.self.qkv", 2 * C, 3 * C),
             "o": ("attention.output.dense", 0, C),
             "fc1": ("intermediate.dense", 0, cfg.n_inner),
             "fc2": ("output.dense", 0, C)}
    bad = [n for n in names if n not in where]
    if bad or not names:
        raise ValueError(f"LoRA targets must be some of {', '.join(where)}, got "
                         f"{','.join(names) or 'none'}")
    layers = range(cfg.n_layer) if layers is None else layers
    out: dict = {}
    for i in layers:
        for n in names:
            path, lo, hi = where[n]
            out.setdefault(f"encoder.layer.{i}.{path}", {})[n] = (lo, hi)
    return out


class Bert(Module):
    """``Bert(cfg, seed=0, dtype=np.float32)``.

    - ``encode(idx, key_mask=None, token_type=None, start=0, stop=None, x=None)``: the
      hidden states; ``start``/``stop`` run only layers [start, stop) (``x`` is then the
      input to layer ``start``, e.g. cached features); the final norm applies when the last
      layer ran.
    - ``forward(idx, targets=None, key_mask=None, token_type=None) -> (logits, loss)``:
      masked-language modelling; targets (B, T) hold the original token at the selected
      positions and -100 elsewhere (the loss is their mean cross-entropy).
    - ``span_logits(h) -> (start, end)`` (B, T) each, from encoded states.
    """

    def __init__(self, cfg: BertConfig, seed: int = 0, dtype=np.float32):
        super().__init__()
        if not isinstance(cfg, BertConfig):
            raise TypeError(f"Bert: cfg must be a BertConfig, got {type(cfg).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"Bert: dtype must be float32 or float64, got {dtype}")
        self.config = cfg
        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        rng = np.random.default_rng(init_seq)
        self.rng = np.random.default_rng(drop_seq)       # every Dropout's Generator
        std, C = 0.02, cfg.n_embd
        e = self.embeddings = _Part()
        e.word_embeddings = Embedding(cfg.vocab_size, C, dtype, rng, std)
        e.position_embeddings = Embedding(cfg.max_position, C, dtype, rng, std)
        e.token_type_embeddings = Embedding(cfg.type_vocab_size, C, dtype, rng, std)
        e.dropout = Dropout(cfg.dropout, self.rng)
        enc = self.encoder = _Part()
        enc.layer = ModuleList(BertLayer(cfg, rng, dtype, std, self.rng)
                               for _ in range(cfg.n_layer))
        enc.LayerNorm = LayerNorm(C, bias=cfg.bias, dtype=dtype)
        p = _Part()
        p.transform = _Part()
        p.transform.dense = Linear(C, C, cfg.bias, dtype, rng, std)
        p.transform.LayerNorm = LayerNorm(C, bias=cfg.bias, dtype=dtype)
        p.bias = Parameter(np.zeros(cfg.vocab_size, dtype))
        self.cls = _Part()
        self.cls.predictions = p
        self.qa_outputs = Linear(C, 2, True, dtype, rng, std)

    @property
    def dtype(self) -> np.dtype:
        return self.embeddings.word_embeddings.weight.dtype

    # ------------------------------------------------------------ inputs
    def _inputs(self, idx, key_mask, token_type, op):
        arr = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
        if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.shape[1] < 1:
            raise ShapeError(f"Bert.{op}: idx must be an int array (B, T) with T >= 1, got "
                             f"{arr.dtype} {arr.shape}")
        B, T = arr.shape
        cfg = self.config
        if T > cfg.max_position:
            raise ShapeError(f"Bert.{op}: sequence length {T} exceeds max_position "
                             f"{cfg.max_position}")
        if arr.min() < 0 or arr.max() >= cfg.vocab_size:
            raise ShapeError(f"Bert.{op}: token ids must be in [0, {cfg.vocab_size}), got "
                             f"[{arr.min()}, {arr.max()}]")
        if key_mask is not None:
            key_mask = np.asarray(key_mask)
            if key_mask.shape != (B, T) or key_mask.dtype != np.bool_:
                raise ShapeError(f"Bert.{op}: key_mask must be a bool array {(B, T)} like "
                                 f"idx, got {key_mask.dtype} {key_mask.shape}")
            if key_mask.all():
                key_mask = None                          # nothing to mask: the plain path
        if token_type is not None:
            token_type = np.asarray(token_type)
            if token_type.shape != (B, T) or token_type.dtype.kind not in "iu" or \
                    token_type.min() < 0 or token_type.max() >= cfg.type_vocab_size:
                raise ShapeError(f"Bert.{op}: token_type must be an int array {(B, T)} with "
                                 f"values in [0, {cfg.type_vocab_size})")
        return arr, key_mask, token_type

    def embed(self, idx, token_type=None) -> Tensor:
        """Word + position (+ token type) embeddings, with dropout: (B, T, C)."""
        e = self.embeddings
        T = idx.shape[1]
        x = e.word_embeddings(idx) + e.position_embeddings.weight[:T]
        if token_type is not None:
            x = x + e.token_type_embeddings(token_type)
        else:                                    # every token in segment 0
            x = x + e.token_type_embeddings.weight[0]
        return e.dropout(x)

    def encode(self, idx, key_mask=None, token_type=None, start: int = 0, stop=None,
               x=None) -> Tensor:
        idx, key_mask, token_type = self._inputs(idx, key_mask, token_type, "encode")
        L = self.config.n_layer
        stop = L if stop is None else stop
        if not 0 <= start <= stop <= L:
            raise ValueError(f"Bert.encode: need 0 <= start <= stop <= {L}, got {start}, "
                             f"{stop}")
        if x is None:
            if start != 0:
                raise ValueError("Bert.encode: start > 0 needs x, the input to that layer")
            x = self.embed(idx, token_type)
        for layer in list(self.encoder.layer)[start:stop]:
            x = layer(x, key_mask)
        return self.encoder.LayerNorm(x) if stop == L else x

    # ------------------------------------------------------------ heads
    def mlm_logits(self, h: Tensor) -> Tensor:
        """h (..., C) -> (..., V): transform, then the tied decoder."""
        p = self.cls.predictions
        C, V = self.config.n_embd, self.config.vocab_size
        lead = tuple(h.shape[:-1])
        z = p.transform.LayerNorm(F.gelu(p.transform.dense(h), approximate="tanh"))
        z = z.reshape((-1, C)) @ self.embeddings.word_embeddings.weight.T + p.bias
        return z.reshape(lead + (V,))

    def forward(self, idx, targets=None, key_mask=None, token_type=None):
        """MLM: logits (B, T, V) without targets; with targets, ``(logits of the selected
        positions (N, V), loss)``: only the N positions whose target is not -100 go through
        the head (the other 85% cost nothing there)."""
        h = self.encode(idx, key_mask, token_type)                    # (B, T, C)
        if targets is None:
            return self.mlm_logits(h), None
        tg = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
        if tg.shape != tuple(h.shape[:2]) or tg.dtype.kind not in "iu":
            raise ShapeError(f"Bert.forward: targets must be an int array {tuple(h.shape[:2])}"
                             f" like idx, got {tg.dtype} {tg.shape}")
        sel = np.flatnonzero(tg.reshape(-1) != -100)
        if sel.size == 0:
            raise ShapeError("Bert.forward: no position is selected (every target is -100)")
        rows = h.reshape((-1, self.config.n_embd))[sel]               # (N, C)
        logits = self.mlm_logits(rows)                                # (N, V)
        return logits, F.cross_entropy(logits, tg.reshape(-1)[sel])

    def span_logits(self, h: Tensor):
        """h (B, T, C) -> (start, end) logits, (B, T) each."""
        B, T, C = h.shape
        z = self.qa_outputs(h.reshape((B * T, C))).reshape((B, T, 2))
        return z[:, :, 0], z[:, :, 1]


__all__ = ["Bert", "BertConfig", "lora_targets"]
