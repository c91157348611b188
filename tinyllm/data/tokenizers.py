"""Tokenizers: text <-> integer ids.

``CharTokenizer`` maps each distinct character of a training text to one id (sorted order).
``BPETokenizer`` (in ``bpe.py``) is byte-level byte-pair encoding trained from scratch.
``load_tokenizer`` rebuilds either one from its JSON form (the ``"type"`` field says which).

All tokenizers have ``vocab_size``, ``encode(str) -> list[int]``, ``decode(ids) -> str``,
``to_dict()/from_dict()`` (plain JSON data) and ``save(path)/load(path)`` (atomic JSON files).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from ._base import Tokenizer, UnknownTokenError
from ._jsonio import read_json
from .bpe import BPETokenizer
from .gpt2_bpe import GPT2Tokenizer

__all__ = ["Tokenizer", "CharTokenizer", "BPETokenizer", "UnknownTokenError", "load_tokenizer"]


class CharTokenizer(Tokenizer):
    """One id per character: the sorted unique characters of the training text.

    >>> tok = CharTokenizer("hello")
    >>> tok.encode("hole"), tok.decode([1, 3])
    ([1, 3, 2, 0], 'ho')

    Characters not in the text raise ``UnknownTokenError`` (a ``ValueError``) on ``encode``.
    """

    type_name = "char"

    def __init__(self, text: str):
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer: expected a str, got {type(text).__name__}")
        if not text:
            raise ValueError("CharTokenizer: cannot build a vocabulary from empty text")
        self.chars: list[str] = sorted(set(text))
        self.stoi: dict[str, int] = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Same as ``CharTokenizer(text)``."""
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[ch] for ch in text]
        except KeyError:
            unknown = sorted({ch for ch in text if ch not in stoi})
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            more = "" if len(unknown) <= 10 else ", ..."
            raise UnknownTokenError(f"CharTokenizer.encode: {len(unknown)} unknown "
                                    f"character(s) not in the vocabulary: {shown}{more}") from None

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[i] for i in self._check_ids(ids))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "chars": list(self.chars)}

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "CharTokenizer":
        chars = d.get("chars")
        if (not isinstance(chars, list) or not chars
                or not all(isinstance(c, str) and len(c) == 1 for c in chars)
                or len(set(chars)) != len(chars)):
            raise ValueError("CharTokenizer.from_dict: 'chars' must be a non-empty list of "
                             "distinct single characters")
        tok = cls.__new__(cls)
        tok.chars = list(chars)         # kept in stored order, so ids never shift
        tok.stoi = {ch: i for i, ch in enumerate(tok.chars)}
        return tok

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


_TYPES: dict[str, type[Tokenizer]] = {CharTokenizer.type_name: CharTokenizer,
                                      BPETokenizer.type_name: BPETokenizer,
                                      GPT2Tokenizer.type_name: GPT2Tokenizer}


def load_tokenizer(path_or_dict: str | os.PathLike | dict[str, Any]) -> Tokenizer:
    """A tokenizer from a JSON file path or a ``to_dict()`` dict, of whichever ``"type"``."""
    d = path_or_dict if isinstance(path_or_dict, dict) else read_json(path_or_dict)
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in _TYPES:
        raise ValueError(f"load_tokenizer: unknown tokenizer type {kind!r}; "
                         f"expected one of {sorted(_TYPES)}")
    return _TYPES[kind].from_dict(d)
