"""The demo's step counts are fixed numbers, not fitted to a clock.

Issue 10: the demo fitted its GPT's step count to a time budget from three timed steps, so a
cold cache or a busy machine trained 134 steps instead of ~600 and printed a gibberish
sample. Here ``Trainer.fit`` is replaced by a stub that records the step count each phase
was configured with, and the demo runs under the real clock and under a clock that runs
1000 times too fast (every step looks 1000 times slower): the step counts must be the same
and equal the documented constants. No test here times anything.
"""
import time

import pytest

from tinyllm.train import demo as demo_mod
from tinyllm.train import trainer as trainer_mod


def _run_demo_recording_steps(tmp_path, monkeypatch, clock_scale: float, **kw) -> list:
    """The max_steps of every Trainer.fit the demo calls (fit itself stubbed out), with
    ``time.perf_counter`` and ``time.time`` running ``clock_scale`` times faster."""
    seen = []

    def fake_fit(self):
        seen.append(self.cfg.max_steps)
        self.step = self.cfg.max_steps
        return trainer_mod.TrainResult(steps=self.step, val_losses=[(self.step, 1.0)],
                                       seconds=1.0, tokens=1)

    monkeypatch.setattr(trainer_mod.Trainer, "fit", fake_fit)
    real_pc, real_t = time.perf_counter, time.time
    t0 = real_pc()
    monkeypatch.setattr(time, "perf_counter", lambda: t0 + (real_pc() - t0) * clock_scale)
    monkeypatch.setattr(time, "time", lambda: real_t() * clock_scale)
    # the demo's samples and the RNN's exact match are not what this test is about
    monkeypatch.setattr("tinyllm.train.seq_tasks.evaluate_exact_match", lambda m, h: 0.0)
    monkeypatch.setattr("tinyllm.infer.generate", lambda m, idx, n, **k: idx)
    demo_mod.demo(str(tmp_path / f"out{clock_scale:g}"), log=lambda *a, **k: None, **kw)
    return seen


def test_demo_step_counts_do_not_depend_on_the_clock(tmp_path, monkeypatch):
    normal = _run_demo_recording_steps(tmp_path, monkeypatch, 1.0)
    slow = _run_demo_recording_steps(tmp_path, monkeypatch, 1000.0)
    rnn, gpt = getattr(demo_mod, "RNN_STEPS", None), getattr(demo_mod, "GPT_STEPS", None)
    assert normal == slow, (normal, slow)
    assert normal == [rnn, rnn, gpt], normal


def test_quick_demo_steps_are_fixed_and_small(tmp_path, monkeypatch):
    steps = _run_demo_recording_steps(tmp_path, monkeypatch, 1000.0, quick=True)
    q = demo_mod.QUICK
    assert steps == [q["rnn_steps"], q["rnn_steps"], q["gpt_steps"]]
    assert q["gpt_steps"] < demo_mod.GPT_STEPS and q["rnn_steps"] < demo_mod.RNN_STEPS


def test_demo_steps_overrides_and_bad_keys():
    assert demo_mod.demo_steps() == {"rnn_steps": demo_mod.RNN_STEPS,
                                     "gpt_steps": demo_mod.GPT_STEPS}
    assert demo_mod.demo_steps(budget={"gpt_steps": 7})["gpt_steps"] == 7
    with pytest.raises(ValueError, match="unknown budget key 'gpt'"):
        demo_mod.demo_steps(budget={"gpt": 10.0})          # seconds: no longer a budget
    with pytest.raises(ValueError, match="gpt_steps must be a positive integer"):
        demo_mod.demo_steps(budget={"gpt_steps": 0})


def test_steps_for_budget_is_gone():
    from tinyllm.train import runs
    assert not hasattr(runs, "steps_for_budget") and not hasattr(runs, "seconds_per_step")
