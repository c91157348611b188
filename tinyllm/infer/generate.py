"""Autoregressive generation: sampling (temperature, top-k, top-p) and beam search.

Legend: B = batch, T = prompt length, V = vocabulary, W = beam width.

Each step turns the last position's logits z (B, V) into the next token:

    temperature 0     x = argmax_v z_v                         (greedy)
    otherwise         p = softmax(z / temperature)
                      top_k: keep the k largest z (ties at the k-th value are kept too)
                      top_p: keep the smallest set of most likely tokens whose total
                             probability reaches top_p (the most likely one always stays)
                      x ~ p renormalised over what is kept

Sampling draws one uniform number per sequence per step from
``np.random.default_rng(seed)``, so a seed fixes the output. The arithmetic of sampling is
float64 whatever the model's dtype; the probabilities come from the ``softmax`` kernel and
beam scores from ``tl.functional.log_softmax`` (no third copy of either formula here).

One decode loop, ``decode``, serves sampling (``generate``), ``beam_search`` and anyone else
who picks tokens from logits (the reversal task's exact-match scoring in
``tinyllm.train.seq_tasks``). It drives the decoding protocol that GPT and AttentionRNN
speak:

    state, logits = model.start(idx)       prompt (B, T) -> logits (B, V) for the next token
    logits = model.step(state, tokens)     feed tokens (B,), one per row
    model.reorder(state, index)            keep rows ``index`` of the state (beam search)

Two ways to get logits:
- ``use_cache=True`` and the model speaks the protocol: its own incremental state (GPT: a KV
  cache, prefilled once, then one ``decode_step`` per token, see ``tinyllm.models.gpt`` for
  what happens past ``block_size``; AttentionRNN: h and the keys seen so far).
- otherwise any model whose ``model(idx)`` returns ``(logits (B, T, V), loss)``: the whole
  context is run again each step, cropped to its last ``block_size`` tokens when the model
  has one (``model.config.block_size`` or ``model.block_size``), as nanoGPT does.

Dropout: a model is switched to eval mode while it decodes and then restored.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import kernels
from ..autograd import Tensor, no_grad
from ..autograd import functional as F


# ------------------------------------------------------------------ argument checks

def _check_idx(idx, op):
    arr = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    if arr.dtype.kind not in "iu" or arr.ndim not in (1, 2):
        raise ValueError(f"{op}: idx must be a 1-D (T,) or 2-D (B, T) int array, got "
                         f"{arr.dtype} {arr.shape}")
    if arr.shape[-1] < 1 or arr.size == 0:
        raise ValueError(f"{op}: idx must hold at least one token per sequence, got shape "
                         f"{arr.shape}")
    return arr


def _check_int(op, name, v, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{op}: {name} must be an int >= {lo}, got {v!r}")
    return int(v)


def _check_sampling(temperature, top_k, top_p):
    op = "generate"
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not np.isfinite(temperature) or temperature < 0):
        raise ValueError(f"{op}: temperature must be a finite number >= 0, got "
                         f"{temperature!r}")
    if top_k is not None:
        _check_int(op, "top_k", top_k, 1)
    if top_p is not None:
        if (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
                or not 0.0 < top_p <= 1.0):
            raise ValueError(f"{op}: top_p must be in (0, 1], got {top_p!r}")


# ------------------------------------------------------------------ logits -> token

def filter_logits(logits: np.ndarray, top_k: int | None = None,
                  top_p: float | None = None) -> np.ndarray:
    """logits (B, V) with the tokens outside top-k / top-p set to -inf (a float64 copy).
    ``top_p`` is measured on softmax(logits), so scale by the temperature first."""
    z = np.array(logits, dtype=np.float64)
    V = z.shape[-1]
    if top_k is not None and top_k < V:
        kth = np.partition(z, V - top_k, axis=-1)[:, V - top_k:V - top_k + 1]  # (B, 1)
        z[z < kth] = -np.inf
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-z, axis=-1, kind="stable")                     # (B, V)
        zs = np.take_along_axis(z, order, axis=-1)
        p = _softmax(zs)                                                   # sorted, (B, V)
        cum = np.cumsum(p, axis=-1) / p.sum(axis=-1, keepdims=True)        # (B, V)
        # drop a token when the ones ranked above it already reach top_p
        drop_sorted = np.concatenate([np.zeros_like(cum[:, :1], dtype=bool),
                                      cum[:, :-1] >= top_p], axis=-1)
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        z[drop] = -np.inf
    return z


def _softmax(z: np.ndarray) -> np.ndarray:
    """softmax over the last axis of a float64 (B, V), by the ``softmax`` kernel."""
    return kernels.get("softmax").forward(np.ascontiguousarray(z))[0]


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax(z) over the last axis in float64: ``tl.functional.log_softmax`` on the
    array (no graph)."""
    with no_grad():
        return F.log_softmax(Tensor(np.asarray(z, np.float64)), axis=-1).data


