"""Text corpora and random training batches.

Legend: B = batch size, T = block size (context length), N = number of token ids.

``load_corpus()`` with no path gives the embedded default corpus: the English documentation
that CPython ships in ``pydoc_data.topics`` (about 460 KB; no download; the same text on every
run of one Python version). ``train_val_split`` cuts off the last 10% for validation.
``get_batch`` draws random windows of T+1 ids, as nanoGPT's ``train.py`` does.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence, TypeVar

import numpy as np

__all__ = ["load_corpus", "default_corpus", "train_val_split", "encode_text", "get_batch"]

S = TypeVar("S", str, np.ndarray, Sequence)


@lru_cache(maxsize=1)
def default_corpus() -> str:
    """The values of ``pydoc_data.topics.topics`` joined in sorted-key order (~460 KB)."""
    from pydoc_data.topics import topics         # stdlib, imported only when asked for
    return "".join(topics[k] for k in sorted(topics))


def load_corpus(path: str | os.PathLike | None = None) -> str:
    """The text of a UTF-8 file, or the embedded default corpus when ``path`` is None.

    Raises FileNotFoundError for a missing path, ValueError for a folder, an empty file or
    a file that is not UTF-8; each message names the path.
    """
    if path is None:
        return default_corpus()
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"load_corpus: file not found: {name!r}")
    if os.path.isdir(name):
        raise ValueError(f"load_corpus: {name!r} is a folder, expected a UTF-8 text file")
    with open(name, "rb") as f:
        raw = f.read()
    if not raw:
        raise ValueError(f"load_corpus: file {name!r} is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"load_corpus: file {name!r} is not UTF-8 text "
                         f"(byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def train_val_split(data: S, frac: float = 0.9) -> tuple[S, S]:
    """Split a string or 1-D id array into (first ``frac``, rest). Both parts are non-empty."""
    if not 0.0 < frac < 1.0:
        raise ValueError(f"train_val_split: frac must be in (0, 1), got {frac!r}")
    n = len(data)
    k = int(n * frac)
    if k == 0 or k == n:
        raise ValueError(f"train_val_split: {n} item(s) cannot be split at frac={frac} "
                         f"into two non-empty parts")
    return data[:k], data[k:]


def encode_text(text: str, tokenizer) -> np.ndarray:
    """``tokenizer.encode(text)`` as a 1-D int64 array of shape (N,)."""
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def get_batch(data: np.ndarray, batch_size: int, block_size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random windows of ``data``: ``x`` (B, T) int64 and ``y`` (B, T) int64 = ``x`` shifted
    one step left, so ``y[b, t]`` is the id that follows ``x[b, t]``.

    Window starts are uniform over all N - T valid positions, drawn from ``rng``: the same
    Generator state gives the same batch.
    """
    data = np.asarray(data)
    if data.ndim != 1 or not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"get_batch: data must be a 1-D integer array, got shape {data.shape} "
                         f"dtype {data.dtype}")
    for name, v in (("batch_size", batch_size), ("block_size", block_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"get_batch: {name} must be a positive int, got {v!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"get_batch: rng must be a numpy.random.Generator, got "
                        f"{type(rng).__name__}")
    n = data.shape[0]
    if n < block_size + 1:
        raise ValueError(f"get_batch: data has {n} ids, need at least block_size + 1 = "
                         f"{block_size + 1}")
    starts = rng.integers(0, n - block_size, size=batch_size)          # (B,)
    idx = starts[:, None] + np.arange(block_size)[None, :]             # (B, T)
    x = data[idx].astype(np.int64)                                     # (B, T)
    y = data[idx + 1].astype(np.int64)                                 # (B, T)
    return x, y
