"""GPT: the decoder-only transformer, in GPT-2's layout and with GPT-2's parameter names.

Legend: B = batch, T = time, C = n_embd, H = n_head, hs = C / H, V = vocab_size,
L = n_layer, Lmax = a KV cache's length. A structurally pruned GPT (``tinyllm.compress.prune``)
has per-layer widths: block l has ``layer_heads[l]`` heads of hs each (attention width
A_l = H_l hs, c_attn (C, 3 A_l), c_proj (A_l, C)) and ``mlp_hidden[l]`` MLP hidden units.

    x      = wte[idx] + wpe[pos]                        (B, T, C)
    x      = x + attn(ln_1(x)); x = x + mlp(ln_2(x))    L blocks (pre-norm)
    logits = ln_f(x) @ wte^T                            (B, T, V)   head tied to wte

Initialisation (GPT-2 / nanoGPT): every weight N(0, 0.02), except the two projections that
write into the residual stream (``attn.c_proj.weight``, ``mlp.c_proj.weight``), which get
N(0, 0.02 / sqrt(2 L)) so the residual's variance does not grow with depth; biases 0,
LayerNorm weights 1. Everything is drawn in float64 from ``np.random.default_rng(seed)`` and
cast, so a model is a function of (config, seed) and its float32 and float64 versions agree
to rounding.

Inference with a KV cache (``new_kv_cache``, ``prefill``, ``decode_step``, ``extend``)
runs under ``tl.no_grad()`` and keeps each layer's keys and values in preallocated arrays
(B, H, Lmax, hs), so each new token costs one position's work instead of T positions'.
``extend`` feeds T tokens at once after a filled cache (chunked prefill) and returns all T
positions' logits, the query at absolute position pos + t attending to keys 0..pos+t;
``truncate`` rolls a cache back to fewer positions (speculative decoding's verify and
roll-back, ``tinyllm.infer.speculative``).
The decoding protocol that ``tl.infer`` drives (and AttentionRNN speaks too) is a thin layer
over them: ``state, logits = model.start(idx)`` (a new cache, prefilled),
``logits = model.step(state, tokens)`` (``decode_step``), ``model.reorder(state, index)``.

Context longer than the model's window. ``wpe`` has ``block_size`` rows, so no position
past ``block_size - 1`` exists. The forward pass refuses a longer ``idx`` (ShapeError);
generation without a cache crops the context to its last ``block_size`` tokens each step,
as nanoGPT does. With a cache, when the cache is full (Lmax positions) and a token arrives,
the cache is *re-prefilled* with its last ``keep`` tokens followed by the new one, at
positions 0..keep. With the defaults (Lmax = block_size, keep = block_size - 1) the new
token therefore sees exactly the last block_size tokens at positions 0..block_size-1: the
same context, positions and logits (to rounding) as the cropping path, at the price of one
block_size-token prefill per token once the window is full (the cropping path's cost). A
smaller ``keep`` re-prefills only once every Lmax - keep tokens (cheaper), but the context
then shrinks to ``keep + 1`` tokens right after each refill, so from the first overflow on
the two paths differ; so they do when Lmax < block_size. Shifting the cached keys instead
(a sliding window) would be wrong: every cached key was computed from its token's
absolute-position embedding, and cropping changes all of those positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..autograd import Tensor, no_grad
from ..autograd import functional as F
from ..errors import ShapeError
from ..kernels.qmatmul import rows_dot
from ..nn import Block, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList
from ..nn.quant import QuantEmbedding, QuantLinear
from ._config import ConfigDict


@dataclass
class GPTConfig(ConfigDict):
    vocab_size: int          # V: number of token ids
    block_size: int          # the longest context (rows of wpe)
    n_layer: int             # L: transformer blocks
    n_head: int              # H: attention heads per block
    n_embd: int              # C: residual-stream width; must be a multiple of n_head
    dropout: float = 0.0     # on embeddings and residual branches while training
    bias: bool = True        # biases in Linear and LayerNorm layers (GPT-2: True)
    # per-layer widths of a structurally pruned GPT (tinyllm.compress.prune); None = every
    # layer has 4 C MLP hidden units and n_head heads (of head_size = n_embd / n_head each)
    mlp_hidden: list | None = None   # (L,) MLP hidden units of each block
    layer_heads: list | None = None  # (L,) attention heads of each block

    def __post_init__(self):
        for f in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"GPTConfig: {f} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, (bool, np.bool_)):
            raise ValueError(f"GPTConfig: bias must be a bool, got {self.bias!r}")
        for f in ("mlp_hidden", "layer_heads"):
            v = getattr(self, f)
            if v is None:
                continue
            if (not isinstance(v, (list, tuple)) or len(v) != self.n_layer
                    or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                               and n >= 1 for n in v)):
                raise ValueError(f"GPTConfig: {f} must be None or a list of n_layer = "
                                 f"{self.n_layer} positive ints, got {v!r}")
            setattr(self, f, [int(n) for n in v])

    def to_dict(self) -> dict:
        """The fields as a dict; the per-layer widths only when set, so an unpruned GPT's
        dict (and checkpoint metadata) is what it was before they existed."""
        d = super().to_dict()
        for f in ("mlp_hidden", "layer_heads"):
            if d[f] is None:
                del d[f]
        return d

    def hidden_of(self, layer: int) -> int:
        """Block ``layer``'s MLP hidden width (4 n_embd unless pruned)."""
        return 4 * self.n_embd if self.mlp_hidden is None else self.mlp_hidden[layer]

    def heads_of(self, layer: int) -> int:
        """Block ``layer``'s attention heads (n_head unless pruned)."""
        return self.n_head if self.layer_heads is None else self.layer_heads[layer]

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class KVCache:
    """Each layer's keys and values for incremental decoding, and the tokens they came from.

    ``k[l]``, ``v[l]`` (B, H, Lmax, hs); ``tokens`` (B, Lmax); the first ``length``
    positions are valid. ``keep`` is how many tokens a full cache re-prefills with (see the
    module docstring); ``refills`` counts those re-prefills. ``n_head`` is one count for
    every layer or a list of each layer's (a head-pruned GPT: k[l] is (B, H_l, Lmax, hs)).
    """

    def __init__(self, n_layer, batch_size, n_head, max_len, head_size, dtype, keep):
        heads = list(n_head) if isinstance(n_head, (list, tuple)) else [n_head] * n_layer
        shapes = [(batch_size, h, max_len, head_size) for h in heads]
        self.k = [np.zeros(shape, dtype) for shape in shapes]
        self.v = [np.zeros(shape, dtype) for shape in shapes]
        self.tokens = np.zeros((batch_size, max_len), np.int64)
        self.length = 0
        self.keep = keep
        self.refills = 0

    batch_size = property(lambda self: self.tokens.shape[0])
    max_len = property(lambda self: self.tokens.shape[1])

    def reset(self) -> None:
        self.length = 0

    def reorder(self, index) -> None:
        """Rows of the batch gathered by ``index`` (B,) (beam search keeps the survivors)."""
        index = np.asarray(index)
        n = self.length
        for a in self.k + self.v:
            a[:, :, :n] = a[index, :, :n]
        self.tokens[:, :n] = self.tokens[index, :n]

    def truncate(self, length: int) -> None:
        """Roll back to the first ``length`` valid positions (0 <= length <= self.length):
        the later keys and values are forgotten (overwritten by whatever comes next)."""
        if (isinstance(length, bool) or not isinstance(length, (int, np.integer))
                or not 0 <= length <= self.length):
            raise ValueError(f"KVCache.truncate: length must be an int in [0, {self.length}] "
                             f"(the valid positions), got {length!r}")
        self.length = int(length)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k + self.v) + self.tokens.nbytes


