"""Speculative decoding: a cheap draft proposes k tokens, the target checks them in one pass.

Legend: V = vocabulary, k = draft tokens per round, n = new tokens, p = the target's and
q = the draft's next-token distribution (both *filtered*: temperature, top-k, top-p, as in
``tinyllm.infer.generate``), alpha = the chance that one draft token is accepted.

One round, with the sequence x_1..x_N so far (the target's KV cache holds x_1..x_{N-1}):

    draft      d_i ~ q_i = q(. | x_1..x_N, d_1..d_{i-1}),         i = 1..k  (k draft calls)
    verify     the target extends its cache by [x_N, d_1..d_k] in ONE forward (chunked
               prefill, ``GPT.extend``), which gives p_1..p_{k+1}: p_i = p(. | .., d_{i-1})
    accept     d_i with probability min(1, p_i(d_i) / q_i(d_i)), in order; at the first
               rejection emit y ~ norm(max(0, p_i - q_i)) and stop; if all k are accepted,
               emit a bonus token y ~ p_{k+1}
    roll back  both caches to the accepted length (``GPT.truncate``)

Why the output is distributed as the target alone would sample it: for one position,
P(emit y) = q(y) min(1, p(y)/q(y)) + P(reject) r(y) with r = max(0, p - q) / Z and
P(reject) = sum_x q(x) (1 - min(1, p(x)/q(x))) = sum_x max(0, q(x) - p(x)) = Z; so
P(emit y) = min(q(y), p(y)) + max(0, p(y) - q(y)) = p(y). A deterministic draft (prompt
lookup, or any greedy proposal) is the case q = one-hot(d): accept with probability p(d),
else sample from p with d removed. At temperature 0, p and q are one-hot at the argmaxes:
a draft token is accepted iff it is the target's argmax, and the first mismatch is replaced
by the target's argmax, so the output is token for token the target's greedy output
(``tl.infer.generate(target, idx, n, temperature=0)``, up to float rounding between the
chunked and the one-token forward) for every k, past the block size too: ``GPT.extend``
re-prefills a full cache by the rule ``decode_step`` follows, and a roll-back that crosses
such a re-prefill rebuilds the cache that token-by-token decoding would hold.

Cost model. With acceptances independent with probability alpha, a round emits

    E(alpha, k) = 1 + alpha + .. + alpha^k = (1 - alpha^{k+1}) / (1 - alpha)

tokens (``expected_tokens_per_round``), at the cost of k draft steps and one verify of
k + 1 positions, where plain decoding pays one target step per token:

    speed-up = E(alpha, k) t_target_step / (k t_draft_step + t_verify(k + 1))

(``predicted_speedup``). ``SpecStats.alpha`` estimates alpha as accepted / (accepted +
rejections): every accepted token is a success and every round that ends early one failure
(the tokens after a rejection are never tried). ``SpecStats.acceptance_rate`` is accepted /
proposed, which also counts those never-tried tokens and so falls as k grows.

Batch 1 only: the sequences of a batch would accept different numbers of tokens, and the
caches hold one length for the whole batch.
"""
from __future__ import annotations

import numbers
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import kernels
from ..autograd import no_grad
from .generate import _EvalMode, filter_logits

OP = "speculative_decode"


# ------------------------------------------------------------------ the one-step rule

def _softmax(z: np.ndarray) -> np.ndarray:
    """softmax over the last axis of a float64 (N, V), by the ``softmax`` kernel."""
    return kernels.get("softmax").forward(np.ascontiguousarray(z, dtype=np.float64))[0]


def filtered_probs(logits, temperature: float, top_k=None, top_p=None) -> np.ndarray:
    """The distribution generation samples from: logits (N, V) -> p (N, V) float64, softmax
    of logits / temperature over the top-k / top-p tokens (``filter_logits``), 0 elsewhere.
    temperature 0 gives one-hot rows at the argmax."""
    z = np.asarray(logits, np.float64)
    if temperature == 0:
        p = np.zeros_like(z)
        p[np.arange(len(z)), np.argmax(z, axis=-1)] = 1.0
        return p
    return _softmax(filter_logits(z / temperature, top_k, top_p))


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """One token from the (possibly unnormalised) distribution p (V,): the first token whose
    cumulative mass exceeds u ~ U[0, sum p), as ``sample_next`` does (never a zero)."""
    cum = np.cumsum(p)
    u = rng.random() * cum[-1]
    return int(min(np.searchsorted(cum, u, side="right"), len(p) - 1))


