"""Gradient x input saliency of a GPT's prediction over its prompt's tokens, and the
weight-randomisation sanity check.

For a prompt idx (T,) the GPT sees the token embeddings E_i = wte[idx_i] (C,), i < T, plus
the position embeddings. Pick a position p and a target token y (default: the model's own
argmax there) and a score f:

    f = z_{p,y}                      score="logit"      the logit of y at p
    f = z_{p,y} - logsumexp_v z_{p,v}  score="logprob"  its log-probability (the default)

The saliency of token i is gradient x input, summed over the embedding's C channels:

    s_i = sum_c (df / dE_{i,c}) E_{i,c}                                    (T,)

It is also the derivative of f along E_i's own direction, s_i = d/dr f(E_i -> r E_i) at
r = 1, so it is checkable with one central difference per token:

    s_i ~ (f(E_i (1 + h)) - f(E_i (1 - h))) / (2 h)

(``tests/test_viz.py`` checks both that and single entries of df/dE on a float64 model).
Only positions i <= p can matter (causal attention): s_i = 0 for i > p.

Sanity check (Adebayo et al., "Sanity checks for saliency maps", 2018): a saliency method
that explains the *model* must change when the model's weights are replaced by random ones.
``randomised_saliency_check`` compares the trained model's map with that of a freshly
initialised GPT of the same config (same prompt, position and target) by Spearman's rank
correlation

    rho = pearson(rank(s_trained), rank(s_random))     ties get their average rank

A map that is mostly a property of the input (not of what was learnt) keeps rho high.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..autograd import Tensor, no_grad
from ..autograd import functional as F
from ..autograd.figures import new_figure
from ..errors import ShapeError
from .attention import _show, evaluating, prompt_ids

__all__ = ["saliency", "input_gradient", "score_from_embeddings", "spearman",
           "randomised_saliency_check", "SanityCheck", "plot_saliency", "SCORES"]

SCORES = ("logprob", "logit")


def _check_gpt(model, op):
    t = getattr(model, "transformer", None)
    if t is None or not hasattr(t, "wte"):
        raise TypeError(f"{op}: model must be a tinyllm GPT, got {type(model).__name__}")
    return t


def _position(position, T: int, op: str) -> int:
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) \
            or not -T <= position < T:
        raise ValueError(f"{op}: position must be an int in [-{T}, {T}), got {position!r}")
    return int(position) % T


def _one_prompt(model, idx, op: str) -> np.ndarray:
    ids = prompt_ids(model, idx, op)
    if ids.shape[0] != 1:
        raise ShapeError(f"{op}: idx must be one prompt (T,) or (1, T), got {ids.shape}")
    return ids


def _scalar(logits: Tensor, p: int, target: int, score: str) -> Tensor:
    """f from logits (1, T, V): z[p, target] or log_softmax(z[p])[target]."""
    z = logits[0, p]                                              # (V,)
    if score == "logit":
        return z[target]
    return F.log_softmax(z.reshape((1, -1)), axis=-1)[0, target]


def _forward_from(model, tok: Tensor) -> Tensor:
    """The GPT's logits (1, T, V) from token embeddings tok (1, T, C) instead of wte[idx]:
    the model's own layers (position embeddings, blocks, ln_f, tied head), eval mode."""
    t = model.transformer
    T = tok.shape[1]
    x = tok + t.wpe.weight[:T]                                    # (1, T, C)
    for blk in t.h:
        x = blk(x)
    return model._head(t.ln_f(x))                                 # (1, T, V)


def _args(model, idx, position, target, score, op):
    _check_gpt(model, op)
    if score not in SCORES:
        raise ValueError(f"{op}: score must be one of {', '.join(SCORES)}, got {score!r}")
    ids = _one_prompt(model, idx, op)
    p = _position(position, ids.shape[1], op)
    V = model.config.vocab_size
    if target is not None and (isinstance(target, bool) or not isinstance(
            target, (int, np.integer)) or not 0 <= target < V):
        raise ValueError(f"{op}: target must be None or a token id in [0, {V}), got "
                         f"{target!r}")
    return ids, p


def _embeddings(model, ids) -> np.ndarray:
    t = model.transformer
    with no_grad():
        return np.array(t.wte(ids).data)                          # (1, T, C), a copy


def score_from_embeddings(model, emb, position: int, target: int,
                          score: str = "logprob") -> float:
    """f (module docstring) for token embeddings ``emb`` (T, C) or (1, T, C) given directly
    (what a finite difference perturbs), at ``position`` for token ``target``."""
    _check_gpt(model, "score_from_embeddings")
    e = np.asarray(emb)
    e = e[None] if e.ndim == 2 else e
    if e.ndim != 3 or e.shape[0] != 1 or e.shape[2] != model.config.n_embd:
        raise ShapeError(f"score_from_embeddings: emb must be (T, {model.config.n_embd}), got "
                         f"{np.shape(emb)}")
    p = _position(position, e.shape[1], "score_from_embeddings")
    with no_grad(), evaluating(model):
        return float(_scalar(_forward_from(model, Tensor(e.astype(model.dtype))), p,
                             int(target), score).data)


