"""Checkpoints: safetensors arrays plus JSON metadata, written atomically. Never pickle.

A checkpoint is a folder::

    DIR/last/  model.safetensors   the model's parameters, by their dotted names
               optim.safetensors   the optimiser's moments ("state.<i>.<name>")
               meta.json           config, tokenizer, step, optimiser meta, RNG states, data
                                   position, metrics, and the SHA-256 of both array files

It is written as ``DIR/last.tmp`` (every file fsynced), then swapped in: the old folder is
renamed to ``last.old``, the new one to ``last``, and only then is ``last.old`` removed. A crash
at any point leaves either the old or the new checkpoint complete; ``load_checkpoint`` falls
back to ``last.old`` when ``last`` is missing. The hashes catch a truncated or corrupted file:
loading it raises ``CheckpointError`` instead of resuming from garbage.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

FORMAT = "tinyllm-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupted or of another format."""


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:                      # pragma: no cover - platforms without dir fds
        return
    try:
        os.fsync(fd)
    except OSError:                      # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _tensors_bytes(arrays: dict) -> bytes:
    from safetensors.numpy import save
    clean = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return save(clean) if clean else save({"__empty__": np.zeros(0, np.float32)})


def save_checkpoint(directory: str, name: str, model_arrays: dict, optim_arrays: dict,
                    meta: dict) -> str:
    """Write checkpoint ``directory/name`` atomically; returns its path."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, name)
    tmp = final + ".tmp"
    old = final + ".old"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    hashes = {
        "model.safetensors": _write(os.path.join(tmp, "model.safetensors"),
                                    _tensors_bytes(model_arrays)),
        "optim.safetensors": _write(os.path.join(tmp, "optim.safetensors"),
                                    _tensors_bytes(optim_arrays)),
    }
    meta = dict(meta, format=FORMAT, version=VERSION, sha256=hashes)
    _write(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=1).encode())
    _fsync_dir(tmp)
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(directory)
    if os.path.exists(old):
        shutil.rmtree(old)
    return final


def resolve(path: str) -> str:
    """The checkpoint folder meant by ``path``: a checkpoint folder itself, or a training
    output folder holding ``last`` (preferred) or ``best``; ``X.old`` if ``X`` was lost in a
    crash mid-swap."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} is a file; pass the checkpoint folder")
    if os.path.exists(os.path.join(path, "meta.json")):
        return path
    for name in ("last", "best"):
        for cand in (name, name + ".old"):
            p = os.path.join(path, cand)
            if os.path.exists(os.path.join(p, "meta.json")):
                return p
    if os.path.exists(path + ".old") and os.path.exists(os.path.join(path + ".old",
                                                                      "meta.json")):
        return path + ".old"
    raise CheckpointError(f"no checkpoint in {path!r} (expected meta.json, or a 'last' or "
                          f"'best' folder holding one)")


def load_checkpoint(path: str) -> tuple[dict, dict, dict]:
    """(model_arrays, optim_arrays, meta) of the checkpoint at ``path`` (see ``resolve``).
    Raises ``CheckpointError`` naming the file for anything missing, truncated or corrupt."""
    from safetensors.numpy import load
    folder = resolve(path)
    meta_path = os.path.join(folder, "meta.json")
    try:
        with open(meta_path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint metadata {meta_path} is unreadable or corrupt "
                              f"({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a tinyllm checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path} has format version {meta.get('version')}; this "
                              f"tinyllm reads version {VERSION}")
    out = []
    for fname in ("model.safetensors", "optim.safetensors"):
        fpath = os.path.join(folder, fname)
        try:
            with open(fpath, "rb") as f:
                data = f.read()
        except OSError:
            raise CheckpointError(f"checkpoint file {fpath} is missing") from None
        want = meta.get("sha256", {}).get(fname)
        if want is None or hashlib.sha256(data).hexdigest() != want:
            raise CheckpointError(f"checkpoint file {fpath} is truncated or corrupt (its "
                                  f"SHA-256 does not match meta.json)")
        try:
            arrays = load(data)
        except Exception as e:          # safetensors raises its own error types
            raise CheckpointError(f"checkpoint file {fpath} cannot be parsed: {e}") from None
        arrays.pop("__empty__", None)
        out.append(arrays)
    return out[0], out[1], meta


def rng_state(rng: np.random.Generator) -> dict:
    """A JSON-able copy of a Generator's state (Python ints keep PCG64's 128 bits)."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state