def accept_draft_token(p: np.ndarray, q, x: int, rng: np.random.Generator):
    """The rejection-sampling step for one draft token x ~ q: ``(True, x)`` with probability
    min(1, p(x) / q(x)), else ``(False, y)`` with y ~ norm(max(0, p - q)). p, q (V,) are
    distributions; q None means the draft is deterministic (q = one-hot(x)). The token that
    comes out is distributed as p (module docstring)."""
    px = float(p[x])
    qx = 1.0 if q is None else float(q[x])
    if not qx > 0.0:
        raise ValueError(f"accept_draft_token: the draft token {x} has q(x) = {qx}: it "
                         f"cannot have been drawn from q")
    if px >= qx or rng.random() * qx < px:
        return True, int(x)
    if q is None:
        r = np.array(p, np.float64)
        r[x] = 0.0                                   # max(0, p - one-hot(x))
    else:
        r = np.maximum(np.asarray(p, np.float64) - q, 0.0)
    if not r.sum() > 0.0:                            # p == q up to rounding: no excess left
        r = np.asarray(p, np.float64)
    return False, draw(r, rng)


# ------------------------------------------------------------------ cost model

def expected_tokens_per_round(alpha: float, k: int) -> float:
    """E(alpha, k) = (1 - alpha^{k+1}) / (1 - alpha): tokens one round emits when each of
    the k draft tokens is accepted with probability alpha independently (k + 1 at 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"expected_tokens_per_round: alpha must be in [0, 1], got {alpha!r}")
    if alpha == 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, k: int, t_target_step: float, t_draft_step: float,
                      t_verify: float) -> float:
    """E(alpha, k) t_target_step / (k t_draft_step + t_verify): plain decoding's time per
    token over a round's time per emitted token, from measured per-call costs (seconds):
    one plain target decode step, one draft step, one verify forward of k + 1 positions."""
    for name, v in (("t_target_step", t_target_step), ("t_draft_step", t_draft_step),
                    ("t_verify", t_verify)):
        if not (isinstance(v, numbers.Real) and v >= 0 and np.isfinite(v)):
            raise ValueError(f"predicted_speedup: {name} must be a finite time >= 0, got {v!r}")
    cost = k * t_draft_step + t_verify
    if not cost > 0:
        raise ValueError("predicted_speedup: a round must cost some time (k t_draft_step + "
                         "t_verify > 0)")
    return expected_tokens_per_round(alpha, k) * t_target_step / cost


# ------------------------------------------------------------------ statistics

@dataclass
class SpecStats:
    """What one ``speculative_decode`` call did. Times are wall seconds (perf_counter)."""
    k: int = 0
    new_tokens: int = 0
    rounds: int = 0
    proposed: int = 0            # draft tokens proposed (fewer than k in a round near the end)
    accepted: int = 0            # of those, accepted
    rejections: int = 0          # rounds that ended at a rejected draft token
    target_calls: int = 0        # verify forwards (one per round; the prompt's prefill apart)
    draft_calls: int = 0         # draft model forwards (0 for prompt lookup)
    target_time_s: float = 0.0   # in verify forwards and cache roll-backs
    draft_time_s: float = 0.0    # proposing (draft forwards and drawing the tokens)
    prefill_time_s: float = 0.0  # both models' prompt prefills
    wall_time_s: float = 0.0     # the whole call

    @property
    def acceptance_rate(self) -> float:
        """accepted / proposed."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def alpha(self) -> float:
        """Per-token acceptance probability, accepted / (accepted + rejections)."""
        n = self.accepted + self.rejections
        return self.accepted / n if n else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    @property
    def t_verify(self) -> float:
        """Mean seconds per verify forward (roll-backs included)."""
        return self.target_time_s / self.target_calls if self.target_calls else 0.0

    @property
    def t_draft_step(self) -> float:
        """Mean seconds per draft token proposed."""
        return self.draft_time_s / self.proposed if self.proposed else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        for name in ("acceptance_rate", "alpha", "tokens_per_target_call", "t_verify",
                     "t_draft_step"):
            d[name] = getattr(self, name)
        return d


