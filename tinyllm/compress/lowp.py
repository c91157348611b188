"""fp16 / bf16 weight storage as a compression method: every parameter stored as the 16 bits
of its round-to-nearest-even value (``tl.precision``), computed in float32 after loading.

A 16-bit checkpoint holds, under each parameter's own name, a uint16 array of the format's
bit patterns (2 bytes a weight instead of 4); ``meta.json``'s ``compressed`` entry says
``{"method": "bf16" | "fp16", "format": ...}``. Loading widens the bits back to float32
exactly (every bf16 and fp16 value is a float32 value), so the loaded model *is* the rounded
model: the storage error is the whole of the difference.
"""
from __future__ import annotations

import numpy as np

from .. import precision
from ..models import GPT
from ..train.checkpoint import CheckpointError

FORMATS = ("bf16", "fp16")


def lowp_copy(model: GPT, fmt: str) -> GPT:
    """A float copy of ``model`` whose every parameter holds its ``fmt`` value (RNE)."""
    out = GPT(model.config, dtype=model.dtype)
    out.load_state_dict({k: precision.round_to(v.astype(np.float32), fmt).astype(model.dtype)
                         for k, v in model.state_dict().items()})
    out.eval()
    return out


def lowp_arrays(model: GPT, fmt: str) -> dict:
    """{name: uint16 bit patterns} of every parameter rounded to ``fmt``."""
    to_bits = precision.f32_to_bf16_bits if fmt == "bf16" else precision.f32_to_fp16_bits
    return {k: to_bits(v.astype(np.float32)) for k, v in model.state_dict().items()}


def load_lowp(model: GPT, arrays: dict, info: dict, where: str = "checkpoint") -> GPT:
    """Load a 16-bit checkpoint's arrays into the float ``model`` built from its settings."""
    fmt = info.get("format")
    if fmt not in FORMATS:
        raise CheckpointError(f"{where}: meta.json's 'compressed' entry names format "
                              f"{fmt!r}; expected one of {', '.join(FORMATS)}")
    widen = precision.bf16_bits_to_f32 if fmt == "bf16" else precision.fp16_bits_to_f32
    state = {}
    for k, a in arrays.items():
        if a.dtype != np.uint16:
            raise CheckpointError(f"{where}: array {k!r} is {a.dtype}; a {fmt} checkpoint "
                                  f"stores uint16 bit patterns")
        state[k] = widen(a).astype(model.dtype)
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    return model


__all__ = ["FORMATS", "lowp_copy", "lowp_arrays", "load_lowp"]
