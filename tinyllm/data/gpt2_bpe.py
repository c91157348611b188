"""GPT-2's byte-level BPE tokenizer, read from a checkpoint's ``vocab.json`` + ``merges.txt``.

    tok = GPT2Tokenizer.from_dir("path/to/gpt2")     # vocab.json, merges.txt
    ids = tok.encode("Hello world")                  # GPT-2: [15496, 995]
    tok.decode(ids)                                  # 'Hello world'

Encoding is three steps, as in GPT-2 (Radford et al. 2019):

  1. Pre-tokenise: split the text into pieces with GPT-2's pattern
         's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
     (at each position the first alternative that matches, each as long as it can be), so
     that no merge crosses from a word into the space before it, a number or punctuation.
     Python's ``re`` has no ``\\p{L}``, so ``pretokenize`` is a hand-written scanner over four
     character classes: letters (Unicode category L*), numbers (N*), whitespace (the Unicode
     White_Space property, the 25 characters in ``WHITESPACE``: what ``\\s`` means in the
     ``regex`` module that GPT-2 used) and everything else. No new dependency.
  2. Write each piece's UTF-8 bytes as characters through ``bytes_to_unicode``.
  3. BPE: repeatedly merge the adjacent pair of symbols with the lowest rank (its line in
     merges.txt), every occurrence left to right, until no pair has a rank; look each final
     symbol up in vocab.json. Results are cached per piece.

Why the byte-to-unicode map. GPT-2's BPE is byte-level (any byte sequence encodes, no
unknown token) but its vocabulary and merges are stored as text: vocab.json maps token
*strings* to ids and merges.txt is lines "a b" separated by a space. Raw bytes cannot be
stored that way: many are not valid UTF-8 on their own (0x80-0xff), and whitespace and
control bytes (0x00-0x20, 0x7f-0xa0, 0xad soft hyphen) would be invisible or would break the
space-separated merges file. So each of the 256 bytes gets one printable, non-space
character: the 188 bytes that already are printable (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``)
stand for themselves, and the other 68, in byte order, take U+0100, U+0101, ... (so the
space 0x20 is ``Ġ`` U+0120 and the newline 0x0a is ``Ċ`` U+010A: " world" is stored as
"Ġworld"). Decoding maps each character back to its byte, joins them and decodes UTF-8.

Special tokens: ``<|endoftext|>`` (id 50256 in GPT-2) is a vocab entry no merge produces.
``encode(text)`` turns its literal occurrences into that id (``special=False`` encodes them
as ordinary text); ``decode`` writes it back as its text.

``decode(encode(s)) == s`` for every Python str (lone surrogates included, via UTF-8
"surrogatepass", as ``BPETokenizer``). Decoding an arbitrary id sequence may give invalid
UTF-8; those bytes become U+FFFD (errors="replace").
"""
from __future__ import annotations

import json
import os
import unicodedata
from functools import lru_cache
from typing import Any, Iterable

from ._base import Tokenizer
from .bpe import _merge, encode_pieces

__all__ = ["GPT2Tokenizer", "bytes_to_unicode", "pretokenize", "WHITESPACE", "ENDOFTEXT"]

ENDOFTEXT = "<|endoftext|>"

# the Unicode White_Space property (PropList.txt): \s of the `regex` module and of tiktoken.
# Python's str.isspace() differs: it also counts U+001C..U+001F (which are "other" here).
WHITESPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                       "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")

_LETTER, _NUMBER, _SPACE, _OTHER = 0, 1, 2, 3
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")     # after an apostrophe, in order


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte 0..255 to one printable, non-space character (module
    docstring): printable bytes to themselves, the other 68 to U+0100 + k in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xa1, 0xac + 1))
                 + list(range(0xae, 0xff + 1)))
    out, k = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + k)
            k += 1
    return out