# ------------------------------------------------------------------ a model on a stream

def _length_after(length: int, n: int, max_len: int, keep: int) -> int:
    """A cache's length after n more tokens, one at a time: a full cache re-prefills its last
    ``keep`` tokens plus the new one (``GPT.decode_step``'s rule)."""
    for _ in range(n):
        length = keep + 1 if length == max_len else length + 1
    return length


class _Fed:
    """A GPT and its batch-1 KV cache, fed a prefix of a token stream (``fed`` tokens); the
    cache holds the last ``cache.length`` of them (fewer after a window re-prefill)."""

    def __init__(self, model, prefix: np.ndarray):
        self.model = model
        self.cache = model.new_kv_cache(1)
        self.fed = len(prefix)
        self.calls = 0
        if self.fed:
            model.prefill(prefix[None], self.cache)
        self._mark = (self.fed, self.cache.length)

    def feed(self, tokens: np.ndarray) -> np.ndarray:
        """Append tokens (T,); the logits (T, V) after each."""
        self.calls += 1
        self.fed += len(tokens)
        return self.model.extend(tokens[None], self.cache)[0]

    def mark(self) -> None:
        """Remember this point: ``rollback`` can return to it or anywhere after it."""
        self._mark = (self.fed, self.cache.length)

    def rollback(self, fed: int, stream: np.ndarray) -> None:
        """Back to having been fed stream[:fed] (mark <= fed <= self.fed), as if the later
        tokens had never come. Usually a truncation; if a window re-prefill happened after
        the mark, the cache that token-by-token feeding would hold is rebuilt instead."""
        f0, l0 = self._mark
        if not f0 <= fed <= self.fed:
            raise AssertionError(f"{OP}: roll back to {fed} outside [{f0}, {self.fed}]")
        c = self.cache
        want = _length_after(l0, fed - f0, c.max_len, c.keep)
        if self.fed - c.length == fed - want:        # same window start: drop the tail
            c.truncate(want)
        elif want == 0:
            c.truncate(0)
        else:                                        # a re-prefill moved the window
            self.model.prefill(stream[fed - want:fed][None], c)
            self.calls += 1
        self.fed = fed


# ------------------------------------------------------------------ drafts

class _ModelDraft:
    """A draft GPT: k decode steps (the pending tokens first, in one ``extend``)."""

    def __init__(self, model):
        self.model = model

    def start(self, prompt: np.ndarray) -> None:
        self.state = _Fed(self.model, prompt[:-1])

    @property
    def calls(self) -> int:
        return self.state.calls

    def propose(self, stream, n: int, k: int, pick):
        """k tokens after stream[:n]: (tokens (k,), q (k, V) or None when greedy)."""
        if k == 0:
            return np.zeros(0, np.int64), None
        s = self.state
        logits = s.feed(stream[s.fed:n])[-1]                         # (V,)
        s.mark()
        toks, qs = np.empty(k, np.int64), []
        for i in range(k):
            toks[i], q = pick(logits)
            qs.append(q)
            if i + 1 < k:
                logits = s.feed(toks[i:i + 1])[-1]
        return toks, (None if qs[0] is None else np.stack(qs))

    def commit(self, n_good: int, stream) -> None:
        """stream[:n_good] is settled: forget what the draft was fed beyond it."""
        if self.state.fed > n_good:
            self.state.rollback(n_good, stream)


