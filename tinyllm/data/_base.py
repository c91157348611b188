"""What every tokenizer shares: the JSON save/load round trip and id checking."""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from ._jsonio import read_json, write_json_atomic


class UnknownTokenError(ValueError):
    """``encode`` met text that the tokenizer's vocabulary cannot represent."""


class Tokenizer:
    """Base class. Subclasses set ``type_name`` and implement ``vocab_size``, ``encode``,
    ``decode``, ``to_dict`` and ``_from_dict``."""

    type_name = "base"

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "Tokenizer":
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tokenizer":
        """Rebuild a tokenizer from ``to_dict()`` output; the ``"type"`` field must match."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}.from_dict: expected a dict, got {type(d).__name__}")
        if d.get("type") != cls.type_name:
            raise ValueError(f"{cls.__name__}.from_dict: type is {d.get('type')!r}, "
                             f"expected {cls.type_name!r}")
        return cls._from_dict(d)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON to ``path``, atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a tokenizer JSON file written by ``save``."""
        return cls.from_dict(read_json(path))

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as a 1-D int64 array, the form ``get_batch`` takes."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        """Ids as a list of Python ints, each in [0, vocab_size); else a ValueError."""
        arr = np.asarray(ids if not isinstance(ids, (int, np.integer)) else [ids])
        if arr.size == 0:
            return []
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{type(self).__name__}.decode: expected a 1-D sequence of ints, "
                             f"got shape {arr.shape} dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            raise ValueError(f"{type(self).__name__}.decode: {int(bad.sum())} id(s) outside "
                             f"[0, {self.vocab_size}), first {int(arr[bad][0])}")
        return arr.tolist()