@lru_cache(maxsize=1 << 16)
def _cls(ch: str) -> int:
    if ch in WHITESPACE:
        return _SPACE
    cat = unicodedata.category(ch)[0]
    return _LETTER if cat == "L" else _NUMBER if cat == "N" else _OTHER


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokenisation of ``text`` (module docstring); the pieces join to ``text``.

    A hand-written scanner for the pattern, alternative by alternative at position i:
    an apostrophe contraction; an optional " " then a run of one class (letters, numbers,
    or other, i.e. neither whitespace nor letter nor number); else a whitespace run
    [i, k): all of it if it ends the text (``\\s+(?!\\S)``), all but its last character if
    that leaves at least one (the last one then starts the next piece, e.g. " world"),
    else the single character (``\\s+``)."""
    n, i, out = len(text), 0, []
    cls = [_cls(c) for c in text]
    while i < n:
        c = text[i]
        if c == "'":
            hit = next((s for s in _CONTRACTIONS if text.startswith(s, i + 1)), None)
            if hit is not None:
                out.append(text[i:i + 1 + len(hit)])
                i += 1 + len(hit)
                continue
        j = i + 1 if (c == " " and i + 1 < n and cls[i + 1] != _SPACE) else i
        if cls[j] != _SPACE:                # " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+"
            k, kind = j + 1, cls[j]
            while k < n and cls[k] == kind:
                k += 1
            out.append(text[i:k])
            i = k
            continue
        k = i + 1                           # a whitespace run [i, k)
        while k < n and cls[k] == _SPACE:
            k += 1
        if k < n and k - 1 > i:             # \s+(?!\S): leave the last one for the next piece
            k -= 1
        out.append(text[i:k])
        i = k
    return out


class GPT2Tokenizer(Tokenizer):
    """GPT-2's tokenizer from its ``vocab`` ({token string: id}) and ``merges`` (pairs of
    token strings, rank = position). ``GPT2Tokenizer.from_dir(path)`` reads a checkpoint's
    vocab.json and merges.txt."""

    type_name = "gpt2"

    def __init__(self, vocab: dict[str, int], merges: Iterable[tuple[str, str]],
                 special_tokens: Iterable[str] | None = None):
        if not isinstance(vocab, dict) or not vocab:
            raise ValueError("GPT2Tokenizer: vocab must be a non-empty dict {token: id}")
        for t, i in vocab.items():
            if not isinstance(t, str) or type(i) is not int or i < 0:
                raise ValueError(f"GPT2Tokenizer: vocab entry {t!r}: {i!r} is not "
                                 f"str -> non-negative int")
        ids = sorted(vocab.values())
        if ids != list(range(len(ids))):
            dup = next((a for a, b in zip(ids, ids[1:]) if a == b), None)
            what = f"id {dup} is used twice" if dup is not None else "the ids have gaps"
            raise ValueError(f"GPT2Tokenizer: vocab ids must be 0..{len(ids) - 1}, each once; "
                             f"{what}")
        self.vocab = dict(vocab)
        self.id_to_token = [""] * len(ids)
        for t, i in vocab.items():
            self.id_to_token[i] = t
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {ch: b for b, ch in self.byte_encoder.items()}
        specials = ([t for t in (ENDOFTEXT,) if t in vocab] if special_tokens is None
                    else list(special_tokens))
        for t in specials:
            if t not in vocab:
                raise ValueError(f"GPT2Tokenizer: special token {t!r} is not in the vocab")
        self.special_tokens = specials
        missing = [self.byte_encoder[b] for b in range(256) if self.byte_encoder[b] not in vocab]
        if missing:
            raise ValueError(f"GPT2Tokenizer: the vocab lacks {len(missing)} of the 256 "
                             f"single-byte tokens (first {missing[0]!r}); a byte-level vocab "
                             f"needs them all")
        self.merges: list[tuple[str, str]] = []
        for r, m in enumerate(merges):
            if (not isinstance(m, (tuple, list)) or len(m) != 2
                    or not all(isinstance(s, str) and s for s in m)):
                raise ValueError(f"GPT2Tokenizer: merge {r} is {m!r}, not a pair of "
                                 f"non-empty strings")
            a, b = m
            if a + b not in vocab:
                raise ValueError(f"GPT2Tokenizer: merge {r} ({a!r} {b!r}) makes "
                                 f"{a + b!r}, which is not in the vocab")
            self.merges.append((a, b))
        self._ranks: dict[tuple[str, str], int] = {}
        for r, pair in enumerate(self.merges):
            self._ranks.setdefault(pair, r)          # a repeated line keeps its first rank
        self._token_bytes: list[bytes | None] = [None] * len(ids)
        self._cache: dict[str, list[int]] = {}

    # ---- reading a checkpoint's files -------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "GPT2Tokenizer":
        """Read ``path/vocab.json`` and ``path/merges.txt`` (its ``#version`` line and blank
        lines skipped). Errors name the file and line."""
        path = os.fspath(path)
        vpath, mpath = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        try:
            with open(vpath, "rb") as f:
                vocab = json.loads(f.read().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"GPT2Tokenizer: {vpath} is unreadable or not JSON "
                             f"({type(e).__name__}: {e})") from None
        try:
            with open(mpath, "rb") as f:
                lines = f.read().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"GPT2Tokenizer: {mpath} is unreadable or not UTF-8 "
                             f"({type(e).__name__}: {e})") from None
        merges = []
        for ln, line in enumerate(lines, 1):
            line = line.rstrip("\r")
            if not line or (ln == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"GPT2Tokenizer: {mpath} line {ln} is {line!r}, not two "
                                 f"tokens separated by one space")
            merges.append((parts[0], parts[1]))
        try:
            return cls(vocab, merges)
        except ValueError as e:
            raise ValueError(f"{e} (reading {path})") from None

    # ---- encode / decode --------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    @property
    def eot_token(self) -> int | None:
        """The id of ``<|endoftext|>``, or None if the vocab has none."""
        return self.vocab.get(ENDOFTEXT)

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``. With ``special`` (the default), literal special tokens
        (``<|endoftext|>``) become their ids; else they are encoded as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"GPT2Tokenizer.encode: expected a str, got {type(text).__name__}")
        if not special or not self.special_tokens:
            return self._encode_ordinary(text)
        out: list[int] = []
        start = 0
        while True:                             # split at the earliest special token
            hits = [(text.find(t, start), -len(t), t) for t in self.special_tokens]
            hits = [h for h in hits if h[0] >= 0]
            if not hits:
                break
            at, _, tok = min(hits)
            out += self._encode_ordinary(text[start:at])
            out.append(self.vocab[tok])
            start = at + len(tok)
        return out + self._encode_ordinary(text[start:])

    def _encode_ordinary(self, text: str) -> list[int]:
        return encode_pieces(pretokenize(text), self._cache, self._encode_piece)

    def _encode_piece(self, piece: str) -> list[int]:
        enc = self.byte_encoder
        syms = [enc[b] for b in piece.encode("utf-8", "surrogatepass")]
        ranks, missing = self._ranks, 1 << 62
        while len(syms) >= 2:
            # the lowest-ranked pair present, then every occurrence of it, left to right
            pair = min(zip(syms, syms[1:]), key=lambda p: ranks.get(p, missing))
            if pair not in ranks:
                break
            syms = _merge(syms, pair, pair[0] + pair[1])
        vocab = self.vocab
        return [vocab[s] for s in syms]     # every single byte and every merge is in vocab

    def token_bytes(self, i: int) -> bytes:
        """The bytes that id ``i`` stands for (a special token: its UTF-8 text)."""
        return self._bytes_of(self._check_ids([i])[0])

    def _bytes_of(self, i: int) -> bytes:
        b = self._token_bytes[i]
        if b is None:
            t = self.id_to_token[i]
            dec = self.byte_decoder
            if t in self.special_tokens or not all(ch in dec for ch in t):
                b = t.encode("utf-8", "surrogatepass")   # a token outside the byte alphabet
            else:
                b = bytes(dec[ch] for ch in t)
            self._token_bytes[i] = b
        return b

    def decode(self, ids: Iterable[int]) -> str:
        get = self._bytes_of                    # the ids are checked once, not one by one
        data = b"".join([get(i) for i in self._check_ids(ids)])
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace")

    # ---- serialisation ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "vocab": dict(self.vocab),
                "merges": [[a, b] for a, b in self.merges],
                "special_tokens": list(self.special_tokens)}

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "GPT2Tokenizer":
        vocab, merges = d.get("vocab"), d.get("merges")
        specials = d.get("special_tokens")
        if not isinstance(merges, list):
            raise ValueError("GPT2Tokenizer.from_dict: 'merges' must be a list of pairs")
        if specials is not None and not (isinstance(specials, list)
                                         and all(isinstance(s, str) for s in specials)):
            raise ValueError("GPT2Tokenizer.from_dict: 'special_tokens' must be a list of str")
        return cls(vocab, [tuple(m) if isinstance(m, list) else m for m in merges], specials)

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"