class PromptLookupDraft:
    """A nearly free draft: find the last earlier occurrence of the context's final n-gram
    and propose the k tokens that followed it (n = ``ngram``, down to ``min_ngram`` when the
    longer one never occurred before; nothing when none did). When the last occurrence is
    too close to the end to be followed by k tokens (inside a run of one repeated token,
    say), the last one that is, else the earliest (the longest continuation), is taken. Its proposals are
    deterministic, q = one-hot, so the sampling rule stays exact. Best on text that repeats
    itself (code, quoting the prompt, lists)."""

    calls = 0                                          # no model forwards

    def __init__(self, ngram: int = 3, min_ngram: int = 1):
        for name, v in (("ngram", ngram), ("min_ngram", min_ngram)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"PromptLookupDraft: {name} must be an int >= 1, got {v!r}")
        if min_ngram > ngram:
            raise ValueError(f"PromptLookupDraft: min_ngram ({min_ngram}) must be <= ngram "
                             f"({ngram})")
        self.ngram, self.min_ngram = int(ngram), int(min_ngram)

    def start(self, prompt) -> None:
        pass

    def lookup(self, context: np.ndarray, k: int) -> np.ndarray:
        """Up to k tokens that followed the last earlier occurrence of context's last
        n-gram (with k tokens after it, if one has), for n = ngram .. min_ngram (the first
        n that occurs wins)."""
        n = len(context)
        for g in range(min(self.ngram, n - 1), self.min_ngram - 1, -1):
            tail = context[n - g:]
            # windows starting at s = 0 .. n-g-1: each has at least one token after it
            win = np.lib.stride_tricks.sliding_window_view(context[:n - 1], g)  # (n-g, g)
            hits = np.flatnonzero((win == tail).all(axis=1))
            if len(hits):
                full = hits[hits + g + k <= n]               # followed by k whole tokens
                s = (full[-1] if len(full) else hits[0]) + g
                return np.array(context[s:s + k], np.int64)
        return np.zeros(0, np.int64)

    def propose(self, stream, n: int, k: int, pick):
        return (self.lookup(stream[:n], k) if k else np.zeros(0, np.int64)), None

    def commit(self, n_good: int, stream) -> None:
        pass


def _as_draft(draft, target):
    if isinstance(draft, PromptLookupDraft):
        return draft, None
    if not all(callable(getattr(draft, m, None)) for m in ("extend", "new_kv_cache",
                                                          "prefill")):
        raise TypeError(f"{OP}: draft must be a GPT (with extend / new_kv_cache / prefill) "
                        f"or a PromptLookupDraft, got {type(draft).__name__}")
    vt = target.config.vocab_size
    vd = getattr(getattr(draft, "config", None), "vocab_size", None)
    if vd != vt:
        raise ValueError(f"{OP}: the draft's vocab_size ({vd}) differs from the target's "
                         f"({vt}); the two models must share one tokenizer")
    return _ModelDraft(draft), draft


# ------------------------------------------------------------------ the decoder