def sample_next(logits: np.ndarray, temperature: float, top_k, top_p,
                rng: np.random.Generator) -> np.ndarray:
    """One token per row of logits (B, V): greedy when temperature is 0, else sampled."""
    if temperature == 0:
        return np.argmax(logits, axis=-1)
    z = filter_logits(np.asarray(logits, np.float64) / temperature, top_k, top_p)
    p = _softmax(z)                                                        # (B, V)
    cum = np.cumsum(p, axis=-1)
    u = rng.random(len(z)) * cum[:, -1]                                    # (B,)
    # the first token whose cumulative mass exceeds u: never one of probability 0
    return np.minimum((cum <= u[:, None]).sum(axis=-1), z.shape[-1] - 1)


# ------------------------------------------------------------------ logits sources

def _block_size(model):
    cfg = getattr(model, "config", None)
    bs = getattr(cfg, "block_size", None) or getattr(model, "block_size", None)
    return int(bs) if bs else None


class _Recompute:
    """The decoding protocol for a model without one (or with ``use_cache=False``): the state
    is the token sequence, and every call runs ``model(idx)`` on the whole context, cropped
    to its last ``block_size`` tokens."""

    def __init__(self, model):
        self.model, self.block = model, _block_size(model)

    def start(self, idx):
        state = {"seq": np.asarray(idx)}
        return state, self._last(state)

    def step(self, state, tokens):
        state["seq"] = np.concatenate([state["seq"], np.asarray(tokens)[:, None]], axis=1)
        return self._last(state)

    def reorder(self, state, index):
        state["seq"] = state["seq"][index]

    def _last(self, state):
        seq = state["seq"]
        ctx = seq if self.block is None else seq[:, -self.block:]
        logits = self.model(ctx)[0]
        logits = logits.data if isinstance(logits, Tensor) else np.asarray(logits)
        return logits[:, -1]                                               # (B, V)


def _protocol(model, use_cache):
    """What the decode loop talks to: the model itself when it speaks the protocol and
    ``use_cache``, else a ``_Recompute`` over ``model(idx)``."""
    if use_cache and all(callable(getattr(model, n, None)) for n in ("start", "step")):
        return model
    return _Recompute(model)


class _EvalMode:
    """Switch every module of the model to eval mode for the block, then restore each."""

    def __init__(self, model):
        mods = model.named_modules() if hasattr(model, "named_modules") else ()
        self.saved = [(m, m.training) for _, m in mods]

    def __enter__(self):
        for m, _ in self.saved:
            m.training = False

    def __exit__(self, *exc):
        for m, mode in self.saved:
            m.training = mode
        return False


# ------------------------------------------------------------------ public functions

def decode(model, idx, max_new_tokens: int, choose, use_cache: bool = True) -> None:
    """The decode loop: ``choose(logits, i)`` picks what to feed after the i-th logits.

    idx int (B, T), the prompt. ``choose`` is called at most ``max_new_tokens`` times with the
    logits (B, V) for the next position and the call's number i = 0, 1, ...; it returns
    ``(tokens, index)``: the tokens (B,) to feed next, and ``index`` (B,) to reorder the
    state's rows first (beam search) or None. ``tokens`` None stops the loop. After the last
    call nothing is fed (its tokens are the last ones chosen). Runs under ``no_grad`` with
    every module in eval mode, then restores each module's mode. Whatever ``choose``
    records is the result.
    """
    src = _protocol(model, use_cache)
    with no_grad(), _EvalMode(model):
        state, logits = src.start(idx)
        for i in range(max_new_tokens):
            tokens, index = choose(logits, i)
            if tokens is None or i + 1 == max_new_tokens:
                break
            if index is not None:
                src.reorder(state, index)
            logits = src.step(state, tokens)


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed=None,
             use_cache: bool = True) -> np.ndarray:
    """Extend each sequence of idx by ``max_new_tokens`` tokens.

    idx int (B, T) -> (B, T + max_new_tokens); a 1-D idx (T,) gives a 1-D result. See the
    module docstring for temperature, top_k, top_p, seed and use_cache. With a KV cache the
    tokens match the recomputing path (use_cache=False) whenever the logits' ranking does
    not hinge on the last bits of float rounding.
    """
    arr = _check_idx(idx, "generate")
    max_new_tokens = _check_int("generate", "max_new_tokens", max_new_tokens, 0)
    _check_sampling(temperature, top_k, top_p)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x = arr[None] if arr.ndim == 1 else arr
    x = x.astype(np.int64)
    if max_new_tokens == 0:
        return x[0] if arr.ndim == 1 else x
    T = x.shape[1]
    out = np.empty((x.shape[0], T + max_new_tokens), np.int64)
    out[:, :T] = x

    def choose(logits, i):
        nxt = sample_next(logits, float(temperature), top_k, top_p, rng)     # (B,)
        out[:, T + i] = nxt
        return nxt.astype(np.int64), None

    decode(model, x, max_new_tokens, choose, use_cache)
    return out[0] if arr.ndim == 1 else out


