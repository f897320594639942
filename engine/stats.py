"""Small statistics shared by the experiments endpoint and the benchmarks."""

from __future__ import annotations

import math


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate; sound for small counts, unlike the normal interval.

    >>> [round(v, 4) for v in wilson(2, 400)]
    [0.0014, 0.018]
    >>> wilson(0, 0)
    (0.0, 1.0)
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_and_variance(total: float, sum_squares: float, n: float) -> tuple[float, float]:
    """The mean per unit of ``n`` units whose values sum to ``total`` (squares: ``sum_squares``), and the
    variance of that mean (the sample variance over n).

    >>> mean_and_variance(2.0, 2.0, 4)  # values 1, 1, 0, 0
    (0.5, 0.0625)
    """
    if n <= 0:
        return (0.0, 0.0)
    mean = total / n
    return (mean, max(0.0, sum_squares / n - mean * mean) / n)


def lift_interval(treated: tuple[float, float], control: tuple[float, float],
                  z: float = 1.96) -> tuple[float | None, list[float] | None]:
    """Relative lift ``treated / control - 1`` of two means given as (mean, variance of the mean), and its 95%
    interval by the delta method on the log of the ratio: var(log(a/b)) ~ var(a)/a^2 + var(b)/b^2. None when
    either mean is 0 (no ratio, or no log).

    >>> lift, ci = lift_interval((0.02, 0.00001), (0.01, 0.000004))
    >>> round(lift, 3), [round(v, 3) for v in ci]
    (1.0, [0.213, 2.296])
    >>> lift_interval((0.02, 0.0), (0.0, 0.0))
    (None, None)
    """
    (a, va), (b, vb) = treated, control
    if a <= 0 or b <= 0:
        return (None, None)
    ratio = a / b
    half = z * math.sqrt(va / (a * a) + vb / (b * b))
    return (ratio - 1.0, [ratio * math.exp(-half) - 1.0, ratio * math.exp(half) - 1.0])