def _check_args(target, idx, max_new_tokens, k, temperature, top_k, top_p):
    if not all(callable(getattr(target, m, None)) for m in ("extend", "new_kv_cache",
                                                           "prefill")):
        raise TypeError(f"{OP}: target must be a GPT (with extend / new_kv_cache / "
                        f"prefill), got {type(target).__name__}")
    arr = np.asarray(idx)
    if arr.dtype.kind not in "iu" or arr.ndim not in (1, 2) or arr.shape[-1] < 1:
        raise ValueError(f"{OP}: idx must be a (T,) or (1, T) int array with T >= 1, got "
                         f"{arr.dtype} {arr.shape}")
    if arr.ndim == 2 and arr.shape[0] != 1:
        raise ValueError(f"{OP}: batch size must be 1 (the sequences of a batch accept "
                         f"different numbers of draft tokens), got idx {arr.shape}")
    for name, v, lo in (("max_new_tokens", max_new_tokens, 0), ("k", k, 1),
                        ("top_k", top_k, 1)):
        if name == "top_k" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"{OP}: {name} must be an int >= {lo}, got {v!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not np.isfinite(temperature) or temperature < 0):
        raise ValueError(f"{OP}: temperature must be a finite number >= 0, got "
                         f"{temperature!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"{OP}: top_p must be in (0, 1], got {top_p!r}")
    V = target.config.vocab_size
    if arr.min() < 0 or arr.max() >= V:
        raise ValueError(f"{OP}: token ids must be in [0, {V}), got {arr.min()}..{arr.max()}")
    return arr


def speculative_decode(target, draft, idx, max_new_tokens: int, k: int = 4,
                       temperature: float = 0.0, top_k: int | None = None,
                       top_p: float | None = None, seed=None):
    """Extend one sequence by ``max_new_tokens`` tokens from ``target``, with ``draft`` (a GPT
    over the same vocabulary, or a ``PromptLookupDraft``) proposing up to k tokens a round.

    idx int (1, T) or (T,) (batch 1 only) -> ``(tokens, stats)``: tokens (1, T + n), or
    (T + n,) for a 1-D idx, and a ``SpecStats``. temperature 0 is greedy and gives the
    target's greedy output token for token; otherwise the tokens are distributed as
    ``tl.infer.generate(target, idx, n, temperature, top_k, top_p)`` samples (not the same
    draws: the random numbers are used differently). ``seed``: an int, a Generator or None.
    Both models run in eval mode under no_grad and are restored afterwards.
    """
    arr = _check_args(target, idx, max_new_tokens, k, temperature, top_k, top_p)
    drafter, draft_model = _as_draft(draft, target)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    prompt = arr.reshape(-1).astype(np.int64)
    T, n, k = len(prompt), int(max_new_tokens), int(k)
    out = np.empty(T + n, np.int64)
    out[:T] = prompt
    stats = SpecStats(k=k, new_tokens=n)
    shape = (lambda a: a) if arr.ndim == 1 else (lambda a: a[None])
    if n == 0:
        return shape(out), stats
    temperature = float(temperature)
    greedy = temperature == 0

    def pick(logits):                                # a draft token and its q (or None)
        if greedy:
            return int(np.argmax(logits)), None
        q = filtered_probs(logits[None], temperature, top_k, top_p)[0]
        return draw(q, rng), q

    now = time.perf_counter
    t_start = now()
    with no_grad(), _EvalMode(target), _EvalMode(draft_model):
        tgt = _Fed(target, prompt[:-1])              # the target holds all but the last
        drafter.start(prompt)
        stats.prefill_time_s = now() - t_start
        calls0 = drafter.calls
        m_tok = T                                    # tokens in out so far
        while m_tok < T + n:
            kr = min(k, T + n - m_tok - 1)           # never emit more than asked for
            t0 = now()
            props, qs = drafter.propose(out, m_tok, kr, pick)        # (j,), (j, V) | None
            t1 = now()
            tgt.mark()
            logits = tgt.feed(np.concatenate([out[m_tok - 1:m_tok], props]))  # (j+1, V)
            t_fed = now()
            j = len(props)
            if greedy:
                best = np.argmax(logits, axis=-1)                    # (j+1,)
                m = 0
                while m < j and props[m] == best[m]:
                    m += 1
                nxt = int(best[m])
            else:
                P = filtered_probs(logits, temperature, top_k, top_p)    # (j+1, V)
                m, nxt = 0, None
                for i in range(j):
                    ok, y = accept_draft_token(P[i], None if qs is None else qs[i],
                                               int(props[i]), rng)
                    if not ok:
                        nxt = y
                        break
                    m += 1
                if nxt is None:
                    nxt = draw(P[j], rng)                            # the bonus token
            t2 = now()
            out[m_tok:m_tok + m] = props[:m]
            out[m_tok + m] = nxt
            if m < j:
                tgt.rollback(m_tok + m, out)         # keep x_N and the accepted d_1..d_m
            t3 = now()
            drafter.commit(m_tok + m, out)
            stats.draft_time_s += (t1 - t0) + (now() - t3)
            stats.target_time_s += (t_fed - t1) + (t3 - t2)
            stats.rounds += 1
            stats.target_calls += 1
            stats.proposed += j
            stats.accepted += m
            stats.rejections += int(m < j)
            m_tok += m + 1
        stats.draft_calls = drafter.calls - calls0
    stats.wall_time_s = now() - t_start
    return shape(out), stats


__all__ = ["speculative_decode", "PromptLookupDraft", "SpecStats", "accept_draft_token",
           "filtered_probs", "draw", "expected_tokens_per_round", "predicted_speedup"]
