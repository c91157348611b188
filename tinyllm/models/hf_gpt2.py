"""Loading a Hugging Face GPT-2 checkpoint folder into ``tl.models.GPT`` (nothing downloads).

    model = tl.models.GPT.from_pretrained("path/to/gpt2")     # config.json + model.safetensors
    model, tok = tl.load("path/to/gpt2")                      # + vocab.json, merges.txt

The folder is what ``GPT2LMHeadModel.save_pretrained`` writes (or the ``gpt2`` repository's
files): ``config.json`` and ``model.safetensors``. tinyllm's GPT already has GPT-2's layout
and names, so loading is a renaming with checks, not a conversion:

    HF name (optionally prefixed "transformer.")   tinyllm name            shape
    wte.weight                                      transformer.wte.weight  (V, C)
    wpe.weight                                      transformer.wpe.weight  (n_positions, C)
    h.{i}.ln_1.{weight,bias}                        transformer.h.{i}....   (C,)
    h.{i}.attn.c_attn.{weight,bias}                 ...                     (C, 3C), (3C,)
    h.{i}.attn.c_proj.{weight,bias}                 ...                     (C, C), (C,)
    h.{i}.ln_2.{weight,bias}                        ...                     (C,)
    h.{i}.mlp.c_fc.{weight,bias}                    ...                     (C, 4C), (4C,)
    h.{i}.mlp.c_proj.{weight,bias}                  ...                     (4C, C), (C,)
    ln_f.{weight,bias}                              transformer.ln_f....    (C,)

GPT-2's ``Conv1D`` stores its weight (in, out) and computes ``y = x @ W + b``, which is
tinyllm's ``Linear``, so no transpose. ``c_attn`` holds q, k, v side by side in that order,
as tinyllm's does. The output head is tied to ``wte`` (logits = ln_f(x) @ wte^T): a stored
``lm_head.weight`` (V, C) must equal ``wte.weight`` exactly, else the checkpoint is refused
(tinyllm's GPT has no separate head). ``h.{i}.attn.bias`` (the (1, 1, n_positions,
n_positions) causal mask) and ``h.{i}.attn.masked_bias`` (a scalar) are buffers, not
weights: the fused attention kernel masks by itself, so they are skipped.

config.json: ``n_layer``, ``n_head``, ``n_embd``, ``n_positions`` (or the older ``n_ctx``),
``vocab_size``, ``layer_norm_epsilon`` (put on every LayerNorm: ``(x - mean) / sqrt(var +
eps)``); ``activation_function`` must be ``gelu_new`` (0.5 a (1 + tanh(sqrt(2/pi) (a +
0.044715 a^3))), the MLP kernel's GELU). Settings tinyllm does not implement (another
activation, ``n_inner`` other than 4 C, cross-attention, attention scaled by the layer
index, no 1/sqrt(hs) scaling, an untied head) are refused by name rather than loaded into a
model that would compute something else.

model.safetensors is parsed here (the format is an 8-byte little-endian header length, a
JSON header {name: {dtype, shape, data_offsets}}, then the raw little-endian bytes), so that
F32/F64/F16 and BF16 tensors load (NumPy has no bfloat16: its bits are the top half of a
float32, so ``uint32(bits) << 16`` viewed as float32 is exact), every tensor is checked
before any is read, and a truncated file is named. Nothing is unpickled. Every problem
raises ``HFCheckpointError`` naming the file, setting or tensor.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..nn import LayerNorm
from .gpt import GPT, GPTConfig

__all__ = ["HFCheckpointError", "is_hf_gpt2_dir", "read_gpt2_config", "read_safetensors",
           "gpt2_tensor_names", "load_gpt2"]

CONFIG, WEIGHTS = "config.json", "model.safetensors"
_PREFIX = "transformer."
_BLOCK = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
          "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
          "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")
_BUFFERS = ("attn.bias", "attn.masked_bias")        # per block, skipped
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class HFCheckpointError(ValueError):
    """A Hugging Face GPT-2 folder that cannot be loaded; the message names the file, the
    config setting or the tensor."""


def is_hf_gpt2_dir(path) -> bool:
    """Whether ``path`` is a folder holding ``config.json`` and ``model.safetensors`` and no
    tinyllm ``meta.json`` (what ``tl.load`` takes for a Hugging Face checkpoint)."""
    p = os.fspath(path)
    return (os.path.isdir(p) and os.path.isfile(os.path.join(p, CONFIG))
            and os.path.isfile(os.path.join(p, WEIGHTS))
            and not os.path.exists(os.path.join(p, "meta.json")))


def _int_setting(cfg: dict, where: str, *keys):
    for k in keys:
        if k in cfg:
            v = cfg[k]
            if type(v) is not int or v < 1:
                raise HFCheckpointError(f"{where}: {k} must be a positive int, got {v!r}")
            return v
    raise HFCheckpointError(f"{where}: no {' or '.join(keys)}")


def read_gpt2_config(path) -> tuple[GPTConfig, float]:
    """(GPTConfig, layer_norm_epsilon) from ``path/config.json``; refuses what tinyllm's GPT
    does not compute."""
    where = os.path.join(os.fspath(path), CONFIG)
    try:
        with open(where, "rb") as f:
            cfg = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFCheckpointError(f"{where} is unreadable or not JSON ({type(e).__name__}: "
                                f"{e})") from None
    if not isinstance(cfg, dict):
        raise HFCheckpointError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise HFCheckpointError(f"{where}: model_type is {model_type!r}; only 'gpt2' loads")
    act = cfg.get("activation_function", "gelu_new")
    if act != "gelu_new":
        raise HFCheckpointError(f"{where}: activation_function is {act!r}; tinyllm's GPT "
                                f"computes only 'gelu_new' (GPT-2's tanh GELU)")
    n_layer = _int_setting(cfg, where, "n_layer")
    n_head = _int_setting(cfg, where, "n_head")
    n_embd = _int_setting(cfg, where, "n_embd")
    n_pos = _int_setting(cfg, where, "n_positions", "n_ctx")
    vocab = _int_setting(cfg, where, "vocab_size")
    inner = cfg.get("n_inner")
    if inner is not None and inner != 4 * n_embd:
        raise HFCheckpointError(f"{where}: n_inner is {inner!r}; tinyllm's GPT has an MLP "
                                f"of 4 n_embd = {4 * n_embd}")
    refused = {"add_cross_attention": False, "scale_attn_by_inverse_layer_idx": False,
               "scale_attn_weights": True, "tie_word_embeddings": True}
    for k, want in refused.items():
        if cfg.get(k, want) != want:
            raise HFCheckpointError(f"{where}: {k} is {cfg[k]!r}; tinyllm's GPT supports only "
                                    f"{want!r}")
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if (not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps)
            or eps <= 0):
        raise HFCheckpointError(f"{where}: layer_norm_epsilon must be a number > 0, "
                                f"got {eps!r}")
    if n_embd % n_head:
        raise HFCheckpointError(f"{where}: n_embd ({n_embd}) is not divisible by n_head "
                                f"({n_head})")
    # dropout 0: a loaded model is for inference (fine-tuning can set it on the config)
    return GPTConfig(vocab_size=vocab, block_size=n_pos, n_layer=n_layer, n_head=n_head,
                     n_embd=n_embd, dropout=0.0, bias=True), float(eps)


def read_safetensors(file, names=None) -> tuple[dict, dict]:
    """(header {name: (dtype str, shape tuple)}, arrays {name: float ndarray}) of a
    safetensors file, reading only ``names`` (all when None; pass ``()`` for the header
    alone). Arrays are float16/32/64 as stored, BF16 widened exactly to float32."""
    file = os.fspath(file)
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise HFCheckpointError(f"{file} is not a safetensors file or is truncated "
                                        f"(header length {n}, file {size} bytes)")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise HFCheckpointError(f"{file} cannot be read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HFCheckpointError(f"{file}: its safetensors header is not JSON (corrupt?)") \
            from None
    if not isinstance(header, dict):
        raise HFCheckpointError(f"{file}: its safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    info, spans = {}, {}
    for name, h in header.items():
        ok = (isinstance(h, dict) and isinstance(h.get("shape"), list)
              and all(type(d) is int and d >= 0 for d in h["shape"])
              and isinstance(h.get("data_offsets"), list) and len(h["data_offsets"]) == 2
              and all(type(o) is int for o in h["data_offsets"]))
        if not ok:
            raise HFCheckpointError(f"{file}: header entry for tensor {name} is malformed")
        dt, shape, (b, e) = h.get("dtype"), tuple(h["shape"]), h["data_offsets"]
        info[name] = (dt, shape)
        if dt not in _DTYPES:
            continue                        # refused below only if the tensor is wanted
        need = math.prod(shape) * np.dtype(_DTYPES[dt]).itemsize
        if not 0 <= b <= e or e - b != need:
            raise HFCheckpointError(f"{file}: tensor {name} ({dt} {shape}) has data offsets "
                                    f"[{b}, {e}), not {need} bytes")
        if 8 + n + e > size:
            raise HFCheckpointError(f"{file} is truncated: tensor {name} ends at byte "
                                    f"{8 + n + e} but the file has {size}")
        spans[name] = (b, e)
    wanted = list(info) if names is None else list(names)
    arrays = {}
    if wanted:
        buf = np.memmap(file, dtype=np.uint8, mode="r")
        for name in wanted:
            dt, shape = info[name]
            if dt not in _DTYPES:
                raise HFCheckpointError(f"{file}: tensor {name} has dtype {dt}; tinyllm reads "
                                        f"{', '.join(_DTYPES)}")
            b, e = spans[name]
            raw = buf[8 + n + b:8 + n + e].view(np.dtype(_DTYPES[dt]).newbyteorder("<"))
            if dt == "BF16":                # the top 16 bits of a float32
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            arrays[name] = np.array(raw.reshape(shape))     # a copy, off the memmap
        del buf
    return info, arrays


def gpt2_tensor_names(cfg: GPTConfig) -> list[str]:
    """The weights a GPT-2 checkpoint of this shape holds, unprefixed, in HF's order."""
    names = ["wte.weight", "wpe.weight"]
    for i in range(cfg.n_layer):
        names += [f"h.{i}.{s}" for s in _BLOCK]
    return names + ["ln_f.weight", "ln_f.bias"]


