"""Byte-level byte-pair encoding (BPE), trained from scratch.

Legend: V = vocab_size; ids 0..255 are the 256 single bytes; id 256 + r is the r-th merge.

Training (``BPETokenizer.train``), as in GPT-2's tokenizer (Sennrich et al. 2016; Radford et
al. 2019) and Karpathy's minbpe:

  1. Pre-split the text with a regex into words, runs of spaces and runs of punctuation, so
     that a merge never crosses a word boundary. Count each distinct piece once.
  2. Write each distinct piece as its UTF-8 bytes (ids 0..255).
  3. Repeat V - 256 times: find the most frequent adjacent pair of ids (weighted by piece
     counts; ties go to the smallest pair), give it the next id, and replace it everywhere.

Step 3 is incremental: only the pieces that contain the chosen pair are re-counted, and a
heap with lazy deletion finds the next most frequent pair. Training to V=512 on the ~460 KB
default corpus takes about a second.

Encoding splits with the same regex, then merges the pair with the lowest rank until none is
left; results are cached per piece. ``decode(encode(s)) == s`` for every Python str (lone
surrogates included, via UTF-8 "surrogatepass"). Decoding an arbitrary id sequence may give
invalid UTF-8; those bytes become U+FFFD.

Left out on purpose: special tokens, and GPT-2's byte-to-unicode printable remapping (this
tokenizer stores bytes directly, so it is not needed).
"""
from __future__ import annotations

import heapq
import logging
import re
from collections import Counter
from typing import Any, Iterable

from ._base import Tokenizer

__all__ = ["BPETokenizer", "SPLIT_PATTERN"]

log = logging.getLogger(__name__)

# GPT-2's split, written with stdlib ``re``: English contractions, then an optional space and
# a run of letters (underscore counts as a letter, for identifiers), or of digits, or of other
# non-space symbols; then whitespace. ``\s+(?!\S)`` leaves a run's last space to start the next
# word. The classes cover every character, so the pieces always join back to the text.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+"""

_CACHE_LIMIT = 1 << 16          # pieces cached by encode before the cache is cleared


def _to_bytes(piece: str) -> bytes:
    return piece.encode("utf-8", "surrogatepass")


def encode_pieces(pieces, cache: dict, encode_piece) -> list[int]:
    """The ids of each pre-tokenised piece in turn, ``encode_piece(piece)`` memoised in
    ``cache`` (cleared when it reaches ``_CACHE_LIMIT`` pieces)."""
    out: list[int] = []
    for piece in pieces:
        ids = cache.get(piece)
        if ids is None:
            ids = encode_piece(piece)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[piece] = ids
        out.extend(ids)
    return out


