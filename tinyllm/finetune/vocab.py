"""The encoder's character vocabulary: five special tokens, then the corpus's characters.

    id 0 [PAD]   padding (never attended to: the key mask is False there)
    id 1 [MASK]  a masked position in MLM pretraining
    id 2 [SEP]   between the question and the context
    id 3 [CLS]   the first token of every QA input
    id 4 [UNK]   a character the corpus never showed
    id 5 ...     the corpus's characters, sorted

A QA input is ``[CLS] question [SEP] context`` with token types 0 for ``[CLS] question
[SEP]`` and 1 for the context, so the context's character i sits at position
``len(question) + 2 + i``.
"""
from __future__ import annotations

import numpy as np

SPECIALS = ("[PAD]", "[MASK]", "[SEP]", "[CLS]", "[UNK]")
PAD, MASK, SEP, CLS, UNK = range(5)


class EncoderVocab:
    """``EncoderVocab(chars)``: ids for the specials and for each character of ``chars``."""

    def __init__(self, chars):
        chars = sorted(set(chars))
        if not chars:
            raise ValueError("EncoderVocab: the character set is empty")
        self.chars = chars
        self._id = {c: i + len(SPECIALS) for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "EncoderVocab":
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    n_special = len(SPECIALS)

    def encode(self, text: str) -> np.ndarray:
        """Character ids (N,) int64; an unknown character becomes [UNK]."""
        return np.fromiter((self._id.get(c, UNK) for c in text), np.int64, len(text))

    def decode(self, ids) -> str:
        out = []
        for i in np.asarray(ids).reshape(-1):
            i = int(i)
            out.append(SPECIALS[i] if i < len(SPECIALS) else self.chars[i - len(SPECIALS)])
        return "".join(out)

    def unknown(self, text: str) -> str:
        """The characters of ``text`` this vocabulary lacks (sorted, once each)."""
        return "".join(sorted({c for c in text if c not in self._id}))

    def to_dict(self) -> dict:
        return {"type": "encoder-char", "specials": list(SPECIALS), "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderVocab":
        if d.get("type") != "encoder-char" or list(d.get("specials", [])) != list(SPECIALS):
            raise ValueError(f"EncoderVocab: not an encoder vocabulary: {str(d)[:80]}")
        return cls(d["chars"])

    def __repr__(self):
        return f"EncoderVocab({self.vocab_size} ids: {len(SPECIALS)} specials + " \
               f"{len(self.chars)} characters)"


__all__ = ["EncoderVocab", "SPECIALS", "PAD", "MASK", "SEP", "CLS", "UNK"]
