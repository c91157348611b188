"""Per-position validation loss of a trained GPT has no outlier at the last position.

Issue 10: the demo's GPT had val loss ~1.4 nats at every position of its window but the last
(position block_size - 1 = 127: 2.27), and its samples went bad after 128 characters: past
block_size the window slides, and every new character is predicted at that last position.
The last position's embedding row learns only through its own query (no later position
attends to it as a key), so it is the slowest to be learnt, and the training recipe decides
whether it is learnt at all (see ``tinyllm.train.runs.GPT_PRESETS``).

``per_position_loss`` is the diagnostic: the mean cross-entropy at each position t of
``n`` random val windows, (T,). Position 0 has no context, so it is high in any model; the
check compares the last position with the median of positions 1 .. T-2.
"""
import numpy as np
import pytest

from tinyllm.autograd import no_grad
from tinyllm.train.runs import gpt_trainer, make_preset


def per_position_loss(model, ids, T: int, n: int = 512, seed: int = 123) -> np.ndarray:
    """Mean cross-entropy (nats) at each position of ``n`` random windows of ``ids``: (T,)."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - T, n)
    total = np.zeros(T)
    was = model.training
    model.eval()
    with no_grad():
        for i in range(0, n, 64):
            idx = starts[i:i + 64, None] + np.arange(T)                  # (b, T)
            logits, _ = model(ids[idx])                                  # (b, T, V)
            z = np.asarray(logits.data, np.float64)
            z -= z.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))          # log softmax
            total += -np.take_along_axis(logp, ids[idx + 1][..., None], -1)[..., 0].sum(0)
    model.train(was)
    return total / n


def _train(preset: str, **settings):
    p = make_preset("gpt", preset).replace(**settings)
    trainer, _, _, val = gpt_trainer(p, None, None, log=None, progress=False)
    trainer.fit()
    return per_position_loss(trainer.model, val, p.model.block_size)


def _last_excess(pp) -> float:
    """Loss at the last position minus the median of positions 1 .. T-2 (nats)."""
    return float(pp[-1] - np.median(pp[1:-1]))


@pytest.mark.slow
def test_demo_gpt_has_no_outlier_at_the_last_position():
    """The demo's GPT (the `small` preset, GPT_STEPS steps): the last position's val loss is
    within 0.15 nats of the median of positions 1 .. T-2. Measured: warmup 100 + cosine (the
    preset before issue 10) 2.272 against 1.399 (+0.87, fails); constant lr 1.404 against
    1.427 (-0.02). ~2.5 minutes on one core."""
    from tinyllm.train.demo import GPT_STEPS
    pp = _train("small", max_steps=GPT_STEPS, eval_every=GPT_STEPS)
    assert pp[0] > np.median(pp[1:-1]) + 0.5           # the check can see an outlier
    assert _last_excess(pp) < 0.15, np.round(pp[-8:], 3)


def test_small_preset_schedule_is_constant():
    """The recipe the slow test above checks, in a fast test: the `small` preset keeps its lr
    (no cosine taking it down before the last position's embedding is learnt)."""
    t = make_preset("gpt", "small").train
    assert t.min_lr == t.lr and t.warmup_steps == 0
