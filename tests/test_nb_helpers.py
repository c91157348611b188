"""Helpers the chapter notebooks use: per-position loss."""
import numpy as np
import pytest

from tinyllm.models import GPT, GPTConfig
from tinyllm.train.positions import per_position_loss


def _gpt():
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16), seed=0)


def test_per_position_loss_matches_a_direct_computation():
    """Each position's loss is the mean -log p(y) over the windows at that position, and
    the mean over positions is the model's own loss on those windows."""
    model = _gpt()
    ids = np.random.default_rng(1).integers(0, 11, 300)
    pp = per_position_loss(model, ids, windows=10, seed=3, batch=4)
    assert pp.shape == (8,)
    starts = np.random.default_rng(3).integers(0, len(ids) - 8, 10)
    x = ids[starts[:, None] + np.arange(8)]
    y = ids[starts[:, None] + np.arange(8) + 1]
    logits, loss = model(x, y)
    z = logits.data.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = -np.log(np.take_along_axis(p, y[..., None], -1)[..., 0]).mean(0)
    np.testing.assert_allclose(pp, want, rtol=1e-5)
    np.testing.assert_allclose(pp.mean(), float(loss.data), rtol=1e-5)
    assert model.training                     # the mode is restored


def test_per_position_loss_refuses_bad_input():
    model = _gpt()
    with pytest.raises(ValueError, match="ids must be a 1-D integer"):
        per_position_loss(model, np.zeros((2, 20), np.int64))
    with pytest.raises(ValueError, match="need at least"):
        per_position_loss(model, np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="windows must be"):
        per_position_loss(model, np.zeros(50, np.int64), windows=0)
