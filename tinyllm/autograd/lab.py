"""Step-size diagnostics for gradient checks: the eps sweep and the Taylor-remainder test.

eps sweep: a central difference has truncation error ~ eps^2 |f'''| and round-off error
~ u |f| / eps (u = unit round-off: 1.1e-16 in float64, 6e-8 in float32). Plotted against eps on
log axes the total error is a V: on the large-eps arm it falls like eps^2 as eps shrinks, on
the small-eps arm it rises like 1/eps. The bottom sits near eps ~ u^(1/3): about 1e-5 in
float64, 1e-2..1e-3 in float32, and the float32 V bottoms out some 1e5 times higher.

Taylor test: for a direction v, ``r(h) = |L(x + h v) - L(x) - h <grad L, v>|`` is O(h^2) when
the gradient is right and O(h) when it is wrong, so the slope of log r against log h is about 2
or about 1. There is no eps to tune: only the shape of the curve matters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .gradcheck import _Problem


def _direction(prob: _Problem, rng) -> list:
    """A random direction over all differentiable inputs, one unit-variance entry per element."""
    return [rng.standard_normal(x.shape) if d else None for x, d in zip(prob.values, prob.diff)]


def _shifted(prob: _Problem, v: list, h: float) -> list:
    return [x + h * vi if d else x for x, vi, d in zip(prob.values, v, prob.diff)]


def _directional(grads: list, v: list) -> float:
    return float(sum(np.sum(g * vi) for g, vi in zip(grads, v) if g is not None))


@dataclass
class EpsSweep:
    """Relative error of the central-difference directional derivative against eps."""

    eps: np.ndarray
    errors: dict = field(default_factory=dict)    # dtype name -> errors, one per eps

    def best(self, dtype: str) -> float:
        """The eps with the smallest error for ``dtype`` ('float32' or 'float64')."""
        return float(self.eps[int(np.nanargmin(self.errors[dtype]))])

    def table(self) -> str:
        names = list(self.errors)
        lines = ["eps      " + "".join(f"{n:>12}" for n in names)]
        for k, e in enumerate(self.eps):
            lines.append(f"{e:<9.0e}" + "".join(f"{self.errors[n][k]:>12.2e}" for n in names))
        lines.append("best     " + "".join(f"{self.best(n):>12.0e}" for n in names))
        return "\n".join(lines)

    def plot(self):
        """A log-log Figure of error against eps, one line per dtype. A plain
        ``matplotlib.figure.Figure`` (no pyplot state, the backend left as it is): save it
        with ``fig.savefig(path)``, or show it as the last value of a notebook cell."""
        from .figures import new_figure
        fig = new_figure(figsize=(6, 4))
        ax = fig.subplots()
        for name, err in self.errors.items():
            ax.loglog(self.eps, np.maximum(err, 1e-18), "o-", label=name)
            ax.axvline(self.best(name), ls=":", color=ax.lines[-1].get_color())
        ax.invert_xaxis()
        ax.set_xlabel("eps (step)")
        ax.set_ylabel("relative error of the central difference")
        ax.set_title("eps sweep: truncation (large eps) against round-off (small eps)")
        ax.legend()
        fig.tight_layout()
        return fig


def eps_sweep(fn, inputs, *, eps_values=None, dtypes=("float32", "float64"),
              seed=0) -> EpsSweep:
    """Error of the central difference against the float64 analytic gradient, over eps.

    For each dtype the inputs and the forward pass are in that dtype (as a float32 model would
    run); the reference ``<grad, v>`` is the autodiff gradient in float64.
    """
    eps_values = np.asarray(eps_values if eps_values is not None
                            else 10.0 ** -np.arange(1, 11), dtype=np.float64)
    ref = _Problem(fn, inputs, seed)
    v = _direction(ref, np.random.default_rng(seed + 1))
    exact = _directional(ref.analytic(), v)
    sweep = EpsSweep(eps=eps_values)
    for name in dtypes:
        prob = _Problem(fn, inputs, seed, dtype=np.dtype(name))
        prob.dy = ref.dy
        errs = []
        for h in eps_values:
            up = prob.loss(_shifted(prob, v, h))
            down = prob.loss(_shifted(prob, v, -h))
            errs.append(abs((up - down) / (2 * h) - exact) / max(abs(exact), 1e-30))
        sweep.errors[name] = np.array(errs)
    return sweep


@dataclass
class TaylorResult:
    slope: float            # fitted slope of log r(h) against log h (inf: r at round-off)
    h: np.ndarray
    remainders: np.ndarray

    def __float__(self):
        return self.slope

    @property
    def linear(self) -> bool:
        """Every remainder at round-off: fn is linear along the direction (the first-order
        Taylor expansion is exact), so there is no slope to fit and ``slope`` is inf."""
        return math.isinf(self.slope)

    @property
    def passed(self) -> bool:
        """A slope of about 2 (> 1.8), or a linear fn (inf)."""
        return self.slope > 1.8

    def verdict(self) -> str:
        """One phrase for a report line: why the slope is what it is."""
        if self.linear:
            return "ok: linear here, so the Taylor remainder is pure round-off (no slope to fit)"
        if self.passed:
            return "ok"
        return "WRONG GRADIENT? (a slope of about 1 means the gradient is off)"


def taylor_test(fn, inputs, *, seed=0, h0=0.05, steps=8, full=False):
    """The fitted log-log slope of the first-order Taylor remainder over halving h, in float64.

    About 2 means the gradient is right, about 1 that it is wrong. When every remainder is at
    round-off level (fn is linear along the direction and the gradient is right) the slope is
    ``inf``. With ``full=True`` a ``TaylorResult`` with the h values and remainders is returned.
    """
    prob = _Problem(fn, inputs, seed)
    grads = prob.analytic()
    v = _direction(prob, np.random.default_rng(seed + 1))
    dd = _directional(grads, v)
    L0 = prob.loss(prob.values)
    h = h0 * 0.5 ** np.arange(steps)
    r = np.array([abs(prob.loss(_shifted(prob, v, hk)) - L0 - hk * dd) for hk in h])
    floor = 1e3 * np.finfo(np.float64).eps * (abs(L0) + abs(h0 * dd) + 1.0)
    above = r > floor
    if above.sum() < 3:
        slope = math.inf
    else:
        slope = float(np.polyfit(np.log(h[above]), np.log(r[above]), 1)[0])
    return TaylorResult(slope, h, r) if full else slope