def _merge(ids: list, pair: tuple, new_id) -> list:
    """Replace each non-overlapping occurrence of ``pair`` in ``ids`` (left to right) by
    ``new_id`` (ids, or the symbol strings GPT-2's merges work on)."""
    out = []
    i = 0
    n = len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer(Tokenizer):
    """Byte-level BPE. Build with ``BPETokenizer.train(text, vocab_size)``.

    ``merges[r] = (a, b)`` means ids a and b merge into id ``256 + r``.
    """

    type_name = "bpe"

    def __init__(self, merges: Iterable[tuple[int, int]] = (), pattern: str = SPLIT_PATTERN):
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self._regex = re.compile(pattern)
        self.vocab: list[bytes] = [bytes([i]) for i in range(256)]
        for r, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + r and 0 <= b < 256 + r):
                raise ValueError(f"BPETokenizer: merge {r} = ({a}, {b}) refers to an id "
                                 f"not yet defined (must be < {256 + r})")
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self._ranks = {pair: 256 + r for r, pair in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    # ---- training -------------------------------------------------------------------------

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = SPLIT_PATTERN) -> "BPETokenizer":
        """Learn ``vocab_size - 256`` merges from ``text``.

        Stops early (with a logged warning, and a smaller ``vocab_size``) if the text runs out
        of adjacent pairs. Deterministic: the same text gives the same merges.
        """
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.train: expected text as str, got {type(text).__name__}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256:
            raise ValueError(f"BPETokenizer.train: vocab_size must be an int >= 256 "
                             f"(the 256 byte tokens), got {vocab_size!r}")
        piece_counts = Counter(re.findall(pattern, text))       # insertion order: deterministic
        words = [list(_to_bytes(p)) for p in piece_counts]
        counts = list(piece_counts.values())
        merges = _learn_merges(words, counts, vocab_size - 256)
        if len(merges) < vocab_size - 256:
            log.warning("BPETokenizer.train: text has only enough pairs for %d merges; "
                        "vocab_size is %d, not %d", len(merges), 256 + len(merges), vocab_size)
        return cls(merges, pattern)

    # ---- encode / decode ------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.encode: expected a str, got {type(text).__name__}")
        return encode_pieces(self._regex.findall(text), self._cache, self._encode_piece)

    def _encode_piece(self, piece: str) -> list[int]:
        ids = list(_to_bytes(piece))
        ranks = self._ranks
        missing = 1 << 62
        while len(ids) >= 2:
            # the earliest-learned merge present in this piece goes first
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, missing))
            new_id = ranks.get(pair)
            if new_id is None:
                break
            ids = _merge(ids, pair, new_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        vocab = self.vocab
        data = b"".join(vocab[i] for i in self._check_ids(ids))
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace")

    def token_bytes(self, i: int) -> bytes:
        """The bytes that id ``i`` stands for."""
        return self.vocab[self._check_ids([i])[0]]

    # ---- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "pattern": self.pattern,
                "merges": [[a, b] for a, b in self.merges]}

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "BPETokenizer":
        merges = d.get("merges")
        pattern = d.get("pattern", SPLIT_PATTERN)
        if not isinstance(merges, list) or not all(
                isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m)
                for m in merges):
            raise ValueError("BPETokenizer.from_dict: 'merges' must be a list of [int, int] pairs")
        if not isinstance(pattern, str):
            raise ValueError("BPETokenizer.from_dict: 'pattern' must be a str")
        return cls([tuple(m) for m in merges], pattern)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def _pairs(ids: list[int]) -> Counter:
    return Counter(zip(ids, ids[1:]))


def _learn_merges(words: list[list[int]], counts: list[int],
                  n_merges: int) -> list[tuple[int, int]]:
    """Greedy BPE over distinct pieces ``words`` (lists of ids) seen ``counts`` times each."""
    # pass 1: count every adjacent pair, and remember which pieces hold it
    pair_count: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for wi, (w, c) in enumerate(zip(words, counts)):
        for p, k in _pairs(w).items():
            pair_count[p] = pair_count.get(p, 0) + k * c
            where.setdefault(p, set()).add(wi)
    # max-heap of (-count, a, b): most frequent first, ties to the smallest pair.
    # Entries go stale when counts change; a popped entry is used only if still current.
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    # pass 2: merge, re-counting only the pieces that contain the merged pair
    while len(merges) < n_merges and heap:
        neg, a, b = heapq.heappop(heap)
        pair = (a, b)
        if pair_count.get(pair, 0) != -neg:
            continue                                    # stale entry
        new_id = 256 + len(merges)
        merges.append(pair)
        changed: set[tuple[int, int]] = set()
        for wi in where.pop(pair):
            old = words[wi]
            new = _merge(old, pair, new_id)
            if len(new) == len(old):
                continue                                # pair left this piece earlier
            words[wi] = new
            c = counts[wi]
            for p, k in _pairs(old).items():
                pair_count[p] -= k * c
                changed.add(p)
            for p, k in _pairs(new).items():
                pair_count[p] = pair_count.get(p, 0) + k * c
                where.setdefault(p, set()).add(wi)
                changed.add(p)
        for p in changed:
            c = pair_count[p]
            if c > 0:
                heapq.heappush(heap, (-c, p[0], p[1]))
            else:
                del pair_count[p]
    return merges
