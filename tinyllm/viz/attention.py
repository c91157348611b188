"""Attention weights of a trained model, as arrays and as heatmaps.

GPT. Each block l of a GPT (``tinyllm.models.gpt``) computes, for head h of its attention,

    a      = ln_1(x)                                          (B, T, C)  the block's input
    q, k, v = a W_q + b_q, a W_k + b_k, a W_v + b_v           (B, H, T, hs) each (c_attn)
    S_ts   = c q_t . k_s,   c = 1 / sqrt(hs)                  (B, H, T, T)
    P_ts   = exp(S_ts) / sum_{s' <= t} exp(S_ts')  (s <= t),  0 above the diagonal
    y_t    = sum_s P_ts v_s                                   (B, H, T, hs) -> c_proj

The fused attention kernel never builds P (it keeps a running max and sum, tile by tile).
``gpt_attention`` recomputes P from the model's own layers, under ``no_grad``, block by block
with the real residual stream between them: (L, B, H, T, T), row t of P[l, b, h] is where
query t of head h of block l looked. ``tests/test_viz.py`` checks that P @ v through c_proj
gives back the block's attention output.

The document's RNN (``tinyllm.models.attention_rnn``): ``rnn_attention`` returns its
alpha_{t,i} (eq. 4.2a), (B, T, T), row t over i <= t.

A previous-token head puts its weight on the offset -1 diagonal, P_{t, t-1}:

    score[l, h] = mean over b and t = 1..T-1 of P[l, b, h, t, t-1]      (L, H)

(1 for a perfect previous-token head; about 1/(t+1) on average for a uniform one).

Figures (``plot_attention``, ``plot_heads``) are ``matplotlib.figure.Figure`` objects from
``tinyllm.autograd.figures.new_figure``: no pyplot, nothing global; they show inline in
Jupyter and save with ``fig.savefig``.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from ..autograd import Tensor, no_grad
from ..autograd import functional as F
from ..autograd.figures import new_figure
from ..errors import ShapeError

__all__ = ["gpt_attention", "rnn_attention", "attention_maps", "plot_attention",
           "plot_heads", "previous_token_score", "best_previous_token_head"]


# ------------------------------------------------------------------ the weights

@contextlib.contextmanager
def evaluating(model):
    """The model in eval mode (no dropout) inside the block, its own mode restored after."""
    was = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def prompt_ids(model, idx, op: str) -> np.ndarray:
    """idx (T,) or (B, T) of ints -> (B, T) int64, checked against the model's vocabulary
    and window (ShapeError / ValueError naming ``op``)."""
    arr = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.shape[1] < 1:
        raise ShapeError(f"{op}: idx must be a non-empty int array (T,) or (B, T), got "
                         f"{arr.dtype} {arr.shape}")
    V = getattr(model, "vocab_size", None) or model.config.vocab_size
    if arr.min() < 0 or arr.max() >= V:
        raise ValueError(f"{op}: token ids must be in [0, {V}), got {arr.min()}..{arr.max()}")
    limit = getattr(model, "block_size", None)
    if limit is not None and arr.shape[1] > limit:
        raise ShapeError(f"{op}: {arr.shape[1]} tokens exceed the model's window "
                         f"(block_size {limit})")
    return arr.astype(np.int64, copy=False)


def head_weights(attn, a: Tensor) -> np.ndarray:
    """The softmax probabilities P (B, H, T, T) of one ``CausalSelfAttention`` on its input
    a = ln_1(x) (B, T, C): S = c q k^T with the causal mask, P = softmax(S) over keys."""
    B, T, _ = a.shape
    H, hs = attn.n_head, attn.head_size
    qkv = attn.c_attn(a).data.reshape(B, T, 3, H, hs).transpose(2, 0, 3, 1, 4)  # (3,B,H,T,hs)
    q, k = qkv[0], qkv[1]
    s = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(hs))          # (B, H, T, T)
    future = np.triu(np.ones((T, T), bool), 1)                    # s > t
    s = np.where(future, -np.inf, s)
    return F.softmax(Tensor(s), axis=-1).data                     # rows sum to 1


def gpt_attention(model, idx):
    """Every head's attention probabilities for the tokens idx (T,) or (B, T):
    an ndarray (L, B, H, T, T), P[l, b, h, t, s] = weight of query t on key s in head h of
    block l (zeros for s > t). A head-pruned GPT whose blocks have different head counts
    gives a list of L arrays (B, H_l, T, T) instead. The model is run in eval mode, without
    a graph; its own mode is restored."""
    t = getattr(model, "transformer", None)
    if t is None or not hasattr(t, "h"):
        raise TypeError(f"gpt_attention: model must be a tinyllm GPT, got "
                        f"{type(model).__name__} (an AttentionRNN: rnn_attention)")
    idx = prompt_ids(model, idx, "gpt_attention")
    T = idx.shape[1]
    maps = []
    with no_grad(), evaluating(model):
        x = t.wte(idx) + t.wpe.weight[:T]                          # (B, T, C)
        for blk in t.h:
            maps.append(head_weights(blk.attn, blk.ln_1(x)))       # (B, H, T, T)
            x = blk(x)                                             # the real residual stream
    if len({m.shape for m in maps}) == 1:
        return np.stack(maps)                                      # (L, B, H, T, T)
    return maps


def rnn_attention(model, idx) -> np.ndarray:
    """The document's attention weights alpha_{t,i} (eq. 4.2a) of an ``AttentionRNN`` for
    idx (T,) or (B, T): (B, T, T), row t over the keys i <= t, zeros above."""
    if not hasattr(model, "attention_weights"):
        raise TypeError(f"rnn_attention: model must be an AttentionRNN, got "
                        f"{type(model).__name__} (a GPT: gpt_attention)")
    if not getattr(model, "attention", True):
        raise ValueError("rnn_attention: this AttentionRNN was built with attention=False "
                         "(the ablation has no attention weights)")
    arr = np.asarray(idx)
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.shape[1] < 1:
        raise ShapeError(f"rnn_attention: idx must be a non-empty int array (T,) or (B, T), "
                         f"got {arr.dtype} {arr.shape}")
    with evaluating(model):
        return np.array(model.attention_weights(arr))


def attention_maps(model, idx):
    """``gpt_attention`` for a GPT, ``rnn_attention`` for the document's RNN."""
    if hasattr(model, "attention_weights"):
        return rnn_attention(model, idx)
    return gpt_attention(model, idx)


