"""The probability that independent normal scores put one given candidate first, by quadrature.

Thompson sampling shows the candidate whose draw from ``N(mean_j, sd_j^2)`` is largest. The chance that
candidate ``t`` wins is one integral over its own draw ``s``:

``P(t) = E_s[ prod_{j != t} Phi((s - mean_j) / sd_j) ]``, with ``s = mean_t + sd_t * z``, ``z ~ N(0, 1)``.

:func:`win_probability` evaluates it in ``u = Phi(z)`` with ``u = 1 - (1 - w)^2`` and the midpoint rule in
``w``: ``NODES`` cells, narrower towards ``u = 1``, where the top of many candidates wins; ``Phi`` is read from a
table. The integrand is non-decreasing in ``u``, so the error is at most ``sqrt(P) / NODES`` whatever the means
and deviations (a step-shaped integrand, when some ``sd_j`` is tiny next to ``sd_t``, is the worst case); on
smooth integrands it is far smaller (0.1% relatively for 50 equal candidates, whose integrand is ``u^49``).
It costs about as much as 400 normal draws, where a Monte-Carlo estimate as accurate needs tens of thousands.

>>> import numpy as np
>>> round(win_probability(np.zeros(4), np.ones(4), 2), 4)  # four equal candidates
0.25
>>> round(win_probability(np.array([0.0, 1.0]), np.array([1.0, 1.0]), 1), 2)  # Phi(1 / sqrt(2)) = 0.7602
0.76
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

__all__ = ["NODES", "win_probability"]

#: quadrature cells: the error is at most sqrt(P) / NODES
NODES = 64
_W = (np.arange(NODES) + 0.5) / NODES
#: the nodes (normal quantiles) and the widths in u of their cells
_Z = np.array([NormalDist().inv_cdf(1.0 - (1.0 - w) ** 2) for w in _W])
_WEIGHTS = 2.0 * (1.0 - _W) / NODES
#: Phi tabulated at the centres of cells of width 1 / _SCALE over [-_LIM, _LIM]: the value read for x is
#: Phi at most half a cell away, off by at most phi(0) / (2 * _SCALE) = 1e-4 (and 1 - Phi(8.5) < 1e-16)
_LIM = 8.5
_SCALE = 2048.0
_TABLE = np.array([NormalDist().cdf(-_LIM + (i + 0.5) / _SCALE) for i in range(int(2 * _LIM * _SCALE))])
_LAST = float(len(_TABLE) - 1)


def win_probability(mean: np.ndarray, sd: np.ndarray, top: int) -> float:
    """P(candidate ``top`` has the largest of independent draws ``N(mean_j, sd_j^2)``); every ``sd_j`` > 0."""
    if len(mean) == 1:
        return 1.0
    inv = _SCALE / sd
    # table position of (mean_t + sd_t * z - mean_j) / sd_j, one row per candidate, one column per node
    pos = np.multiply.outer(sd[top] * inv, _Z)
    pos += ((mean[top] - mean) * inv + _LIM * _SCALE)[:, None]
    np.clip(pos, 0.0, _LAST, out=pos)
    phi = _TABLE.take(pos.astype(np.intp))
    phi[top] = 1.0  # the top does not race itself
    return float(phi.prod(axis=0) @ _WEIGHTS)