class _Transformer(Module):
    """The container GPT-2's names go through: wte, wpe, drop, h, ln_f."""


class GPT(Module):
    """``GPT(cfg, seed=0, dtype=np.float32)``; ``model(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, cfg: GPTConfig, seed: int = 0, dtype=np.float32):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"GPT: cfg must be a GPTConfig, got {type(cfg).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"GPT: dtype must be float32 or float64, got {dtype}")
        self.config = cfg
        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        rng = np.random.default_rng(init_seq)
        # one Generator shared by every Dropout: save ``model.rng.bit_generator.state`` to
        # resume training bitwise
        self.rng = np.random.default_rng(drop_seq)
        std, proj_std = 0.02, 0.02 / math.sqrt(2 * cfg.n_layer)
        t = _Transformer()
        t.wte = Embedding(cfg.vocab_size, cfg.n_embd, dtype, rng, std)
        t.wpe = Embedding(cfg.block_size, cfg.n_embd, dtype, rng, std)
        t.drop = Dropout(cfg.dropout, self.rng)
        t.h = ModuleList(Block(cfg, rng, dtype, std=std, proj_std=proj_std,
                               dropout_rng=self.rng, hidden=cfg.hidden_of(i),
                               n_head=cfg.heads_of(i)) for i in range(cfg.n_layer))
        t.ln_f = LayerNorm(cfg.n_embd, bias=cfg.bias, dtype=dtype)
        self.transformer = t

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32) -> "GPT":
        """The GPT of a local Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors``
        with GPT-2's names), in eval mode; see ``tinyllm.models.hf_gpt2``. Nothing downloads."""
        from .hf_gpt2 import load_gpt2
        return load_gpt2(path, dtype)

    @property
    def dtype(self) -> np.dtype:
        return self.transformer.wpe.weight.dtype            # wpe stays float when quantised

    @property
    def block_size(self) -> int:
        return self.config.block_size

    # ------------------------------------------------------------ training forward
    def forward(self, idx, targets=None):
        """idx int (B, T), T <= block_size -> (logits (B, T, V) Tensor, loss or None).
        ``targets`` int (B, T); positions holding -100 are left out of the mean loss."""
        idx = self._check_idx(idx, "forward")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ShapeError(f"GPT.forward: sequence length {T} exceeds block_size "
                             f"{self.config.block_size}; crop idx to its last "
                             f"{self.config.block_size} tokens")
        x = self._trunk(idx, None)                                   # (B, T, C)
        logits = self._head(x)                                       # (B, T, V)
        loss = None
        if targets is not None:
            tg = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
            if tg.shape != (B, T) or tg.dtype.kind not in "iu":
                raise ShapeError(f"GPT.forward: targets must be an int array of shape "
                                 f"{(B, T)} like idx, got {tg.dtype} {tg.shape}")
            V = self.config.vocab_size
            loss = F.cross_entropy(logits.reshape((B * T, V)), tg.reshape(-1),
                                   ignore_index=-100)
        return logits, loss

    def _check_idx(self, idx, op):
        arr = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
        if arr.ndim != 2 or arr.dtype.kind not in "iu":
            raise ShapeError(f"GPT.{op}: idx must be an int array (B, T), got "
                             f"{arr.dtype} {arr.shape}")
        if arr.shape[1] < 1:
            raise ShapeError(f"GPT.{op}: idx must hold at least one token, got {arr.shape}")
        return arr

    def _trunk(self, idx, cache, pos: int = 0) -> Tensor:
        """Embeddings at absolute positions pos..pos+T-1, the blocks and ln_f: (B, T, C)."""
        t = self.transformer
        T = idx.shape[1]
        tok = t.wte(idx)                                             # (B, T, C)
        x = t.drop(tok + t.wpe.weight[pos:pos + T])                  # + (T, C) -> (B, T, C)
        for i, block in enumerate(t.h):
            x = block(x, None if cache is None else (cache.k[i], cache.v[i], pos))
        return t.ln_f(x)

    def _head(self, x: Tensor) -> Tensor:
        """Tied output projection: x (..., C) @ wte^T (C, V) -> (..., V), as one GEMM."""
        C, V = self.config.n_embd, self.config.vocab_size
        lead = tuple(x.shape[:-1])
        wte = self.transformer.wte
        if isinstance(wte, QuantEmbedding):                          # quantised tied head
            return wte.head(x.reshape((-1, C))).reshape(lead + (V,))
        logits = x.reshape((-1, C)) @ wte.weight.T                   # (N, C) @ (C, V)
        return logits.reshape(lead + (V,))

    # ------------------------------------------------------------ KV-cache inference
    def new_kv_cache(self, batch_size: int, max_len: int | None = None,
                     keep: int | None = None) -> KVCache:
        """Preallocated keys and values for ``batch_size`` sequences of up to ``max_len``
        positions (default and maximum: block_size). ``keep`` (default max_len - 1, which
        makes cached decoding agree with context cropping) is how many of the newest tokens
        a full cache is re-prefilled with."""
        cfg = self.config
        max_len = cfg.block_size if max_len is None else max_len
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"GPT.new_kv_cache: batch_size must be a positive int, got "
                             f"{batch_size!r}")
        if not isinstance(max_len, (int, np.integer)) or not 1 <= max_len <= cfg.block_size:
            raise ValueError(f"GPT.new_kv_cache: max_len must be in [1, block_size = "
                             f"{cfg.block_size}], got {max_len!r}")
        keep = max_len - 1 if keep is None else keep
        if not isinstance(keep, (int, np.integer)) or not 0 <= keep < max_len:
            raise ValueError(f"GPT.new_kv_cache: keep must be in [0, max_len = {max_len}), "
                             f"got {keep!r}")
        heads = cfg.n_head if cfg.layer_heads is None else list(cfg.layer_heads)
        return KVCache(cfg.n_layer, int(batch_size), heads, int(max_len),
                       cfg.head_size, self.dtype, int(keep))

    @no_grad()
    def prefill(self, idx, cache: KVCache) -> np.ndarray:
        """Empty ``cache`` and fill it with the prompt idx (B, T) (its last max_len tokens
        when longer). Returns the logits (B, V) for the token after the prompt."""
        idx = self._check_idx(idx, "prefill")
        if idx.shape[0] != cache.batch_size:
            raise ShapeError(f"GPT.prefill: idx has batch {idx.shape[0]} but the cache was "
                             f"made for {cache.batch_size}")
        idx = idx[:, -cache.max_len:]
        T = idx.shape[1]
        cache.reset()
        x = self._trunk(idx, cache, 0)                               # (B, T, C)
        cache.tokens[:, :T] = idx
        cache.length = T
        return self._head(x[:, -1]).data                             # (B, C) -> (B, V)

    @no_grad()
    def decode_step(self, idx_new, cache: KVCache) -> np.ndarray:
        """Append one token per sequence, idx_new (B,) or (B, 1), at the next absolute
        position; returns the logits (B, V) for the token after it. A full cache is first
        re-prefilled with its last ``cache.keep`` tokens (module docstring)."""
        new = np.asarray(idx_new.data if isinstance(idx_new, Tensor) else idx_new)
        B = cache.batch_size
        if new.shape not in ((B,), (B, 1)) or new.dtype.kind not in "iu":
            raise ShapeError(f"GPT.decode_step: idx_new must be an int array (B,) or (B, 1) "
                             f"with B = {B}, got {new.dtype} {new.shape}")
        new = new.reshape(B, 1)
        if cache.length == cache.max_len:       # full: re-prefill the last keep tokens + new
            cache.refills += 1
            kept = cache.tokens[:, cache.max_len - cache.keep:]
            return self.prefill(np.concatenate([kept, new], axis=1), cache)
        if cache.length == 0:
            return self.prefill(new, cache)
        pos = cache.length
        logits = self._decode_arrays(new[:, 0], cache, pos)          # (B, V)
        cache.tokens[:, pos] = new[:, 0]
        cache.length = pos + 1
        return logits

    @no_grad()
    def extend(self, idx_new, cache: KVCache) -> np.ndarray:
        """Append T tokens per sequence, idx_new (B, T), after whatever ``cache`` holds (a
        chunked prefill into a filled cache); returns every new position's logits (B, T, V):
        row t predicts the token after idx_new[:, t]. T = 1 is ``decode_step``. A chunk that
        does not fit is cut where the cache fills up, and each full cache is re-prefilled
        with its last ``cache.keep`` tokens followed by as many new ones as fit, the rule
        ``decode_step`` follows token by token, so the logits are the same (to rounding) as
        feeding the tokens one ``decode_step`` at a time."""
        new = self._check_idx(idx_new, "extend").astype(np.int64, copy=False)
        B, T = new.shape
        if B != cache.batch_size:
            raise ShapeError(f"GPT.extend: idx_new has batch {B} but the cache was made for "
                             f"{cache.batch_size}")
        if T == 1:
            return self.decode_step(new, cache)[:, None]             # (B, 1, V)
        out, i = [], 0
        while i < T:
            if cache.length == cache.max_len:                        # full: re-prefill
                cache.refills += 1
                keep = cache.keep
                kept = cache.tokens[:, cache.max_len - keep:].copy()  # (B, keep)
                chunk = new[:, i:i + cache.max_len - keep]
                logits = self._fill(np.concatenate([kept, chunk], axis=1), cache, 0)
                out.append(logits[:, keep:])                         # the new tokens' rows
            else:
                chunk = new[:, i:i + cache.max_len - cache.length]
                out.append(self._fill(chunk, cache, cache.length))
            i += chunk.shape[1]
        return np.concatenate(out, axis=1)                           # (B, T, V)

    def _fill(self, idx: np.ndarray, cache: KVCache, pos: int,
              arrays: bool = True) -> np.ndarray:
        """idx (B, T) at absolute positions pos..pos+T-1 (they fit) into the cache; the
        logits (B, T, V) of every one of them. At pos 0 this is a prefill (the training
        kernels through ``_trunk``); after a filled cache, ``_extend_arrays`` (or, with
        ``arrays=False``, ``_trunk``'s Tensors, the same equations)."""
        T = idx.shape[1]
        if pos > 0 and arrays:
            logits = self._extend_arrays(idx, cache, pos)            # (B, T, V)
        else:
            logits = self._head(self._trunk(idx, cache, pos)).data   # (B, T, V)
        cache.tokens[:, pos:pos + T] = idx
        cache.length = pos + T
        return logits

    def _extend_arrays(self, new: np.ndarray, cache: KVCache, pos: int) -> np.ndarray:
        """``_decode_arrays`` for T tokens per sequence, new (B, T) at positions
        pos..pos+T-1 after a filled cache: layernorm, the linears and the mlp kernel on the
        B T rows at once, and ``decode_attention`` once per new query, query t against the
        cache's first pos + t + 1 positions. Returns the logits (B, T, V). Verifying a
        speculative draft of a few tokens this way costs a little more than one decode step,
        where the Tensor path (``_trunk``) costs several."""
        t = self.transformer
        B, T = new.shape
        ln, mlp, attend = self._array_kernels()
        x = self._embed_arrays(new, pos)                             # (B T, C)
        for i, blk in enumerate(t.h):
            a, f = blk.attn, blk.mlp
            H = a.n_head
            qkv = _linear(ln(x, blk.ln_1), a.c_attn)                 # (B T, 3 Ca)
            Ca = qkv.shape[1] // 3
            qkv = qkv.reshape(B, T, 3, H, Ca // H).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, hs)
            cache.k[i][:, :, pos:pos + T] = qkv[1]
            cache.v[i][:, :, pos:pos + T] = qkv[2]
            y = np.empty((B, T, H, Ca // H), x.dtype)                # (B, T, H, hs)
            for j in range(T):                                       # query j: its causal past
                q = np.ascontiguousarray(qkv[0][:, :, j:j + 1])      # (B, H, 1, hs)
                y[:, j] = attend(q, cache.k[i], cache.v[i], pos + j + 1)[0][:, :, 0]
            x += _linear(y.reshape(B * T, Ca), a.c_proj)             # residual, in place
            x += _mlp_arrays(ln(x, blk.ln_2), f, mlp)                 # (B T, C)
        return self._head_arrays(ln(x, t.ln_f)).reshape(B, T, -1)    # (B, T, V)

    @staticmethod
    def truncate(cache: KVCache, length: int) -> None:
        """Roll ``cache`` back to its first ``length`` positions (``KVCache.truncate``):
        afterwards it is as if only those tokens had ever been fed (speculative decoding
        drops the rejected draft tokens this way)."""
        cache.truncate(length)

    def _decode_arrays(self, new: np.ndarray, cache: KVCache, pos: int) -> np.ndarray:
        """One token per sequence through every block, on plain arrays: the same equations
        as ``_trunk`` + ``_head`` for T = 1 (inference only: no dropout, no graph), by the
        kernels' forwards (the current implementation): ``layernorm``, ``mlp`` and
        ``decode_attention`` for the one query against the cache. With B rows of one token
        each, the Numba versions run their rows on this thread (a parallel launch would cost
        more than the rows take). Through Tensors it was ~100 graph ops per token, which
        dominated decoding."""
        cfg, t = self.config, self.transformer
        B, hs = new.shape[0], cfg.head_size
        ln, mlp, attend = self._array_kernels()
        x = self._embed_arrays(new[:, None], pos)                    # (B, C)
        for i, blk in enumerate(t.h):
            a, f = blk.attn, blk.mlp
            H = a.n_head                                             # this layer's heads
            A = H * hs                                               # its width (C unpruned)
            qkv = _linear(ln(x, blk.ln_1), a.c_attn)                 # (B, 3A)
            q = qkv[:, :A].reshape(B, H, 1, hs)
            cache.k[i][:, :, pos] = qkv[:, A:2 * A].reshape(B, H, hs)
            cache.v[i][:, :, pos] = qkv[:, 2 * A:].reshape(B, H, hs)
            y, _ = attend(q, cache.k[i], cache.v[i], pos + 1)        # (B, H, 1, hs)
            x += _linear(y.reshape(B, A), a.c_proj)                  # residual, in place
            x += _mlp_arrays(ln(x, blk.ln_2), f, mlp)                 # (B, C)
        return self._head_arrays(ln(x, t.ln_f))                      # (B, V)

    @staticmethod
    def _array_kernels():
        """The array paths' kernels, by the implementation in effect: ``ln(x, layer)``
        (N, C) -> (N, C), the ``mlp`` forward and the ``decode_attention`` forward."""
        norm = kernels.get("layernorm").forward

        def ln(x, layer):
            return norm(x, layer.weight.data, _data(layer.bias), layer.eps)[0]
        return ln, kernels.get("mlp").forward, kernels.get("decode_attention").forward

    def _embed_arrays(self, new: np.ndarray, pos: int) -> np.ndarray:
        """new (B, T) at absolute positions pos..pos+T-1 -> wte[new] + wpe[pos + t] as a new
        (B T, C) array (through the quantised table when wte is one)."""
        t = self.transformer
        B, T = new.shape
        tok = t.wte.lookup(new) if isinstance(t.wte, QuantEmbedding) else t.wte.weight.data[new]
        x = tok + t.wpe.weight.data[pos:pos + T]                     # (B, T, C)
        return x.reshape(B * T, x.shape[-1])

    def _head_arrays(self, h: np.ndarray) -> np.ndarray:
        """The tied head on plain arrays, h (N, C) -> (N, V): through the quantised table,
        or h @ wte^T for a float one. A model with quantised blocks runs the float product
        on Numba's threads (``qmatmul.rows_dot``: a BLAS call between the quantised products
        fights their thread pool for the cores); a float model through BLAS."""
        wte = self.transformer.wte
        if isinstance(wte, QuantEmbedding):
            return wte.head(h)
        E = wte.weight.data                                          # (V, C)
        if (isinstance(self.transformer.h[0].attn.c_attn, QuantLinear)
                and kernels.default_impl() == "numba"):
            return rows_dot(h, E)
        return h @ E.T

    # ------------------------------------------------------------ decoding protocol
    def start(self, idx):
        """The decoding protocol's first call (``tl.infer`` drives it): a KV cache of
        block_size positions for the prompt idx (B, T), prefilled. Returns ``(cache,
        logits (B, V))`` for the token after the prompt."""
        idx = self._check_idx(idx, "start")
        cache = self.new_kv_cache(idx.shape[0])
        return cache, self.prefill(idx, cache)

    def step(self, state: KVCache, tokens) -> np.ndarray:
        """One more token per sequence, tokens (B,): ``decode_step``; the logits (B, V)."""
        return self.decode_step(tokens, state)

    def reorder(self, state: KVCache, index) -> None:
        """Keep the sequences ``index`` (B,) of the cache, in that order (beam search)."""
        state.reorder(index)


def _data(p):
    return None if p is None else p.data


def _mlp_arrays(h: np.ndarray, f, mlp) -> np.ndarray:
    """A block's MLP on plain arrays, h = ln_2(x) (N, C) -> (N, C): the fused ``mlp``
    kernel for float Linears, else (quantised) the two products with GELU between."""
    if isinstance(f.c_fc, Linear) and isinstance(f.c_proj, Linear):
        return mlp(h, f.c_fc.weight.data, _data(f.c_fc.bias), f.c_proj.weight.data,
                   _data(f.c_proj.bias))[0]
    g = F.gelu(Tensor(_linear(h, f.c_fc)), approximate="tanh")      # (N, Hd)
    return _linear(g.data, f.c_proj)


def _linear(x: np.ndarray, lin) -> np.ndarray:
    if isinstance(lin, QuantLinear):
        return lin.forward_array(x)                                  # the qmatmul kernel
    y = x @ lin.weight.data
    if lin.bias is not None:
        y += lin.bias.data
    return y


__all__ = ["GPT", "GPTConfig", "KVCache"]
