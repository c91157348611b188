"""Loss at each position of the context window: the diagnostic of issue 10.

Legend: T = the window (block_size), n = windows, V = vocabulary.

For n seeded random windows x (n, T) of an id array with next tokens y (n, T),

    l_t = 1/n sum_w -log softmax(z_w,t)[y_w,t]        t = 0 .. T-1,   z = model(x) (n, T, V)

Position 0 sees no context (it predicts from one token), so l_0 is high in any model; l_t
falls as the context grows. The last position (T - 1) is where every token is predicted once
generation runs past block_size (the window slides), so an outlier there shows in samples.
"""
from __future__ import annotations

import numpy as np

from ..autograd import no_grad

__all__ = ["per_position_loss"]


def per_position_loss(model, ids, windows: int = 256, seed: int = 123, T: int | None = None,
                      batch: int = 64) -> np.ndarray:
    """Mean cross-entropy (nats/token) at each position of ``windows`` seeded random windows
    of ``ids`` (a 1-D int array), (T,) float64; T defaults to ``model.config.block_size``.
    ``model(x)`` must return ``(logits (b, T, V), _)``. The model runs in eval mode under
    no_grad and its mode is restored."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"per_position_loss: ids must be a 1-D integer array, got "
                         f"{ids.dtype} {ids.shape}")
    T = int(model.config.block_size if T is None else T)
    for name, v in (("windows", windows), ("batch", batch), ("T", T)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"per_position_loss: {name} must be a positive int, got {v!r}")
    if len(ids) < T + 1:
        raise ValueError(f"per_position_loss: ids has {len(ids)} tokens, need at least "
                         f"T + 1 = {T + 1}")
    ids = ids.astype(np.int64)
    starts = np.random.default_rng(seed).integers(0, len(ids) - T, windows)    # (n,)
    total = np.zeros(T)
    was = model.training
    model.eval()
    try:
        with no_grad():
            for lo in range(0, windows, batch):
                idx = starts[lo:lo + batch, None] + np.arange(T)               # (b, T)
                logits, _ = model(ids[idx])                                    # (b, T, V)
                z = np.asarray(logits.data, np.float64)
                z = z - z.max(-1, keepdims=True)
                logp = z - np.log(np.exp(z).sum(-1, keepdims=True))            # log softmax
                nll = -np.take_along_axis(logp, ids[idx + 1][..., None], -1)[..., 0]
                total += nll.sum(0)                                            # (T,)
    finally:
        model.train(was)
    return total / windows
