"""Optimisers, gradient clipping and learning-rate schedules, with PyTorch's signatures.

    import tinyllm.optim as optim
    groups = optim.param_groups_for_decay(model.named_parameters(), weight_decay=0.1)
    opt = optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95))
    sched = optim.WarmupCosineLR(opt, warmup_steps=100, total_steps=5000, min_lr=3e-5)
    for step in range(5000):
        logits, loss = model(x, y)
        opt.zero_grad(); loss.backward()
        norm = optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step()

- ``SGD``, ``Adam``, ``AdamW``: update ``p.data`` in place, keep its dtype, skip parameters
  whose ``.grad`` is None. The updates are the kernel families ``sgd`` and ``adam``
  (``tinyllm.kernels``): a readable NumPy reference (also here as ``sgd_reference``,
  ``adam_reference``) and a one-pass Numba version, picked by the kernel registry, so
  ``with tl.kernels.use("numpy"):`` switches them with every other kernel.
- ``Optimizer.state_dict()`` -> ``{"meta": JSON, "arrays": {"state.<i>.<name>": ndarray}}``
  for a safetensors + JSON checkpoint; ``load_state_dict`` checks it and resumes bitwise.
- ``param_groups_for_decay``: no decay on biases, norm weights and embeddings (rule in
  ``tinyllm.optim.groups``).
- ``clip_grad_norm_(params, max_norm) -> norm before clipping`` (float64 sum, the
  ``grad_norm`` kernel family).
- ``warmup_cosine(step, max_lr, warmup_steps, total_steps, min_lr)`` and ``WarmupCosineLR``.
"""
from .adam import Adam, AdamW, adam_reference
from .clip import clip_grad_norm_, grad_norm
from .groups import default_no_decay, param_groups_for_decay
from .optimizer import Optimizer
from .schedule import WarmupCosineLR, warmup_cosine
from .sgd import SGD, sgd_reference

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "sgd_reference", "adam_reference",
           "clip_grad_norm_", "grad_norm", "param_groups_for_decay", "default_no_decay",
           "warmup_cosine", "WarmupCosineLR"]