# ------------------------------------------------------------------ previous-token heads

def _per_head(maps, op: str) -> np.ndarray:
    """maps (L, B, H, T, T), (L, H, T, T) or a list of per-layer (B, H, T, T) -> the same
    as one (L, B, H, T, T) array (a ragged list is padded with NaN heads)."""
    if isinstance(maps, (list, tuple)):
        layers = [np.asarray(m) for m in maps]
        if any(m.ndim != 4 for m in layers):
            raise ShapeError(f"{op}: each layer's map must be (B, H, T, T)")
        Hmax = max(m.shape[1] for m in layers)
        pad = [np.concatenate([m, np.full(m.shape[:1] + (Hmax - m.shape[1],) + m.shape[2:],
                                          np.nan)], axis=1) for m in layers]
        return np.stack(pad)
    a = np.asarray(maps)
    if a.ndim == 4:
        a = a[:, None]
    if a.ndim != 5 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"{op}: maps must be (L, B, H, T, T) or (L, H, T, T), got {a.shape}")
    return a


def previous_token_score(maps) -> np.ndarray:
    """(L, H): each head's mean weight on the previous token, P[t, t-1] averaged over the
    batch and t = 1..T-1 (needs T >= 2). NaN for a head a pruned layer does not have."""
    a = _per_head(maps, "previous_token_score")
    T = a.shape[-1]
    if T < 2:
        raise ShapeError("previous_token_score: needs at least 2 positions (T >= 2)")
    t = np.arange(1, T)
    return a[..., t, t - 1].mean(axis=(1, 3))                     # (L, B, H, T-1) -> (L, H)


def best_previous_token_head(maps) -> tuple:
    """(layer, head, score) of the head with the highest ``previous_token_score``."""
    s = previous_token_score(maps)
    layer, head = np.unravel_index(np.nanargmax(s), s.shape)
    return int(layer), int(head), float(s[layer, head])


# ------------------------------------------------------------------ figures

def _span(sel, n: int, name: str) -> tuple:
    """rows / cols: None (all), a slice / range with step 1, or (lo, hi) -> half-open
    (lo, hi) within [0, n)."""
    if sel is None:
        return 0, n
    if isinstance(sel, (slice, range)):
        if sel.step not in (None, 1):
            raise ValueError(f"plot_attention: {name} must be a contiguous range (step 1)")
        lo, hi, _ = slice(sel.start, sel.stop).indices(n)
    elif isinstance(sel, (tuple, list)) and len(sel) == 2:
        lo, hi = int(sel[0]), int(sel[1])
    else:
        raise ValueError(f"plot_attention: {name} must be None, a slice, a range or (lo, hi), "
                         f"got {sel!r}")
    if not 0 <= lo < hi <= n:
        raise ValueError(f"plot_attention: {name} ({lo}, {hi}) must satisfy 0 <= lo < hi <= "
                         f"{n}")
    return lo, hi


def _labels(labels, n: int, name: str):
    if labels is None:
        return [str(i) for i in range(n)]
    labels = [str(s) for s in labels]
    if len(labels) != n:
        raise ValueError(f"plot_attention: {name} has {len(labels)} labels for {n} positions")
    return labels