def input_gradient(model, idx, position: int = -1, target=None, score: str = "logprob"):
    """(f, df/dE (T, C), E (T, C), target) for the prompt idx (T,): the score (module
    docstring), its gradient with respect to the prompt's token embeddings, the embeddings
    and the target token used (the model's argmax at ``position`` when None). The
    parameters' ``.grad`` are left as they were."""
    ids, p = _args(model, idx, position, target, score, "input_gradient")
    E = _embeddings(model, ids)                                   # (1, T, C)
    params = list(model.parameters())
    kept = [q.grad for q in params]          # the weights' own gradients, put back after
    for q in params:                         # (backward adds into .grad in place)
        q.grad = None
    try:
        with evaluating(model):
            if target is None:
                with no_grad():
                    target = int(np.argmax(_forward_from(model, Tensor(E)).data[0, p]))
            leaf = Tensor(E, requires_grad=True)
            f = _scalar(_forward_from(model, leaf), p, int(target), score)
            f.backward()
    finally:
        for q, g in zip(params, kept):
            q.grad = g
    return float(f.data), np.array(leaf.grad[0]), E[0], int(target)


def saliency(model, idx, position: int = -1, target=None, score: str = "logprob"):
    """Gradient x input over the prompt idx (T,): s_i = sum_c df/dE_{i,c} E_{i,c}, (T,),
    for f = the log-probability (``score="logprob"``) or logit (``"logit"``) of ``target``
    (default: the model's argmax) at ``position`` (default: the last, i.e. the next token)."""
    _, g, E, _ = input_gradient(model, idx, position, target, score)
    return (g * E).sum(axis=-1)                                   # (T, C) -> (T,)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of x, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):                                             # average over tie runs
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        if j > i:
            r[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return r


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equal-length 1-D arrays (NaN if either is
    constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ShapeError(f"spearman: needs two arrays of the same length >= 2, got {a.shape} "
                         f"and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("spearman: the arrays must be finite")
    ra, rb = _ranks(a) - (a.size - 1) / 2.0, _ranks(b) - (b.size - 1) / 2.0
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


@dataclass
class SanityCheck:
    trained: np.ndarray      # (T,) the trained model's saliency
    randomised: np.ndarray   # (T,) the weight-randomised model's, same prompt and target
    rho: float               # Spearman rank correlation of the two (over positions <= p)
    target: int
    position: int

    def passed(self, threshold: float = 0.3) -> bool:
        """True when the map changed with the weights: rho below ``threshold``."""
        return bool(self.rho < threshold)


def randomised_saliency_check(model, idx, position: int = -1, target=None,
                              score: str = "logprob", seed: int = 12345,
                              absolute: bool = False) -> SanityCheck:
    """Saliency of ``model`` and of a freshly initialised GPT of the same config and dtype
    (``GPT(model.config, seed=seed)``: every weight random), on the same prompt, position and
    target; their Spearman rank correlation over the positions i <= p (later ones are 0 in
    both). ``absolute`` ranks |s| instead of s."""
    from ..models import GPT
    ids, p = _args(model, idx, position, target, score, "randomised_saliency_check")
    _, g, E, target = input_gradient(model, ids, p, target, score)
    trained = (g * E).sum(-1)
    rand = GPT(model.config, seed=seed, dtype=model.dtype)
    randomised = saliency(rand, ids, p, target, score)
    a, b = trained[:p + 1], randomised[:p + 1]
    if absolute:
        a, b = np.abs(a), np.abs(b)
    rho = spearman(a, b) if p >= 1 else float("nan")
    return SanityCheck(trained, randomised, rho, target, p)


def plot_saliency(scores, tokens=None, *, title="gradient x input saliency",
                  target=None):
    """Bars of the saliency s_i (T,) over the prompt's tokens (red: raises the score, blue:
    lowers it), token labels underneath; ``target`` (a str) names the predicted token in the
    title. Returns the Figure."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or s.size < 1:
        raise ShapeError(f"plot_saliency: scores must be 1-D (T,), got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("plot_saliency: scores must be finite")
    labels = [str(t) for t in tokens] if tokens is not None else [str(i) for i in range(s.size)]
    if len(labels) != s.size:
        raise ValueError(f"plot_saliency: {len(labels)} tokens for {s.size} scores")
    fig = new_figure(figsize=(max(5.0, 0.3 * s.size + 1.5), 3.2))
    ax = fig.subplots()
    ax.bar(range(s.size), s, color=np.where(s >= 0, "tab:red", "tab:blue"))
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xticks(range(s.size), [_show(t) for t in labels], fontsize=8)
    ax.set_xlim(-0.6, s.size - 0.4)
    ax.set_xlabel("prompt token")
    ax.set_ylabel("gradient x input")
    ax.set_title(title if target is None else f"{title} (target {_show(str(target))!r})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
