"""The adaptive admission limit of /v1/decide (serving/admission.py): pure logic, no infrastructure."""

from __future__ import annotations

import pytest

from serving.admission import LatencyLimit


def simulate(limit: LatencyLimit, demand: int, service_s: float, rounds: int) -> list[float]:
    """A process where every decision in progress shares one CPU: ``n`` admitted at once each take
    ``n * service_s``. ``demand`` decisions want to run at any moment (the rest are shed). Returns the limit
    after each round."""
    history = []
    for _ in range(rounds):
        admitted = 0
        while admitted < demand and limit.admit(admitted):
            admitted += 1
        latency = admitted * service_s
        for started_with in range(admitted):
            limit.update(latency, started_with)
        history.append(limit.limit)
    return history


def test_the_limit_settles_where_the_decisions_meet_the_target() -> None:
    # 0.2 ms of CPU per decision and a 5 ms target: 25 decisions at once end in time, 26 do not
    limit = LatencyLimit(target_s=0.005, minimum=4, maximum=256, initial=4)
    history = simulate(limit, demand=200, service_s=0.0002, rounds=400)
    settled = history[-100:]
    assert 20 <= min(settled) and max(settled) <= 27, (min(settled), max(settled))


def test_a_costlier_decision_gets_a_lower_limit() -> None:
    # the same target, decisions four times as costly (a slower core, more candidates): about a quarter
    cheap = simulate(LatencyLimit(0.005, minimum=2, initial=64), demand=200, service_s=0.0002, rounds=400)[-1]
    costly = simulate(LatencyLimit(0.005, minimum=2, initial=64), demand=200, service_s=0.0008, rounds=400)[-1]
    assert 4 <= costly <= 7 and 20 <= cheap <= 27 and costly < cheap / 3


def test_late_decisions_lower_the_limit_once_per_round_down_to_the_minimum() -> None:
    limit = LatencyLimit(target_s=0.005, minimum=8, maximum=256, initial=100)
    cuts = [limit.update(latency_s=0.050, in_flight_at_start=50) for _ in range(100)]
    assert cuts.count(True) == 1 and limit.limit == pytest.approx(90.0)  # one round of 100 late answers: one cut
    for _ in range(10_000):
        limit.update(latency_s=0.050, in_flight_at_start=50)
    assert limit.limit == 8.0


def test_the_limit_grows_only_while_it_is_used() -> None:
    idle = LatencyLimit(target_s=0.005, minimum=16, maximum=256, initial=16)
    for _ in range(100_000):
        idle.update(latency_s=0.001, in_flight_at_start=2)  # light load: a few at a time, all in time
    assert idle.limit == 16.0
    busy = LatencyLimit(target_s=0.005, minimum=16, maximum=64, initial=16)
    for _ in range(100_000):
        busy.update(latency_s=0.001, in_flight_at_start=int(busy.limit) - 1)
    assert busy.limit == 64.0  # and never past the maximum


def test_admission_is_a_strict_bound_on_decisions_in_progress() -> None:
    limit = LatencyLimit(target_s=0.005, minimum=3, maximum=10, initial=3)
    assert [limit.admit(n) for n in range(5)] == [True, True, True, False, False]


@pytest.mark.parametrize("kwargs", [
    {"target_s": 0.0}, {"target_s": 0.005, "minimum": 0}, {"target_s": 0.005, "minimum": 20, "initial": 10},
    {"target_s": 0.005, "initial": 300}, {"target_s": 0.005, "decrease": 1.0},
])
def test_bad_settings_are_refused_at_start(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LatencyLimit(**kwargs)  # type: ignore[arg-type]
