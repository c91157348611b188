"""The document's model (sections 4.1-4.2): an autoregressive RNN with attention, as
docs/DESIGN.md section 1 pins it down.

Per position t = 0, 1, ..., T-1 of a token sequence ``idx`` (0-based here; the document
counts from 1, so its h_0 is our state before position 0):

    x_i      = wte[idx_i] + wpe[i]                       token + position embedding (De)
    e_{t,i}  = v_a . tanh(h_{t-1} W_q + x_i W_k)         (4.2b) additive score, i <= t
    a_{t,i}  = exp(e_{t,i}) / sum_{j<=t} exp(e_{t,j})    (4.2a) causal softmax
    c_t      = sum_{i<=t} a_{t,i} x_i                    context vector (De)
    h_t      = tanh(GELU([c_t; h_{t-1}; x_t] W_1 + b_1) W_2 + b_2)    (4.1a), h_{-1} = 0
    g_t      = GELU(h_t W_f + b_f)                       (4.1b) f = one feed-forward layer
    y_t      = Softmax(g_t W_o + b_o)                    (4.1c) next-token distribution

``logits[:, t]`` (= g_t W_o + b_o; the loss applies the softmax through cross-entropy)
predicts token t+1. Choices the document leaves open, fixed here:

- The query is h_{t-1}, not h_t, because h_t depends on a_t (Bahdanau; docs/DESIGN.md §1).
- x_i are at once the keys and the values, and the key set at step t is x_0..x_t: the
  current token is visible to its own attention, the future is not.
- The MLP of (4.1a) has one hidden layer (width ``d_mlp``, GELU) and a tanh output, so h
  stays in [-1, 1] along the recurrence like a classic RNN state.
- f of (4.1b) is one GELU layer of width ``d_ff``; the document's ``Softmax(f(g_t))`` is
  read as an output projection W_o, b_o applied to g_t.
- ``score`` picks the Attention function of (4.2b):
    "additive"  v_a . tanh(h W_q + x_i W_k)   W_q (Dh, A), W_k (De, A), v_a (A,)  the default
    "general"   h W_a x_i^T                   W_a (Dh, De)                        (Luong)
    "dot"       (h W_q) . (x_i W_k) / sqrt(A) W_q (Dh, A), W_k (De, A): scaled dot product of
                                              projections (as in a transformer head), so it
                                              works whatever Dh and De are
  ``d_attn`` (A) is unused by "general".
- ``attention=False`` is the ablation: the same RNN with c_t removed from (4.1a), so its
  MLP input is [h_{t-1}; x_t] (W_1 has De fewer rows) and it has no attention parameters.

Parameter names follow the document's symbols: ``wte``, ``wpe``, ``W_q``, ``W_k``, ``v_a``
(or ``W_a``), ``W_1``, ``b_1``, ``W_2``, ``b_2`` (the MLP of 4.1a), ``W_f``, ``b_f`` (f of
4.1b), ``W_o``, ``b_o`` (4.1c). Weight layout (in, out): y = x @ W + b.

The loop over t is Python; each step is a handful of graph nodes on (B, ...) arrays: one
fused ``additive_attention`` kernel over the keys x_0..x_t, one concat, one fused ``mlp``
kernel and one tanh. The whole sequence costs O(T^2) for the attention, fine for T <= ~50.
After a forward, ``last_alpha`` holds the attention weights (B, T, T) as an ndarray: row t
is a_{t, .}, zeros above the diagonal.

Generation needs no recomputation. The model speaks the decoding protocol that GPT speaks
(``tl.infer`` holds the one decode loop over it):

    state, logits = model.start(idx)       prompt idx (B, T) -> logits (B, V) after it
    logits = model.step(state, tokens)     one more token per row, tokens (B,)
    model.reorder(state, index)            keep the rows ``index`` (beam search)

The state (``RNNState``) is the RNN's own "KV cache": h_{t-1} and the x_i seen so far (and
for "dot" their projections x_i W_k), so a step costs one attention over t + 1 keys, one cell
and one readout, never a re-run of the prefix. ``start`` then ``step`` give the logits of
``forward`` on the same tokens, to rounding.

The sizes are data: ``RNNConfig`` (a dataclass beside ``GPTConfig``) holds them, and
``AttentionRNN(cfg, seed=0, dtype=np.float32)`` builds the model from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import autograd as ag
from ..autograd import Tensor, no_grad
from ..autograd import functional as F
from ..errors import ShapeError
from ..nn import Module, Parameter
from ._config import ConfigDict

__all__ = ["AttentionRNN", "RNNConfig", "RNNState", "SCORES"]

SCORES = ("additive", "general", "dot")
IGNORE_INDEX = -100       # the targets that the loss skips (tinyllm.data.tasks.IGNORE_INDEX)


def _positive_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


@dataclass
class RNNConfig(ConfigDict):
    """The attention RNN's sizes and choices (see the module docstring for the symbols)."""
    vocab_size: int              # V: number of token ids
    max_len: int                 # the longest sequence (rows of wpe)
    d_embed: int = 64            # De: x_i = wte[idx_i] + wpe[i]
    d_hidden: int = 64           # Dh: the state h_t
    d_attn: int = 64             # A: the score's projection width (unused by "general")
    score: str = "additive"      # (4.2b): "additive", "general" or "dot"
    attention: bool = True       # False: the ablation without c_t
    d_mlp: int | None = None     # hidden width of the MLP of (4.1a); None: d_hidden
    d_ff: int | None = None      # width of f in (4.1b); None: d_hidden

    def __post_init__(self):
        for f in ("vocab_size", "max_len", "d_embed", "d_hidden", "d_attn"):
            v = getattr(self, f)
            if not _positive_int(v):
                raise ValueError(f"RNNConfig: {f} must be an int >= 1, got {v!r}")
        for f in ("d_mlp", "d_ff"):
            v = getattr(self, f)
            if v is not None and not _positive_int(v):
                raise ValueError(f"RNNConfig: {f} must be None or an int >= 1, got {v!r}")
        if self.score not in SCORES:
            raise ValueError(f"RNNConfig: score must be one of {SCORES}, got {self.score!r}")
        if not isinstance(self.attention, (bool, np.bool_)):
            raise ValueError(f"RNNConfig: attention must be a bool, got {self.attention!r}")

    @property
    def mlp_width(self) -> int:
        """The MLP of (4.1a)'s hidden width: d_mlp, or d_hidden when None."""
        return self.d_hidden if self.d_mlp is None else self.d_mlp

    @property
    def ff_width(self) -> int:
        """The width of f in (4.1b): d_ff, or d_hidden when None."""
        return self.d_hidden if self.d_ff is None else self.d_ff


