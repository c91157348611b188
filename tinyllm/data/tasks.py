"""Synthetic sequence-to-sequence tasks for the document's attention RNN, written as one
autoregressive token stream so a next-token model can learn them.

Legend: n = number of examples, L = length of one example's symbol sequence,
T = 2 * max_len + 2 = the padded row length of ``inputs`` and ``targets``.

One reversal example with symbols ``a b c`` (L = 3) is the stream

    <bos> a b c <sep> c b a <eos>              (2L + 3 tokens)

``inputs`` is the stream without its last token and ``targets`` the stream without its first,
so ``targets[t]`` is the token that follows ``inputs[t]``. Targets are ``IGNORE_INDEX`` (-100)
on the prompt (everything up to and excluding the answer) and on padding, so a cross-entropy
with ``ignore_index=-100`` scores only the answer ``c b a <eos>``:

    position   0      1      2      3      4      5      6      7      8 ... T-1
    inputs     <bos>  a      b      c      <sep>  c      b      a      <pad> ...
    targets    -100   -100   -100   -100   c      b      a      <eos>  -100 ...
                                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^ answer_slice(3)
                                                                        = slice(4, 8)

``copy_task`` is the same with the answer equal to the prompt. Token ids: ``<pad>`` 0,
``<bos>`` 1, ``<sep>`` 2, ``<eos>`` 3, then symbol ``s`` (0 <= s < n_symbols) is id 4 + s.

Held-out data: every sequence belongs to exactly one of "train" and "test", decided by a hash
of its symbols (about ``held_out_frac`` of all sequences are "test"). So a test split never
shares a sequence with any train split, whatever the seeds.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["PAD", "BOS", "SEP", "EOS", "IGNORE_INDEX", "SeqTask", "TaskData",
           "reversal_task", "copy_task", "exact_match", "masked_exact_match"]

PAD, BOS, SEP, EOS = 0, 1, 2, 3
N_SPECIAL = 4
SPECIAL_NAMES = ("<pad>", "<bos>", "<sep>", "<eos>")
IGNORE_INDEX = -100
_KINDS = ("reversal", "copy")
_CHUNK = 256                    # sequences drawn per Generator call; fixed, for determinism


@dataclass(frozen=True)
class TaskData:
    """A batch of padded examples from ``SeqTask.make_split``."""
    inputs: np.ndarray          # (n, T) int64, padded with PAD
    targets: np.ndarray         # (n, T) int64, IGNORE_INDEX outside the answer
    lengths: np.ndarray         # (n,) int64, L of each example
    sep_pos: np.ndarray         # (n,) int64, column of <sep> in inputs (= L + 1)
    sequences: tuple            # n tuples of raw symbols (0 <= s < n_symbols)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def loss_mask(self) -> np.ndarray:
        """(n, T) bool: where the targets count in the loss."""
        return self.targets != IGNORE_INDEX


@dataclass(frozen=True)
class SeqTask:
    """A reversal or copy task over ``n_symbols`` symbols, lengths ``min_len..max_len``."""
    kind: str = "reversal"      # "reversal" or "copy"
    n_symbols: int = 10         # alphabet size
    min_len: int = 5            # shortest symbol sequence (inclusive)
    max_len: int = 10           # longest symbol sequence (inclusive)
    held_out_frac: float = 0.1  # share of all sequences that belong to the test split

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"SeqTask: kind must be one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.n_symbols, int) or self.n_symbols < 1:
            raise ValueError(f"SeqTask: n_symbols must be an int >= 1, got {self.n_symbols!r}")
        if not (isinstance(self.min_len, int) and isinstance(self.max_len, int)
                and 1 <= self.min_len <= self.max_len):
            raise ValueError(f"SeqTask: need ints 1 <= min_len <= max_len, got "
                             f"min_len={self.min_len!r}, max_len={self.max_len!r}")
        if not 0.0 < self.held_out_frac < 1.0:
            raise ValueError(f"SeqTask: held_out_frac must be in (0, 1), "
                             f"got {self.held_out_frac!r}")

    # ---- vocabulary -----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + self.n_symbols

    @property
    def block_size(self) -> int:
        """T, the padded length of each ``inputs`` / ``targets`` row."""
        return 2 * self.max_len + 2

    @property
    def token_names(self) -> list[str]:
        """Name of each id: the four special tokens, then "a", "b", ... (or "s0", "s1", ...)."""
        if self.n_symbols <= 26:
            symbols = [chr(ord("a") + i) for i in range(self.n_symbols)]
        else:
            symbols = [f"s{i}" for i in range(self.n_symbols)]
        return list(SPECIAL_NAMES) + symbols

    def decode(self, ids: Sequence[int]) -> str:
        """Ids as space-separated token names; PAD and IGNORE_INDEX are skipped."""
        names = self.token_names
        return " ".join(names[int(i)] for i in ids if int(i) not in (PAD, IGNORE_INDEX))

    # ---- one example ----------------------------------------------------------------------

    def _check_symbols(self, symbols: Sequence[int]) -> list[int]:
        s = [int(x) for x in symbols]
        if not s or any(not 0 <= x < self.n_symbols for x in s):
            raise ValueError(f"SeqTask: symbols must be a non-empty sequence of ints in "
                             f"[0, {self.n_symbols}), got {list(symbols)!r}")
        return s

    def prompt(self, symbols: Sequence[int]) -> list[int]:
        """``<bos> symbols <sep>`` as ids: what a model is given before it answers."""
        s = self._check_symbols(symbols)
        return [BOS] + [N_SPECIAL + x for x in s] + [SEP]

    def answer(self, symbols: Sequence[int]) -> list[int]:
        """The ids a model must produce after the prompt: the (reversed) symbols and <eos>."""
        s = self._check_symbols(symbols)
        out = s[::-1] if self.kind == "reversal" else s
        return [N_SPECIAL + x for x in out] + [EOS]

    def encode_example(self, symbols: Sequence[int]) -> list[int]:
        """The whole stream ``prompt + answer`` (2L + 3 ids)."""
        return self.prompt(symbols) + self.answer(symbols)

    @staticmethod
    def answer_slice(length: int) -> slice:
        """Columns of an ``inputs``/``targets`` row whose targets are the answer, for an
        example of L = ``length`` symbols: ``slice(L + 1, 2L + 2)`` (L + 1 columns)."""
        return slice(length + 1, 2 * length + 2)

    def is_held_out(self, symbols: Sequence[int]) -> bool:
        """True if this sequence belongs to the test split (a fixed hash of its symbols)."""
        key = np.asarray(self._check_symbols(symbols), dtype="<i8").tobytes()
        return zlib.crc32(key) < self.held_out_frac * 2 ** 32

    # ---- whole splits ---------------------------------------------------------------------

    def make_split(self, n: int, seed: int, split: str = "train") -> TaskData:
        """``n`` random examples of ``split`` ("train" or "test"), the same for the same seed.

        Lengths are uniform in [min_len, max_len], symbols uniform over the alphabet; a drawn
        sequence is kept only if it belongs to ``split`` (see ``is_held_out``). Sequences may
        repeat within a split.
        """
        if split not in ("train", "test"):
            raise ValueError(f"SeqTask.make_split: split must be 'train' or 'test', got {split!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"SeqTask.make_split: n must be an int >= 0, got {n!r}")
        sequences = self._draw(int(n), np.random.default_rng(seed), split == "test")
        return self._pad(sequences)

    def make_splits(self, n_train: int, n_test: int, seed: int = 0) -> tuple[TaskData, TaskData]:
        """``(make_split(n_train, seed, "train"), make_split(n_test, seed, "test"))``."""
        return self.make_split(n_train, seed, "train"), self.make_split(n_test, seed, "test")

    def _draw(self, n: int, rng: np.random.Generator, held_out: bool) -> list[tuple]:
        out: list[tuple] = []
        max_draws = 1000 * n + 10_000        # a split that is (nearly) empty stops here
        drawn = 0
        while len(out) < n:
            if drawn >= max_draws:
                raise ValueError(f"SeqTask.make_split: found only {len(out)} of {n} "
                                 f"{'test' if held_out else 'train'} sequences in {drawn} "
                                 f"draws; the task {self} has too few distinct sequences")
            lengths = rng.integers(self.min_len, self.max_len + 1, size=_CHUNK)   # (CHUNK,)
            symbols = rng.integers(0, self.n_symbols, size=(_CHUNK, self.max_len))
            for L, row in zip(lengths.tolist(), symbols.tolist()):
                seq = tuple(row[:L])
                if self.is_held_out(seq) == held_out:
                    out.append(seq)
                    if len(out) == n:
                        break
            drawn += _CHUNK
        return out

    def _pad(self, sequences: list[tuple]) -> TaskData:
        n, T = len(sequences), self.block_size
        inputs = np.full((n, T), PAD, dtype=np.int64)             # (n, T)
        targets = np.full((n, T), IGNORE_INDEX, dtype=np.int64)   # (n, T)
        lengths = np.array([len(s) for s in sequences], dtype=np.int64).reshape(n)
        for i, seq in enumerate(sequences):
            stream = self.encode_example(seq)                     # (2L + 3,)
            L = len(seq)
            inputs[i, : 2 * L + 2] = stream[:-1]
            ans = self.answer_slice(L)
            targets[i, ans] = stream[ans.start + 1: ans.stop + 1]
        return TaskData(inputs, targets, lengths, lengths + 1, tuple(sequences))


def reversal_task(n_symbols: int = 10, min_len: int = 5, max_len: int = 10,
                  held_out_frac: float = 0.1) -> SeqTask:
    """Reverse a sequence: ``<bos> a b c <sep> c b a <eos>``."""
    return SeqTask("reversal", n_symbols, min_len, max_len, held_out_frac)


def copy_task(n_symbols: int = 10, min_len: int = 5, max_len: int = 10,
              held_out_frac: float = 0.1) -> SeqTask:
    """Copy a sequence: ``<bos> a b c <sep> a b c <eos>``."""
    return SeqTask("copy", n_symbols, min_len, max_len, held_out_frac)


def exact_match(pred_answer_ids, true_answer_ids) -> np.ndarray:
    """(n,) bool: does each predicted answer equal the true one exactly (same length too)?

    Both arguments are n sequences of ids (lists, 1-D arrays or rows of a 2-D array).
    """
    if len(pred_answer_ids) != len(true_answer_ids):
        raise ValueError(f"exact_match: {len(pred_answer_ids)} predictions but "
                         f"{len(true_answer_ids)} true answers")
    return np.array([np.array_equal(np.asarray(p), np.asarray(t))
                     for p, t in zip(pred_answer_ids, true_answer_ids)], dtype=bool)


def masked_exact_match(pred_ids: np.ndarray, targets: np.ndarray,
                       ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(n,) bool: is ``pred_ids`` right at every position where ``targets`` is not ignored?

    For teacher-forced evaluation: ``pred_ids = logits.argmax(-1)``, both (n, T).
    """
    pred_ids, targets = np.asarray(pred_ids), np.asarray(targets)
    if pred_ids.shape != targets.shape or pred_ids.ndim != 2:
        raise ValueError(f"masked_exact_match: pred_ids {pred_ids.shape} and targets "
                         f"{targets.shape} must be the same 2-D shape (n, T)")
    ok = (pred_ids == targets) | (targets == ignore_index)    # (n, T)
    return ok.all(axis=1)
