"""Pruning a trained GPT: zero (unstructured) or remove (structured) its least useful weights.

Prunable weights: each block's four Linear weights, ``attn.c_attn`` (C, 3A), ``attn.c_proj``
(A, C), ``mlp.c_fc`` (C, Hd), ``mlp.c_proj`` (Hd, C) (A = C, Hd = 4C unpruned); never the
embeddings, LayerNorms or biases. A weight W is (in, out) and y = x @ W: output unit j is
column j, input feature i is row i. A mask M has the weight's shape, entries exactly 0 or 1,
and the pruned weight is W ⊙ M.

Scores (the lowest are pruned):

    magnitude   s_ij = |W_ij|
    Wanda       s_ij = |W_ij| · ‖X_i‖₂,   ‖X_i‖₂ = sqrt(Σ_t x_ti²) over the calibration tokens t
                (x_t: the layer's input at token t, from running the model on a few training
                windows, ``calibrate``)

Schemes (``SCHEMES``), for a sparsity S in (0, 1):

    "magnitude"        global: one threshold, the k = round(S N) lowest |W| of all N prunable
                       weights together (so layers end at different sparsities)
    "magnitude-layer"  each matrix of n weights loses its round(S n) lowest |W|
    "wanda"            each output column of `in` weights loses its round(S in) lowest scores
    "2:4", "2:4-wanda" in every group of 4 consecutive input weights of a column (rows
                       4g..4g+3) the 2 highest |W| (or Wanda scores) stay: S must be 0.5
    "neurons"          structured: each block loses round(S Hd) MLP hidden units (a c_fc
                       column, its bias, and its c_proj row), those of lowest
                       ‖a_j‖₂ · ‖W_proj[j, :]‖₂ = ‖a_j w_jᵀ‖_F, the size over the calibration
                       tokens of the unit's contribution to the residual stream
                       (a_j = GELU(x W_fc + b_fc)_j)
    "heads"            structured: each block loses round(S H) attention heads (the head's q,
                       k, v columns of c_attn with their biases, and its hs rows of c_proj),
                       those of lowest ‖Y_h W_proj[h]‖_F, the head's contribution (Y_h: its
                       attention output (tokens, hs), W_proj[h]: its (hs, C) rows)

Structured pruning shrinks the matrices: the result is a smaller GPT whose config lists each
block's widths (``GPTConfig.mlp_hidden`` / ``layer_heads``), which saves, loads and decodes
with a KV cache like any other. Its masks (in the original shapes: the removed unit's
weights 0) give the same function: a removed unit's c_proj row is 0, so it adds nothing.

``prune(model, sparsity, scheme, calib=None) -> (pruned copy, masks)`` leaves ``model`` as it
was. ``finetune(model, masks, train_ids, steps)`` trains with the existing ``Trainer`` through
``MaskedGPT``, whose forward multiplies each masked weight by its mask inside the graph
(W_eff = W ⊙ M), so dL/dW = dL/dW_eff ⊙ M is exactly 0 at every pruned weight: AdamW's moments
stay 0 there, its update is 0 / (sqrt(0) + eps) = 0 and its decay multiplies 0 by
(1 - lr wd), so a pruned weight stays exactly 0 (``finetune`` checks it after training).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..autograd import no_grad
from ..autograd import functional as F
from ..models import GPT, GPTConfig
from ..nn import Linear, Module

SCHEMES = ("magnitude", "magnitude-layer", "wanda", "2:4", "2:4-wanda", "neurons", "heads")
STRUCTURED = ("neurons", "heads")
NEEDS_CALIBRATION = ("wanda", "2:4-wanda", "neurons", "heads")
PARTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

__all__ = ["SCHEMES", "STRUCTURED", "Calibration", "calibrate", "prunable", "prune",
           "apply_masks", "masks_hold", "sparsity_report", "MaskedGPT", "finetune",
           "copy_gpt", "shrink", "save_pruned"]


def _fail(msg: str):
    raise ValueError(f"prune: {msg}")


def prunable(model: GPT) -> list:
    """[(parameter name, Linear)] of the prunable weights, block by block in PARTS order."""
    if not isinstance(model, GPT):
        raise TypeError(f"prune: expected a tl.models.GPT, got {type(model).__name__}")
    out = []
    for i, blk in enumerate(model.transformer.h):
        for part in PARTS:
            lin = blk.get_submodule(part)
            if not isinstance(lin, Linear):
                raise TypeError(f"prune: transformer.h.{i}.{part} is a {type(lin).__name__}; "
                                f"prune the float model (before quantising)")
            out.append((f"transformer.h.{i}.{part}.weight", lin))
    return out


def copy_gpt(model: GPT) -> GPT:
    """An independent copy of a float GPT (same config, dtype and weights), in eval mode."""
    out = GPT(model.config, dtype=model.dtype)
    out.load_state_dict({k: v.copy() for k, v in model.state_dict().items()})
    out.eval()
    return out


# ------------------------------------------------------------------ calibration

@dataclass
class Calibration:
    """What a pruning score needs from running the model on calibration tokens.

    ``input_norms[name]`` (in,): ‖X_i‖₂ of each input feature of the prunable weight
    ``name`` (for ``mlp.c_proj`` these are the hidden units' activation norms ‖a_j‖₂);
    ``head_norms[l]`` (H_l,): ‖Y_h W_proj[h]‖_F of each head of block l; ``tokens``: how many
    tokens were run; ``logits``: the model's logits on them (a check that the calibration
    pass computes what the model does)."""
    input_norms: dict = field(default_factory=dict)
    head_norms: dict = field(default_factory=dict)
    tokens: int = 0
    logits: np.ndarray | None = None


def calibrate(model: GPT, ids, windows: int = 16, seed: int = 0) -> Calibration:
    """Run ``model`` on ``windows`` seeded windows of block_size tokens of ``ids`` (training
    ids) and collect the norms the scores need (see ``Calibration``)."""
    from ..train.evaluate import sample_windows
    prunable(model)                                          # a float GPT
    ids = np.asarray(ids, np.int64)
    if ids.ndim != 1 or not isinstance(windows, (int, np.integer)) or windows < 1:
        _fail(f"calibration needs a 1-D id array and windows >= 1, got ids {ids.shape}, "
              f"windows {windows!r}")
    T = min(model.config.block_size, len(ids) - 1)
    if T < 1:
        _fail(f"calibration ids hold {len(ids)} tokens; need at least 2")
    starts = sample_windows(len(ids), T, int(windows), seed)
    idx = ids[starts[:, None] + np.arange(T)]                # (W, T)
    cal = Calibration(tokens=int(idx.size))
    sq = {}                                                  # name -> Σ_t x_ti², (in,)

    def acc(name, x):                                        # x (..., in)
        a = x.data.reshape(-1, x.shape[-1]).astype(np.float64)
        sq[name] = sq.get(name, 0.0) + (a * a).sum(axis=0)

    t = model.transformer
    was = model.training
    model.eval()
    try:
        with no_grad():
            B = idx.shape[0]
            x = t.wte(idx) + t.wpe.weight[0:T]               # (B, T, C); dropout off
            hs = model.config.head_size
            for i, blk in enumerate(t.h):
                pre = f"transformer.h.{i}."
                a = blk.attn
                H = a.n_head
                A = H * hs
                h1 = blk.ln_1(x)                             # (B, T, C)
                acc(pre + "attn.c_attn.weight", h1)
                qkv = a.c_attn(h1).reshape((B, T, 3, H, hs)).transpose((2, 0, 3, 1, 4))
                y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], causal=True)
                y = y.transpose((0, 2, 1, 3)).reshape((B, T, A))  # (B, T, A)
                acc(pre + "attn.c_proj.weight", y)
                yd = y.data.reshape(-1, A).astype(np.float64)
                Wp = a.c_proj.weight.data.astype(np.float64)    # (A, C)
                cal.head_norms[i] = np.array([
                    np.linalg.norm(yd[:, h * hs:(h + 1) * hs] @ Wp[h * hs:(h + 1) * hs])
                    for h in range(H)])                      # (H,)
                x = x + a.c_proj(y)
                h2 = blk.ln_2(x)
                acc(pre + "mlp.c_fc.weight", h2)
                z = F.gelu(blk.mlp.c_fc(h2), approximate="tanh")  # (B, T, Hd)
                acc(pre + "mlp.c_proj.weight", z)
                x = x + blk.mlp.c_proj(z)
            cal.logits = model._head(t.ln_f(x)).data
    finally:
        model.train(was)
    cal.input_norms = {k: np.sqrt(v) for k, v in sq.items()}
    return cal


# ------------------------------------------------------------------ masks

def _check_sparsity(sparsity, scheme):
    if scheme not in SCHEMES:
        _fail(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    ok = (isinstance(sparsity, (int, float, np.floating)) and not isinstance(sparsity, bool)
          and math.isfinite(sparsity) and 0.0 < sparsity < 1.0)
    if not ok:
        _fail(f"sparsity must be a number in (0, 1), got {sparsity!r}")
    if scheme.startswith("2:4") and sparsity != 0.5:
        _fail(f"scheme {scheme} keeps 2 of every 4 weights: sparsity must be 0.5, "
              f"got {sparsity!r}")


def _zero_lowest(score: np.ndarray, k: int) -> np.ndarray:
    """A 0/1 mask of score's shape with its k lowest entries 0 (ties: the earlier first)."""
    m = np.ones(score.size, np.bool_)
    m[np.argsort(score, axis=None, kind="stable")[:k]] = False
    return m.reshape(score.shape)


