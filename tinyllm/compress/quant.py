"""Weight quantisation as a compression method: the registry entries, and the arrays and
metadata of a quantised checkpoint (see the package docstring for the format)."""
from __future__ import annotations

import numpy as np

from ..models import GPT
from ..nn.quant import SCHEMES, QuantEmbedding, QuantLinear, model_nbytes, quantize_model
from ..train.checkpoint import CheckpointError


def _quant_method(name):
    def apply(model, keep_embeddings=True):
        return quantize_model(model, name, keep_embeddings)
    apply.__name__ = f"quantise_{name.replace('-', '_')}"
    apply.__doc__ = f"A copy with weights quantised by scheme {name} {SCHEMES[name]}."
    return apply


METHODS = {name: _quant_method(name) for name in SCHEMES}


def _lowp_method(fmt):
    def apply(model, keep_embeddings=True):
        from .lowp import lowp_copy
        return lowp_copy(model, fmt)
    apply.__name__ = f"store_{fmt}"
    apply.__doc__ = f"A copy with every weight rounded to {fmt} (stored as 16 bits)."
    return apply


METHODS.update({fmt: _lowp_method(fmt) for fmt in ("bf16", "fp16")})


def _method(method):
    if method not in METHODS:
        raise ValueError(f"compress: method must be one of {', '.join(METHODS)}, got "
                         f"{method!r}")
    return METHODS[method]


def _quant_modules(model):
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (QuantLinear, QuantEmbedding))]


def compress(model, method: str, keep_embeddings: bool = True):
    """A compressed copy of ``model`` (a float GPT) by ``method`` (a key of ``METHODS``)."""
    fn = _method(method)
    if not isinstance(model, GPT):
        raise TypeError(f"compress: expected a tl.models.GPT, got {type(model).__name__}")
    if _quant_modules(model):
        raise ValueError("compress: the model is already quantised; compress the float one")
    return fn(model, keep_embeddings=bool(keep_embeddings))


def quantised_arrays(model) -> dict:
    """Every array a quantised model stores, by name: its float parameters and each
    quantised module's ``P.qweight`` and ``P.scales``."""
    arrays = {name: np.asarray(a) for name, a in model.state_dict().items()}
    for name, m in _quant_modules(model):
        for k, a in m.quant_arrays().items():
            arrays[f"{name}.{k}"] = a
    return arrays


def stored_nbytes(model) -> int:
    """Bytes of the arrays a (quantised or float) model stores."""
    return model_nbytes(model)


def save_compressed(model, tokenizer, path: str, method: str, keep_embeddings: bool = True,
                    base_meta: dict | None = None) -> str:
    """Compress a float GPT by ``method`` and write it to the checkpoint folder ``path``
    (atomically; an earlier checkpoint there is replaced, any other non-empty folder
    refused). ``base_meta`` (the source checkpoint's meta.json) keeps its text, step and
    settings; by default they are made as ``tl.save`` makes them. Returns the folder."""
    from ..train.persist import _gpt_meta, write_model_folder
    qmodel = compress(model, method, keep_embeddings)
    lowp = method in ("bf16", "fp16")
    meta = _gpt_meta(model, tokenizer)
    if base_meta is not None:
        keep = {k: v for k, v in base_meta.items() if k not in ("format", "version", "sha256",
                                                                "compressed")}
        meta = dict(keep, model=meta["model"], tokenizer=meta["tokenizer"])
    if lowp:
        from .lowp import lowp_arrays
        arrays = lowp_arrays(model, method)
        meta["compressed"] = {"method": method, "format": method,
                              "nbytes": int(sum(a.nbytes for a in arrays.values())),
                              "float_nbytes": model_nbytes(model)}
    else:
        arrays = quantised_arrays(qmodel)
        meta["compressed"] = {"method": method, "scheme": list(SCHEMES[method]),
                              "keep_embeddings": bool(keep_embeddings),
                              "quantised": [n for n, _ in _quant_modules(qmodel)],
                              "nbytes": stored_nbytes(qmodel),
                              "float_nbytes": model_nbytes(model)}
    meta.setdefault("saved_by", "tinyllm compress")
    return write_model_folder(path, arrays, meta, "save_compressed")


def _array(arrays, name, kinds, where):
    if name not in arrays:
        raise CheckpointError(f"{where}: quantised checkpoint lacks the array {name!r}")
    a = arrays[name]
    if a.ndim != 2 or a.dtype not in kinds:
        raise CheckpointError(f"{where}: array {name!r} is {a.dtype} {a.shape}; expected a "
                              f"2-D {' or '.join(map(str, kinds))} array")
    return a


def load_quantised(model, arrays: dict, info: dict, where: str = "checkpoint"):
    """Swap the quantised modules named in ``info`` (meta.json's ``compressed``) into the
    float ``model`` built from the settings, then load the float parameters. Returns it."""
    from ..nn import Embedding, Linear
    from ..nn.quant import scheme_of
    try:
        scheme = scheme_of(tuple(info["scheme"]))
        names = list(info["quantised"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: meta.json's 'compressed' entry is malformed "
                              f"({type(e).__name__}: {e})") from None
    arrays = dict(arrays)
    codes = (np.dtype(np.int8),) if scheme[0] == 8 else (np.dtype(np.uint8),)
    floats = (np.dtype(model.dtype),)
    for name in names:
        try:
            m = model.get_submodule(name)
        except KeyError:
            raise CheckpointError(f"{where}: quantised module {name!r} is not in the "
                                  f"model") from None
        q = _array(arrays, f"{name}.qweight", codes, where)
        s = _array(arrays, f"{name}.scales", floats, where)
        del arrays[f"{name}.qweight"], arrays[f"{name}.scales"]
        try:
            if isinstance(m, Linear):
                bias = None if m.bias is None else m.bias.data
                new = QuantLinear.from_arrays(q, s, m.in_features, m.out_features, scheme, bias)
            elif isinstance(m, Embedding):
                new = QuantEmbedding.from_arrays(q, s, m.num_embeddings, m.embedding_dim,
                                                 scheme)
            else:
                raise CheckpointError(f"{where}: {name!r} is a {type(m).__name__}, which is "
                                      f"never quantised")
        except ValueError as e:                        # ShapeError included
            raise CheckpointError(f"{where}: {name}: {e}") from None
        model.set_submodule(name, new)
    try:
        model.load_state_dict(arrays)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    return model