def _show(s: str) -> str:
    """A token as a tick label: whitespace made visible."""
    return {" ": "␣", "\n": "\\n", "\t": "\\t"}.get(s, s)


def _heatmap(ax, w, x_labels, y_labels, *, vmax=None, fontsize=7):
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=vmax if vmax else max(float(np.nanmax(w)),
                                                                          1e-6),
                   aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(x_labels)), [_show(s) for s in x_labels], rotation=90,
                  fontsize=fontsize)
    ax.set_yticks(range(len(y_labels)), [_show(s) for s in y_labels], fontsize=fontsize)
    return im


def plot_attention(weights, *, x_labels=None, y_labels=None, rows=None, cols=None,
                   separator=None, title="attention weights", figsize=None):
    """One heatmap of a (T_q, T_k) weight matrix with a colour bar: row t = query t, column
    s = key s. ``x_labels`` / ``y_labels`` name the keys / queries (default: positions).
    ``rows`` / ``cols`` crop to a contiguous range of queries / keys (a slice, range or
    (lo, hi), in the full matrix's indices). ``separator`` (a position in the full
    sequence) is marked by a dashed red line where it begins (between positions sep - 1 and
    sep; at the edge of the crop when it lies outside it) and by red tick labels. Returns
    the Figure."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ShapeError(f"plot_attention: weights must be 2-D (T_q, T_k), got {w.shape} "
                         f"(pick a layer, batch row and head first)")
    Tq, Tk = w.shape
    xl = _labels(x_labels, Tk, "x_labels")
    yl = _labels(y_labels, Tq, "y_labels")
    r0, r1 = _span(rows, Tq, "rows")
    c0, c1 = _span(cols, Tk, "cols")
    w = w[r0:r1, c0:c1]
    fig = new_figure(figsize=figsize or (max(5.5, 0.28 * (c1 - c0) + 2.2),
                                         max(3.5, 0.28 * (r1 - r0) + 1.6)))
    ax = fig.subplots()
    im = _heatmap(ax, w, xl[c0:c1], yl[r0:r1])
    fig.colorbar(im, ax=ax, label="weight")
    if separator is not None:
        sep = int(separator)
        # a dashed line where the separator begins (its cell's left / top edge), kept inside
        # the crop; its tick labels in red
        x = float(np.clip(sep - c0, 0, c1 - c0)) - 0.5
        ax.axvline(x, color="red", ls="--", lw=1.2, label=f"separator (position {sep})")
        if r0 < sep < r1:
            ax.axhline(sep - r0 - 0.5, color="red", ls="--", lw=1.2)
        for ticks, lo, hi in ((ax.get_xticklabels(), c0, c1), (ax.get_yticklabels(), r0, r1)):
            if lo <= sep < hi:
                ticks[sep - lo].set_color("red")
        ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    ax.set_xlabel("key position s (attended to)")
    ax.set_ylabel("query position t")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_heads(maps, tokens=None, layer=None, *, batch: int = 0,
               title="attention per layer and head"):
    """A grid of heatmaps, one row per layer and one column per head, sharing one colour
    bar. ``maps``: ``gpt_attention``'s (L, B, H, T, T) (or its list for a pruned GPT), or
    (L, H, T, T); ``batch`` picks the row of the batch. ``layer`` (an int) draws that layer
    only. ``tokens``: T labels (str) for both axes."""
    a = _per_head(maps, "plot_heads")                             # (L, B, H, T, T)
    L, B, H, T, _ = a.shape
    if not 0 <= batch < B:
        raise ValueError(f"plot_heads: batch must be in [0, {B}), got {batch}")
    if layer is not None:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) \
                or not 0 <= layer < L:
            raise ValueError(f"plot_heads: layer must be an int in [0, {L}), got {layer!r}")
        layers = [int(layer)]
    else:
        layers = list(range(L))
    labels = [str(s) for s in tokens] if tokens is not None else [str(i) for i in range(T)]
    if len(labels) != T:
        raise ValueError(f"plot_heads: {len(labels)} tokens for {T} positions")
    cell = min(3.2, max(1.8, 0.09 * T + 0.8))                     # inches per heatmap
    fig = new_figure(figsize=(cell * H + 1.0, cell * len(layers) + 0.5), layout="constrained")
    axes = np.asarray(fig.subplots(len(layers), H, squeeze=False))
    fs = 7 if T <= 24 else 5
    im = None
    for r, li in enumerate(layers):
        for h in range(H):
            ax = axes[r, h]
            w = a[li, batch, h]
            if np.isnan(w).all():                                 # a pruned-away head
                ax.set_axis_off()
                continue
            im = _heatmap(ax, w, labels, labels, vmax=1.0, fontsize=fs)
            ax.set_title(f"layer {li} head {h}", fontsize=8)
            if h:
                ax.set_yticklabels([])
            if r != len(layers) - 1:
                ax.set_xticklabels([])
    fig.suptitle(title, fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="weight")
    return fig