def _per_column(score: np.ndarray, k: int) -> np.ndarray:
    """0/1 mask with the k lowest of every column 0."""
    m = np.ones(score.shape, np.bool_)
    low = np.argsort(score, axis=0, kind="stable")[:k]                  # (k, out)
    np.put_along_axis(m, low, False, axis=0)
    return m


def _two_of_four(score: np.ndarray, name: str) -> np.ndarray:
    """0/1 mask keeping the 2 highest of each group of 4 consecutive rows of each column."""
    n_in, n_out = score.shape
    if n_in % 4:
        _fail(f"2:4 needs a multiple of 4 input features; {name} has {n_in}")
    g = score.reshape(n_in // 4, 4, n_out)                               # (in/4, 4, out)
    m = np.ones(g.shape, np.bool_)
    low = np.argsort(g, axis=1, kind="stable")[:, :2]                    # (in/4, 2, out)
    np.put_along_axis(m, low, False, axis=1)
    return m.reshape(n_in, n_out)


def _wanda_score(W, name, calib):
    if name not in calib.input_norms or calib.input_norms[name].shape != (W.shape[0],):
        _fail(f"the calibration has no input norms ({W.shape[0]},) for {name}; calibrate "
              f"this model")
    return np.abs(W.astype(np.float64)) * calib.input_norms[name][:, None]   # (in, out)


def _unstructured_masks(model, sparsity, scheme, calib) -> dict:
    ws = [(n, lin.weight.data) for n, lin in prunable(model)]
    if scheme == "magnitude":
        allw = np.concatenate([np.abs(w).ravel() for _, w in ws])
        flat = _zero_lowest(allw, int(round(sparsity * allw.size)))
        out, at = {}, 0
        for n, w in ws:
            out[n] = flat[at:at + w.size].reshape(w.shape)
            at += w.size
    elif scheme == "magnitude-layer":
        out = {n: _zero_lowest(np.abs(w), int(round(sparsity * w.size))) for n, w in ws}
    elif scheme == "wanda":
        out = {n: _per_column(_wanda_score(w, n, calib), int(round(sparsity * w.shape[0])))
               for n, w in ws}
    else:                                                                # 2:4, 2:4-wanda
        out = {n: _two_of_four(_wanda_score(w, n, calib) if scheme == "2:4-wanda"
                               else np.abs(w), n) for n, w in ws}
    return {n: m.astype(model.dtype) for n, m in out.items()}


def apply_masks(model: GPT, masks: dict) -> GPT:
    """W <- W ⊙ M for every ``masks`` entry {parameter name: 0/1 array}, in place."""
    own = dict(model.named_parameters())
    for n, m in masks.items():
        if n not in own or own[n].data.shape != m.shape:
            _fail(f"mask {n!r} {m.shape} matches no parameter of the model")
        own[n].data *= m.astype(own[n].data.dtype)
    return model


def masks_hold(model: GPT, masks: dict) -> bool:
    """True when every masked-out weight is exactly 0 (and W ⊙ M == W bit for bit)."""
    own = dict(model.named_parameters())
    return all(np.array_equal(own[n].data * m, own[n].data) and not own[n].data[m == 0].any()
               for n, m in masks.items())


def sparsity_report(model: GPT) -> dict:
    """{"overall": share of the prunable weights that are exactly 0, name: its share}."""
    rows = {n: float((lin.weight.data == 0).mean()) for n, lin in prunable(model)}
    sizes = {n: lin.weight.data.size for n, lin in prunable(model)}
    total = sum(sizes.values())
    rows["overall"] = sum(rows[n] * sizes[n] for n in sizes) / total
    return rows


# ------------------------------------------------------------------ structured removal

def _unit_scores(model, scheme, calib):
    """Per block: the scores of its units (MLP hidden units or heads), (Hd_l,) or (H_l,)."""
    out = []
    for i, blk in enumerate(model.transformer.h):
        if scheme == "neurons":
            name = f"transformer.h.{i}.mlp.c_proj.weight"
            Wp = blk.mlp.c_proj.weight.data.astype(np.float64)          # (Hd, C)
            an = calib.input_norms.get(name)
            if an is None or an.shape != (Wp.shape[0],):
                _fail(f"the calibration has no activation norms for {name}; calibrate "
                      f"this model")
            out.append(an * np.linalg.norm(Wp, axis=1))                 # (Hd,)
        else:
            hn = calib.head_norms.get(i)
            if hn is None or hn.shape != (blk.attn.n_head,):
                _fail(f"the calibration has no head norms for block {i}; calibrate this model")
            out.append(np.asarray(hn, np.float64))
    return out


def shrink(model: GPT, keep_hidden: list, keep_heads: list) -> GPT:
    """A smaller GPT holding only the kept units: ``keep_hidden[l]`` (indices of block l's
    MLP hidden units) and ``keep_heads[l]`` (indices of its heads); every other weight is
    copied. Its config lists the per-layer widths."""
    cfg = model.config
    hs = cfg.head_size
    new_cfg = GPTConfig.from_dict(dict(cfg.to_dict(),
                                       mlp_hidden=[len(k) for k in keep_hidden],
                                       layer_heads=[len(k) for k in keep_heads]))
    state = {k: v.copy() for k, v in model.state_dict().items()}
    for i, blk in enumerate(model.transformer.h):
        pre = f"transformer.h.{i}."
        kh = np.sort(np.asarray(keep_hidden[i], np.int64))
        A = blk.attn.n_head * hs
        rows = (np.sort(np.asarray(keep_heads[i], np.int64))[:, None] * hs
                + np.arange(hs)).ravel()                                 # kept (A',) of A
        cols = np.concatenate([p * A + rows for p in range(3)])          # q, k, v parts
        state[pre + "mlp.c_fc.weight"] = state[pre + "mlp.c_fc.weight"][:, kh]
        state[pre + "mlp.c_proj.weight"] = state[pre + "mlp.c_proj.weight"][kh]
        state[pre + "attn.c_attn.weight"] = state[pre + "attn.c_attn.weight"][:, cols]
        state[pre + "attn.c_proj.weight"] = state[pre + "attn.c_proj.weight"][rows]
        if cfg.bias:
            state[pre + "mlp.c_fc.bias"] = state[pre + "mlp.c_fc.bias"][kh]
            state[pre + "attn.c_attn.bias"] = state[pre + "attn.c_attn.bias"][cols]
    out = GPT(new_cfg, dtype=model.dtype)
    out.load_state_dict({k: np.ascontiguousarray(v) for k, v in state.items()})
    out.eval()
    return out


def _structured(model, fraction, scheme, calib):
    scores = _unit_scores(model, scheme, calib)
    keep_hidden, keep_heads, masks = [], [], {}
    hs = model.config.head_size
    for i, (blk, s) in enumerate(zip(model.transformer.h, scores)):
        pre = f"transformer.h.{i}."
        n = s.size
        k = int(round(fraction * n))
        if k < 1 or k >= n:
            what = "MLP hidden units" if scheme == "neurons" else "heads"
            _fail(f"sparsity {fraction} removes {k} of block {i}'s {n} {what}; it must "
                  f"remove at least 1 and keep at least 1")
        keep = np.sort(np.argsort(s, kind="stable")[k:])
        drop = np.setdiff1d(np.arange(n), keep)
        nh, nhd = blk.attn.n_head, blk.mlp.c_fc.weight.data.shape[1]
        if scheme == "neurons":
            keep_hidden.append(keep)
            keep_heads.append(np.arange(nh))
            m_fc = np.ones((model.config.n_embd, nhd), model.dtype)
            m_fc[:, drop] = 0
            masks[pre + "mlp.c_fc.weight"] = m_fc
            m_pr = np.ones((nhd, model.config.n_embd), model.dtype)
            m_pr[drop] = 0
            masks[pre + "mlp.c_proj.weight"] = m_pr
        else:
            keep_hidden.append(np.arange(nhd))
            keep_heads.append(keep)
            A = nh * hs
            rows = (drop[:, None] * hs + np.arange(hs)).ravel()
            m_at = np.ones((model.config.n_embd, 3 * A), model.dtype)
            m_at[:, np.concatenate([p * A + rows for p in range(3)])] = 0
            masks[pre + "attn.c_attn.weight"] = m_at
            m_pr = np.ones((A, model.config.n_embd), model.dtype)
            m_pr[rows] = 0
            masks[pre + "attn.c_proj.weight"] = m_pr
    return shrink(model, keep_hidden, keep_heads), masks


# ------------------------------------------------------------------ the entry point

def prune(model: GPT, sparsity: float, scheme: str = "magnitude", calib=None):
    """``(pruned copy, masks)``: ``model`` pruned to ``sparsity`` by ``scheme`` (``SCHEMES``;
    for the structured ones, the fraction of units removed per block). ``calib``: a
    ``Calibration`` of this model, or training ids to calibrate on (``calibrate``), for the
    schemes that need activations (Wanda, 2:4-wanda, neurons, heads). ``masks`` {parameter
    name: 0/1 array in the original shapes}; unstructured, the copy is ``model`` ⊙ masks
    (dense, with zeros); structured, it is the smaller GPT equal to ``model`` ⊙ masks."""
    _check_sparsity(sparsity, scheme)
    prunable(model)
    if scheme in NEEDS_CALIBRATION:
        if calib is None:
            _fail(f"scheme {scheme} needs calibration activations: pass calib= (training "
                  f"ids or a Calibration from prune.calibrate)")
        if not isinstance(calib, Calibration):
            calib = calibrate(model, calib)
    if scheme in STRUCTURED:
        return _structured(model, float(sparsity), scheme, calib)
    masks = _unstructured_masks(model, float(sparsity), scheme, calib)
    return apply_masks(copy_gpt(model), masks), masks


# ------------------------------------------------------------------ masked fine-tuning

class MaskedGPT(Module):
    """``MaskedGPT(gpt, masks)(idx, targets)``: the GPT's forward with each masked weight
    W replaced, for that call, by the graph node W ⊙ M, so W's gradient is dL/dW_eff ⊙ M
    (exactly 0 where M is 0). Its parameters are the GPT's (names prefixed ``model.``); the
    Trainer trains it like the GPT."""

    def __init__(self, model: GPT, masks: dict):
        super().__init__()
        self.model = model
        owners = {n: lin for n, lin in prunable(model)}
        for n, m in masks.items():
            if n not in owners or owners[n].weight.data.shape != m.shape:
                _fail(f"mask {n!r} {m.shape} matches no prunable weight of the model")
        self._masked = [(owners[n], m.astype(model.dtype)) for n, m in masks.items()]

    def forward(self, idx, targets=None):
        swapped = []
        try:
            for lin, m in self._masked:
                p = lin.weight
                lin.__dict__["weight"] = p * m          # (in, out) graph node, not registered
                swapped.append((lin, p))
            return self.model(idx, targets)
        finally:
            for lin, p in swapped:
                lin.__dict__["weight"] = p


def finetune(model: GPT, masks: dict | None, train_ids, steps: int, *, val_ids=None,
             batch_size: int = 16, lr: float = 5e-4, weight_decay: float = 0.1,
             warmup_steps: int = 10, seed: int = 0, log=None):
    """Train ``model`` in place for ``steps`` AdamW steps on random windows of ``train_ids``
    with the ``Trainer`` (warmup then cosine to lr / 10, gradient clipping 1, weight decay
    on the matrices), through ``MaskedGPT`` when ``masks`` is given. Returns the Trainer's
    result. Raises RuntimeError if a masked-out weight ended non-zero (it cannot, by the
    argument in the module docstring; this checks it)."""
    from ..data import get_batch
    from ..train.trainer import TrainConfig, Trainer
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        _fail(f"finetune steps must be a positive int, got {steps!r}")
    if masks and not masks_hold(model, masks):
        _fail("finetune: the model has non-zero weights where its masks are 0; prune it "
              "(apply_masks) first")
    T = model.config.block_size
    train_ids = np.asarray(train_ids, np.int64)
    val_ids = train_ids if val_ids is None else np.asarray(val_ids, np.int64)
    net = MaskedGPT(model, masks) if masks else model
    cfg = TrainConfig(max_steps=int(steps), lr=lr, warmup_steps=min(warmup_steps, steps),
                      weight_decay=weight_decay, eval_every=int(steps), eval_batches=4,
                      seed=seed, log_every=max(1, int(steps)), progress=False,
                      sample_every=0)
    tr = Trainer(net, lambda rng: get_batch(train_ids, batch_size, T, rng),
                 lambda rng: get_batch(val_ids, batch_size, T, rng), cfg, log=log)
    res = tr.fit()
    model.eval()
    if masks and not masks_hold(model, masks):
        raise RuntimeError("prune.finetune: a pruned weight became non-zero during training")
    return res


# ------------------------------------------------------------------ checkpoints

def save_pruned(model: GPT, tokenizer, path: str, info: dict, base_meta: dict | None = None
                ) -> str:
    """Write a pruned GPT to the checkpoint folder ``path`` (atomically; ``tl.load``,
    ``tinyllm eval`` and ``tinyllm generate`` read it): dense arrays (zeros where pruned) or
    the smaller matrices of a structured prune, whose widths travel in meta.json's
    ``model.config`` (``mlp_hidden``, ``layer_heads``). ``info`` goes in as meta.json's
    ``pruned`` entry; ``base_meta`` (the source checkpoint's) keeps its text, settings and
    step. Returns the folder."""
    from ..train.persist import _gpt_meta, write_model_folder
    meta = _gpt_meta(model, tokenizer)
    if base_meta is not None:
        keep = {k: base_meta[k] for k in ("settings", "text", "step", "train_config")
                if k in base_meta}
        meta = dict(keep, model=meta["model"], tokenizer=meta["tokenizer"])
    meta["pruned"] = dict(info)
    meta["saved_by"] = "tinyllm compress"
    arrays = {name: np.asarray(a) for name, a in model.state_dict().items()}
    return write_model_folder(path, arrays, meta, "save_pruned")