class RNNState:
    """The decoding state of ``AttentionRNN`` for B rows: the position t of the next token,
    h = h_{t-1} (B, Dh), the embedded prefix x_0..x_{t-1} in x (B, max_len, De), and for the
    "dot" score its key projections in kproj (B, max_len, A) (None otherwise)."""

    def __init__(self, t, h, x, kproj):
        self.t, self.h, self.x, self.kproj = t, h, x, kproj

    batch_size = property(lambda self: self.h.shape[0])


class AttentionRNN(Module):
    """The document's autoregressive attention RNN (equations 4.1a-c, 4.2a-b).

    ``AttentionRNN(cfg: RNNConfig, seed=0, dtype=np.float32)``

    ``cfg.max_len`` is the longest sequence (the number of position embeddings);
    ``cfg.d_mlp`` (the hidden width of the MLP of 4.1a) and ``cfg.d_ff`` (the width of f in
    4.1b) default to ``d_hidden``. The same ``seed`` gives bitwise the same weights. The
    sizes are also attributes (``model.d_hidden``, ...); ``model.config`` is the config.

    ``model(idx, targets=None) -> (logits (B, T, V), loss or None)``, the GPT convention;
    targets equal to -100 are left out of the mean cross-entropy.
    """

    def __init__(self, cfg: RNNConfig, seed: int = 0, dtype=np.float32):
        super().__init__()
        if not isinstance(cfg, RNNConfig):
            raise TypeError(f"AttentionRNN: cfg must be an RNNConfig, got {type(cfg).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"AttentionRNN: dtype must be float32 or float64, got {dtype}")
        self.config = cfg
        vocab_size, max_len, score = cfg.vocab_size, cfg.max_len, cfg.score
        d_mlp, d_ff = cfg.mlp_width, cfg.ff_width
        self.vocab_size, self.max_len = int(vocab_size), int(max_len)
        self.d_embed, self.d_hidden = int(cfg.d_embed), int(cfg.d_hidden)
        self.d_attn, self.d_mlp, self.d_ff = int(cfg.d_attn), int(d_mlp), int(d_ff)
        self.score, self.attention, self.seed = score, bool(cfg.attention), seed
        self.last_alpha = None

        rng = np.random.default_rng(seed)

        def init(*shape, std=None):
            # N(0, 1/fan_in): keeps each pre-activation at unit scale; biases start at zero
            std = 1.0 / math.sqrt(shape[0]) if std is None else std
            return Parameter((rng.standard_normal(shape) * std).astype(dtype))

        def zeros(n):
            return Parameter(np.zeros(n, dtype))

        De, Dh, A = self.d_embed, self.d_hidden, self.d_attn
        self.wte = init(vocab_size, De, std=1.0 / math.sqrt(De))   # token embeddings
        self.wpe = init(max_len, De, std=1.0 / math.sqrt(De))      # position embeddings
        if self.attention:
            if score in ("additive", "dot"):
                self.W_q = init(Dh, A)                             # query  h_{t-1} W_q
                self.W_k = init(De, A)                             # keys   x_i W_k
                if score == "additive":
                    self.v_a = init(A)                             # (4.2b) v_a . tanh(...)
            else:
                self.W_a = init(Dh, De)                            # (4.2b) h W_a x_i^T
        d_in = (De if self.attention else 0) + Dh + De             # [c_t;] h_{t-1}; x_t
        self.W_1, self.b_1 = init(d_in, d_mlp), zeros(d_mlp)       # (4.1a) MLP, hidden layer
        self.W_2, self.b_2 = init(d_mlp, Dh), zeros(Dh)            # (4.1a) MLP, output -> h_t
        self.W_f, self.b_f = init(Dh, d_ff), zeros(d_ff)           # (4.1b) f
        self.W_o, self.b_o = init(d_ff, vocab_size), zeros(vocab_size)   # (4.1c)

    @property
    def dtype(self):
        return self.wte.dtype

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, max_len={self.max_len}, d_embed={self.d_embed}, "
                f"d_hidden={self.d_hidden}, d_attn={self.d_attn}, d_mlp={self.d_mlp}, "
                f"d_ff={self.d_ff}, score={self.score!r}, attention={self.attention}")

    def __repr__(self):
        return f"AttentionRNN({self.extra_repr()})"

    # ------------------------------------------------------------ the pieces of one step
    def _check_idx(self, idx, what="idx") -> np.ndarray:
        idx = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if idx.ndim != 2 or idx.dtype.kind not in "iu":
            raise ShapeError(f"AttentionRNN: {what} must be an int array (B, T), got "
                             f"{idx.dtype} {idx.shape}")
        B, T = idx.shape
        if T < 1 or T > self.max_len:
            raise ShapeError(f"AttentionRNN: sequence length T={T} must be in 1..max_len="
                             f"{self.max_len}")
        return idx

    def _embed(self, idx: np.ndarray, start: int = 0) -> Tensor:
        """x_i = wte[idx_i] + wpe[start + i]: (B, T) ints -> (B, T, De)."""
        T = idx.shape[1]
        return F.embedding(idx, self.wte) + self.wpe[start:start + T]

    def _keys(self, x: Tensor):
        """What the scores need from the keys, computed once per sequence: x W_k (B, T, A)
        for "dot"; None otherwise (the additive kernel projects its keys itself)."""
        if self.attention and self.score == "dot":
            return x @ self.W_k
        return None

    def _attend(self, h: Tensor, keys: Tensor, kproj):
        """(c_t, a_t) for the query h = h_{t-1} (B, Dh) over keys = x_0..x_t (B, S, De)."""
        B, S, De = keys.shape
        if self.score == "additive":
            # (4.2b) e_i = v_a . tanh(h W_q + x_i W_k); (4.2a) a = softmax_i(e);
            # c = sum_i a_i x_i: all three in the fused additive_attention kernel
            return F.additive_attention(h, keys, self.W_q, self.W_k, self.v_a)
        if self.score == "general":
            q = (h @ self.W_a).reshape(B, De, 1)                   # h W_a        (B, De, 1)
            e = (keys @ q).reshape(B, S)                           # (4.2b) h W_a x_i^T
        else:
            A = self.d_attn
            q = (h @ self.W_q).reshape(B, A, 1)                    # h W_q        (B, A, 1)
            e = (kproj @ q).reshape(B, S) * (1.0 / math.sqrt(A))   # (4.2b) q.k_i / sqrt(A)
        alpha = F.softmax(e, axis=-1)                              # (4.2a)       (B, S)
        c = (alpha.reshape(B, 1, S) @ keys).reshape(B, De)         # c = sum_i a_i x_i
        return c, alpha

    def _cell(self, c, h: Tensor, x_t: Tensor) -> Tensor:
        """(4.1a) h_t = MLP([c_t; h_{t-1}; x_t]) = tanh(GELU(z W_1 + b_1) W_2 + b_2)."""
        z = ag.concat([c, h, x_t] if c is not None else [h, x_t], axis=1)
        return F.tanh(F.mlp(z, self.W_1, self.b_1, self.W_2, self.b_2))   # (4.1a)

    def _readout(self, h: Tensor) -> Tensor:
        """(4.1b) g = f(h) = GELU(h W_f + b_f), then (4.1c) logits = g W_o + b_o; the two
        are one fused ``mlp`` kernel, GELU(h W_f + b_f) W_o + b_o."""
        # (4.1b) g_t = GELU(h_t W_f + b_f); (4.1c) y_t = Softmax(g_t W_o + b_o), whose
        # softmax is left to the loss (cross-entropy) and to sampling
        return F.mlp(h, self.W_f, self.b_f, self.W_o, self.b_o)

    # ------------------------------------------------------------ whole sequences
    def forward(self, idx, targets=None):
        """idx int (B, T), targets int (B, T) or None -> (logits (B, T, V), loss or None).

        Sets ``self.last_alpha`` to the (B, T, T) attention weights (None without attention).
        """
        idx = self._check_idx(idx)
        B, T = idx.shape
        x = self._embed(idx)                                       # (B, T, De)
        kproj = self._keys(x)
        h = Tensor(np.zeros((B, self.d_hidden), self.dtype))       # h_{-1} = 0 (doc's h_0)
        alpha_all = np.zeros((B, T, T), self.dtype) if self.attention else None
        hs = []
        for t in range(T):
            x_t = x[:, t]                                          # (B, De)
            c = None
            if self.attention:
                keys = x[:, :t + 1]                                # x_0..x_t: causal
                kp = kproj[:, :t + 1] if kproj is not None else None
                c, alpha = self._attend(h, keys, kp)               # (B, De), (B, t+1)
                alpha_all[:, t, :t + 1] = alpha.data
            h = self._cell(c, h, x_t)                              # (4.1a)
            hs.append(h)
        self.last_alpha = alpha_all
        H = ag.stack(hs, axis=1)                                   # (B, T, Dh)
        logits = self._readout(H)                                  # (B, T, V)
        loss = None
        if targets is not None:
            tg = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
            if tg.shape != (B, T):
                raise ShapeError(f"AttentionRNN: targets {tg.shape} must match idx {(B, T)}")
            loss = F.cross_entropy(logits.reshape(B * T, self.vocab_size), tg.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return logits, loss

    def attention_weights(self, idx) -> np.ndarray:
        """The (B, T, T) attention weights a_{t,i} for ``idx`` (row t: weights over i <= t,
        zeros above), computed without a graph."""
        if not self.attention:
            raise ValueError("AttentionRNN.attention_weights: this model has attention=False")
        with no_grad():
            self.forward(idx)
        return self.last_alpha

    # ------------------------------------------------------------ the decoding protocol
    def start(self, idx):
        """Run the prompt idx int (B, T), 1 <= T <= max_len; returns ``(state, logits)``,
        the logits (B, V) for the token after it. No graph is recorded."""
        idx = self._check_idx(idx, "idx")
        B = idx.shape[0]
        x = np.zeros((B, self.max_len, self.d_embed), self.dtype)
        kproj = (np.zeros((B, self.max_len, self.d_attn), self.dtype)
                 if self.attention and self.score == "dot" else None)
        state = RNNState(0, Tensor(np.zeros((B, self.d_hidden), self.dtype)), x, kproj)
        return state, self._feed(state, idx)

    def step(self, state: RNNState, tokens) -> np.ndarray:
        """Feed one token per row (``tokens`` int (B,)) at position ``state.t``; returns the
        logits for the next token (B, V) and advances ``state`` in place. No graph is
        recorded."""
        if state.t >= self.max_len:
            raise ShapeError(f"AttentionRNN.step: position {state.t} is past "
                             f"max_len={self.max_len}")
        tokens = np.asarray(tokens.data if isinstance(tokens, Tensor) else tokens)
        B = state.batch_size
        if tokens.shape != (B,) or tokens.dtype.kind not in "iu":
            raise ShapeError(f"AttentionRNN.step: tokens must be an int array ({B},), got "
                             f"{tokens.dtype} {tokens.shape}")
        return self._feed(state, tokens.reshape(B, 1))

    def reorder(self, state: RNNState, index) -> None:
        """Keep the rows ``index`` (B,) of the state, in that order (beam search)."""
        index = np.asarray(index)
        state.h = Tensor(state.h.data[index])
        state.x = state.x[index]
        if state.kproj is not None:
            state.kproj = state.kproj[index]

    def _feed(self, state: RNNState, idx: np.ndarray) -> np.ndarray:
        """Advance the recurrence over idx (B, n) from position state.t; the logits (B, V)
        after its last token. Each position: one attention over the keys x_0..x_t kept in
        the state, one cell (4.1a); the readout (4.1b-c) only for the last h."""
        t0, n = state.t, idx.shape[1]
        if t0 + n > self.max_len:
            raise ShapeError(f"AttentionRNN: {n} tokens from position {t0} run past "
                             f"max_len={self.max_len}")
        with no_grad():
            x_new = self._embed(idx, start=t0)                     # (B, n, De)
            state.x[:, t0:t0 + n] = x_new.data
            if state.kproj is not None:
                state.kproj[:, t0:t0 + n] = self._keys(x_new).data  # x_i W_k (B, n, A)
            h = state.h
            for j in range(n):
                t = t0 + j
                c = None
                if self.attention:
                    keys = Tensor(state.x[:, :t + 1])              # x_0..x_t (B, t+1, De)
                    kp = None if state.kproj is None else Tensor(state.kproj[:, :t + 1])
                    c, _ = self._attend(h, keys, kp)               # (4.2), O(t) per step
                h = self._cell(c, h, x_new[:, j])                  # (4.1a)
            logits = self._readout(h)                              # (4.1b), (4.1c) (B, V)
        state.h, state.t = h, t0 + n
        return logits.data
