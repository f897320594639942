"""The adaptive admission limit of /v1/decide (serving/admission.py): pure logic, no infrastructure."""

from __future__ import annotations

import pytest

from serving.admission import LatencyLimit


def simulate(limit: LatencyLimit, demand: int, service_s: float, rounds: int) -> list[float]:
    """A process where every decision in progress shares one CPU: ``n`` admitted at once each take
    ``n * service_s``. ``demand`` decisions want to run at any moment (the rest are shed). Returns the limit
    after each batch of decisions."""
    history = []
    for _ in range(rounds):
        admitted = 0
        while admitted < demand and limit.admit(admitted):
            admitted += 1
        for _ in range(admitted):
            limit.update(admitted * service_s)
        history.append(limit.limit)
    return history


def test_under_overload_the_limit_settles_where_the_decisions_meet_the_target() -> None:
    # 0.2 ms of CPU per decision and a 5 ms target: 25 decisions at once end in time, 26 do not
    limit = LatencyLimit(target_s=0.005, minimum=4, maximum=256)
    settled = simulate(limit, demand=400, service_s=0.0002, rounds=600)[-200:]
    assert 20 <= min(settled) and max(settled) <= 27, (min(settled), max(settled))


def test_a_costlier_decision_gets_a_lower_limit() -> None:
    # the same target, decisions four times as costly (a slower core, more candidates): about a quarter
    cheap = simulate(LatencyLimit(0.005, minimum=2, maximum=64), demand=200, service_s=0.0002, rounds=600)[-1]
    costly = simulate(LatencyLimit(0.005, minimum=2, maximum=64), demand=200, service_s=0.0008, rounds=600)[-1]
    assert 4 <= costly <= 7 and 20 <= cheap <= 27 and costly < cheap / 3


def test_a_process_that_keeps_up_keeps_the_maximum() -> None:
    # 40 at once take 8 ms, within a 10 ms target: nothing to cut, as with a fixed limit of 48
    limit = LatencyLimit(target_s=0.010, minimum=4, maximum=48)
    assert simulate(limit, demand=40, service_s=0.0002, rounds=500)[-1] == 48.0


def test_a_standing_queue_lowers_the_limit_once_per_round_down_to_the_minimum() -> None:
    limit = LatencyLimit(target_s=0.005, minimum=8, maximum=100)
    cuts = [limit.update(latency_s=0.050) for _ in range(100)]
    assert cuts.count(True) == 1 and cuts[-1] and limit.limit == pytest.approx(90.0)  # one round: one cut
    for _ in range(10_000):
        limit.update(latency_s=0.050)
    assert limit.limit == 8.0


def test_a_stall_that_makes_some_decisions_late_cuts_nothing() -> None:
    limit = LatencyLimit(target_s=0.005, minimum=8, maximum=48)
    # a GC pause or a noisy neighbour: one decision in ten ends 40 ms late, the others in 2 ms
    assert not any(limit.update(0.040 if i % 10 == 0 else 0.002) for i in range(10_000))
    assert limit.limit == 48.0


def test_the_limit_recovers_once_decisions_are_prompt_again() -> None:
    limit = LatencyLimit(target_s=0.005, minimum=4, maximum=48)
    for _ in range(5_000):
        limit.update(0.050)
    assert limit.limit == 4.0
    for _ in range(5_000):
        limit.update(0.001)
    assert limit.limit == 48.0


def test_admission_is_a_strict_bound_on_decisions_in_progress() -> None:
    limit = LatencyLimit(target_s=0.005, minimum=1, maximum=3)
    assert [limit.admit(n) for n in range(5)] == [True, True, True, False, False]


@pytest.mark.parametrize("kwargs", [
    {"target_s": 0.0}, {"target_s": 0.005, "minimum": 0}, {"target_s": 0.005, "minimum": 20, "maximum": 10},
    {"target_s": 0.005, "decrease": 1.0}, {"target_s": 0.005, "decrease": 0.0},
])
def test_bad_settings_are_refused_at_start(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LatencyLimit(**kwargs)  # type: ignore[arg-type]  # floats for its float fields