def _expected_shapes(cfg: GPTConfig) -> dict[str, tuple]:
    C, V = cfg.n_embd, cfg.vocab_size
    per = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C),
           "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C),
           "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
           "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
           "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}
    out = {"wte.weight": (V, C), "wpe.weight": (cfg.block_size, C)}
    for i in range(cfg.n_layer):
        out.update({f"h.{i}.{k}": s for k, s in per.items()})
    out.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return out


def _is_buffer(name: str, n_layer: int) -> bool:
    parts = name.split(".", 2)
    return (len(parts) == 3 and parts[0] == "h" and parts[1].isdigit()
            and int(parts[1]) < n_layer and parts[2] in _BUFFERS)


def load_gpt2(path, dtype=np.float32) -> GPT:
    """A ``tl.models.GPT`` (eval mode, ``dtype`` float32 or float64) holding the weights of
    the Hugging Face GPT-2 folder ``path`` (module docstring)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise HFCheckpointError(f"GPT.from_pretrained: {path!r} is not a folder")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"GPT.from_pretrained: dtype must be float32 or float64, got {dtype}")
    cfg, eps = read_gpt2_config(path)
    file = os.path.join(path, WEIGHTS)
    if not os.path.isfile(file):
        raise HFCheckpointError(f"{file} is missing")
    info, _ = read_safetensors(file, ())
    # HF name without the optional "transformer." prefix -> stored name
    stored: dict[str, str] = {}
    for name in info:
        short = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
        if short in stored:
            raise HFCheckpointError(f"{file}: tensor {short} is stored twice ({stored[short]} "
                                    f"and {name})")
        stored[short] = name
    want = _expected_shapes(cfg)
    missing = [k for k in want if k not in stored]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise HFCheckpointError(f"{file}: missing tensor {', '.join(missing[:3])}{more}")
    extra = [k for k in stored if k not in want and k != "lm_head.weight"
             and not _is_buffer(k, cfg.n_layer)]
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise HFCheckpointError(f"{file}: unexpected tensor {', '.join(extra[:3])}{more} (not "
                                f"part of a GPT-2 of {cfg.n_layer} layers)")
    for k, shape in want.items():
        got = info[stored[k]][1]
        if got != shape:
            raise HFCheckpointError(f"{file}: {k} has shape {got}, expected {shape} (from "
                                    f"{CONFIG})")
    head = "lm_head.weight" in stored
    if head and info[stored["lm_head.weight"]][1] != want["wte.weight"]:
        raise HFCheckpointError(f"{file}: lm_head.weight has shape "
                                f"{info[stored['lm_head.weight']][1]}, expected "
                                f"{want['wte.weight']} (tied to wte.weight)")
    read = [stored[k] for k in want] + ([stored["lm_head.weight"]] if head else [])
    _, arrays = read_safetensors(file, read)
    for k in want:
        a = arrays[stored[k]]
        if not np.isfinite(a).all():
            raise HFCheckpointError(f"{file}: tensor {k} holds NaN or inf")
    wte = arrays[stored["wte.weight"]]
    if head and not np.array_equal(arrays[stored["lm_head.weight"]], wte):
        raise HFCheckpointError(f"{file}: lm_head.weight differs from wte.weight; tinyllm's "
                                f"GPT ties its output head to the token embedding")
    model = GPT(cfg, seed=0, dtype=dtype)
    for _, m in model.named_modules():
        if isinstance(m, LayerNorm):
            m.eps = eps
    model.load_state_dict({_PREFIX + k: arrays[stored[k]] for k in want})
    model.eval()
    return model