def beam_search(model, idx, max_new_tokens: int, beam_width: int = 4,
                length_penalty: float = 1.0, eos_token_id: int | None = None,
                use_cache: bool = True) -> np.ndarray:
    """The most likely continuation found by keeping the ``beam_width`` best partial
    sequences at each step.

    A hypothesis is scored by the sum of its new tokens' log-probabilities. Live beams all
    have the same length, so they are ranked by that sum alone. A candidate that emits
    ``eos_token_id`` is finished: it leaves the beam (the next best candidates fill it),
    scored ``sum / n ** length_penalty`` with n its number of new tokens, eos included
    (length_penalty > 0 favours longer hypotheses, 0 compares raw sums). The search stops
    once ``beam_width`` hypotheses have finished (Hugging Face's ``early_stopping=True``)
    and the best finished one wins; otherwise, after max_new_tokens, the live beams are
    scored the same way and join the contest. Without an eos token every hypothesis has
    max_new_tokens new tokens and length_penalty changes nothing. beam_width 1 is greedy
    decoding (stopping at the first eos).

    idx int (B, T) (each row is searched on its own) or (T,). Returns the best sequence per
    row, (B, T + n) or (T + n,); rows that finished early are padded with eos_token_id.
    """
    arr = _check_idx(idx, "beam_search")
    max_new_tokens = _check_int("beam_search", "max_new_tokens", max_new_tokens, 0)
    W = _check_int("beam_search", "beam_width", beam_width, 1)
    if (isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real)
            or not np.isfinite(length_penalty)):
        raise ValueError(f"beam_search: length_penalty must be a finite number, got "
                         f"{length_penalty!r}")
    x = (arr[None] if arr.ndim == 1 else arr).astype(np.int64)
    rows = []
    for b in range(x.shape[0]):
        rows.append(_beam_one(model, x[b], max_new_tokens, W, float(length_penalty),
                              eos_token_id, use_cache))
    n = max(len(r) for r in rows)
    pad = -1 if eos_token_id is None else eos_token_id
    out = np.full((len(rows), n), pad, np.int64)
    for b, r in enumerate(rows):
        out[b, :len(r)] = r
    return out[0] if arr.ndim == 1 else out


class _Beam:
    """The beam search's ``choose`` for ``decode``: keeps W live hypotheses (their summed
    log-probabilities ``scores`` and new tokens ``seqs``) and the finished ones."""

    def __init__(self, W, max_new, alpha, eos):
        self.W, self.max_new, self.alpha, self.eos = W, max_new, alpha, eos
        self.scores = np.full(W, -np.inf)
        self.scores[0] = 0.0             # the W copies of the prompt are one hypothesis
        self.seqs = np.zeros((W, 0), np.int64)
        self.finished = []               # (normalised score, tokens)
        self.live = True                 # do the live beams still count at the end?

    def __call__(self, logits, step):
        W, eos, alpha = self.W, self.eos, self.alpha
        logp = log_softmax(logits)                                         # (W, V)
        V = logp.shape[-1]
        cand = (self.scores[:, None] + logp).reshape(-1)                   # (W V,)
        order = np.argsort(-cand, kind="stable")
        beam, tok = np.divmod(order, V)
        keep_b, keep_t, keep_s = [], [], []
        for bi, ti, s in zip(beam, tok, cand[order]):
            if not np.isfinite(s):
                break
            if eos is not None and ti == eos:
                n = self.seqs.shape[1] + 1
                self.finished.append((s / n ** alpha, np.append(self.seqs[bi], ti)))
                continue
            keep_b.append(bi)
            keep_t.append(ti)
            keep_s.append(s)
            if len(keep_b) == W:
                break
        if not keep_b or len(self.finished) >= W:
            self.live = False
            return None, None
        while len(keep_b) < W:           # fewer live candidates than beams: pad with -inf
            keep_b.append(keep_b[0])
            keep_t.append(keep_t[0])
            keep_s.append(-np.inf)
        bidx = np.array(keep_b)
        toks = np.array(keep_t, np.int64)
        self.seqs = np.concatenate([self.seqs[bidx], toks[:, None]], axis=1)
        self.scores = np.array(keep_s)
        return toks, bidx

    def best(self):
        finished = list(self.finished)
        n = self.seqs.shape[1]
        if n and self.live:
            for s, q in zip(self.scores, self.seqs):
                if np.isfinite(s):
                    finished.append((s / n ** self.alpha, q))
        return max(finished, key=lambda f: f[0])[1] if finished else np.zeros(0, np.int64)


def _beam_one(model, prompt, max_new, W, alpha, eos, use_cache):
    """Beam search for one prompt (T,) -> the best token sequence (prompt included)."""
    if max_new == 0:
        return prompt
    beam = _Beam(W, max_new, alpha, eos)
    decode(model, np.tile(prompt, (W, 1)), max_new, beam, use_cache)
    return np.concatenate([prompt, beam.best()]).astype(np.int64)


__all__ = ["decode", "generate", "beam_search", "filter_logits", "sample_next", "log_softmax"]
