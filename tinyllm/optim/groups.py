"""Which parameters get weight decay.

Decay pulls weights toward zero. That regularises the matrices of linear layers. It does not
help the others: a bias or a LayerNorm gain is one number per channel, and shrinking a norm
gain toward 0 fights the normalisation. Embeddings are a choice: nanoGPT and llm.c decay
every parameter with 2 or more dimensions, the token and position embeddings included (their
rule is only ``ndim >= 2``); tinyllm's default keeps embeddings undecayed as well (an
embedding row only moves when its token appears, so decay shrinks rare tokens between their
appearances), and so does the benchmark's PyTorch peer (``tinyllm.bench.torch_peer``), so
the two train the same way. For nanoGPT's rule pass
``no_decay=lambda name, p: p.data.ndim < 2``.

Issue 10 asked whether this grouping is why a trained GPT's loss is an outlier at the last
position of its window (position ``block_size - 1``). It is not: on the embedded corpus
(2 layers, 64 wide, block 128, 600 steps of the Trainer's recipe) the last position's val
loss exceeds the median of the others by 0.139 nats with this rule and 0.140 with nanoGPT's,
and by 0.10 with decay on every parameter at block 32. That position's embedding row learns
only through its query (no later position attends to it as a key), so it is the last to be
learnt; see ``tinyllm.train.demo`` for what the demo does about it.

The rule (``default_no_decay``): a parameter gets **no** decay when

- it has fewer than 2 dimensions (biases, LayerNorm weight and bias), or
- one of the dot-separated parts of its name starts with ``ln`` (``ln_1``, ``ln_f``), or
  contains ``norm``, ``bias``, ``emb`` (``embedding``, ``tok_emb``), or is ``wte`` or ``wpe``.

So in GPT-2 names ``transformer.wte.weight``, ``transformer.wpe.weight``, every ``ln_*`` and
every ``*.bias`` get none, while ``attn.c_attn.weight``, ``attn.c_proj.weight``,
``mlp.c_fc.weight`` and ``mlp.c_proj.weight`` are decayed. A tied ``lm_head`` (the same
Tensor as ``wte``) is listed once, under its first name.
"""
from __future__ import annotations

import numpy as np


def default_no_decay(name: str, param) -> bool:
    """True when ``param`` (called ``name``) should get no weight decay (see the module
    docstring for the rule)."""
    if np.ndim(param.data) < 2:
        return True
    for part in name.lower().split("."):
        if (part.startswith("ln") or "norm" in part or "bias" in part or "emb" in part
                or part in ("wte", "wpe")):
            return True
    return False


def param_groups_for_decay(named_params, weight_decay: float, no_decay=default_no_decay):
    """Split ``(name, Tensor)`` pairs, as ``model.named_parameters()`` yields them, into two
    param groups for an optimizer::

        [{"params": [...], "param_names": [...], "weight_decay": weight_decay},
         {"params": [...], "param_names": [...], "weight_decay": 0.0}]

    ``no_decay(name, tensor) -> bool`` chooses the second group (default: ``default_no_decay``).
    Both groups are always returned, even when one is empty, so a saved optimizer state
    always has the same structure. A Tensor that appears twice (tied weights) is kept once.
    ``param_names`` travels into the optimizer's state dict, and ``load_state_dict`` checks it.
    """
    decay = {"params": [], "param_names": [], "weight_decay": weight_decay}
    none = {"params": [], "param_names": [], "weight_decay": 0.0}
    seen = set()
    for item in named_params:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"param_groups_for_decay: expected (name, Tensor) pairs as "
                            f"model.named_parameters() yields, got {type(item).__name__}")
        name, p = item
        if not isinstance(getattr(p, "data", None), np.ndarray):
            raise TypeError(f"param_groups_for_decay: {name!r} is a {type(p).__name__}, "
                            f"not a Tensor")
        if id(p) in seen:
            continue
        seen.add(id(p))
        group = none if no_decay(name, p) else decay
        group["params"].append(p)
        group["param_names"].append(name)
    if not seen:
        raise ValueError("param_groups_for_decay: got no parameters")
    return [decay, none]
