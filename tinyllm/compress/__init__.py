"""``tinyllm.compress``: compressed copies of a trained GPT and their checkpoints.

    qmodel = compress(model, "int8")                       # a quantised copy
    save_compressed(model, tok, "gpt-int8", "int8")        # compress + write a checkpoint
    qmodel, tok = tl.load("gpt-int8")                      # tinyllm generate/eval read it

``METHODS`` is the registry: a method name -> a function ``(model, keep_embeddings) ->
compressed copy``. The weight-quantisation methods (``tinyllm.compress.quant``, schemes in
``tl.nn.quant.SCHEMES``) are "int8" (per output channel), "int8-tensor", "int8-g32",
"int4" (per channel), "int4-tensor", "int4-g32". ``keep_embeddings=True`` (the default)
keeps the tied token table / output head in float; False quantises it too.

A compressed checkpoint is an ordinary tinyllm checkpoint (``tinyllm.train.checkpoint``:
safetensors + ``meta.json`` with SHA-256 hashes, written atomically, never pickle) whose
``meta.json`` also has ``"compressed": {"method", "scheme", "keep_embeddings", "quantised"}``
(``quantised``: the dotted names of the quantised modules). Its ``model.safetensors`` holds the
float parameters by name (LayerNorms, biases, wpe, and wte when kept) and, for each quantised
module ``P``, ``P.qweight`` (int8 (in, out), or uint8 (ceil(in/2), out) packed int4) and
``P.scales`` (float32). ``tl.load`` rebuilds the float model from the settings, then swaps in
the quantised modules (``load_quantised``); a missing, misshapen or mistyped array raises
``CheckpointError`` naming it.

Distillation (``tinyllm.compress.distill``, ``tinyllm distill``) trains a smaller student GPT
from a frozen teacher: ``distill(teacher, student_cfg, train_cfg, T, alpha, kind, ...)``; its
output is an ordinary GPT run folder.

Pruning (``tinyllm.compress.prune``, ``tinyllm compress --method prune``) is not a METHODS
entry: ``prune.prune(model, sparsity, scheme, calib)`` returns a float GPT (dense with zeros, or
structurally smaller) and its masks; ``save_pruned`` writes it as an ordinary checkpoint with
a ``"pruned"`` entry in ``meta.json`` (so it can still be quantised afterwards).
"""
from __future__ import annotations

from . import prune                     # the module: prune.prune(model, sparsity, scheme)
from .prune import (SCHEMES as PRUNE_SCHEMES, MaskedGPT, calibrate, finetune, save_pruned,
                    sparsity_report)
from .quant import (METHODS, compress, load_quantised, quantised_arrays, save_compressed,
                    stored_nbytes)

__all__ = ["METHODS", "compress", "save_compressed", "load_quantised", "quantised_arrays",
           "stored_nbytes", "prune", "calibrate", "finetune", "MaskedGPT", "save_pruned",
           "sparsity_report", "PRUNE_SCHEMES"]
from .distill import (DistillConfig, Distiller, distill, distill_run,  # noqa: E402
                      distill_trainer)

__all__ += ["DistillConfig", "Distiller", "distill", "distill_trainer", "distill_run"]
