from engine.config import RewardSettings
from engine.decisions import CONTROL_ARM, LEARNING_ARM, holdout_arm, reward_of, reward_value


def test_holdout_share_is_respected_and_sticky() -> None:
    arms = [holdout_arm(f"visitor-{i}", "home", 0.2) for i in range(20_000)]
    share = arms.count(CONTROL_ARM) / len(arms)
    assert 0.18 < share < 0.22
    assert arms == [holdout_arm(f"visitor-{i}", "home", 0.2) for i in range(20_000)]
    # independent per placement: the same visitor is not always in control everywhere
    other = [holdout_arm(f"visitor-{i}", "recs", 0.2) for i in range(20_000)]
    assert arms != other
    assert {holdout_arm(f"v{i}", "home", 0.0) for i in range(100)} == {LEARNING_ARM}


def test_rewards_carried_by_events() -> None:
    assert reward_of("page_view", {"decision_id": "d"}) is None
    assert reward_of("click", {"item_id": "x"}) is None
    c = reward_of("click", {"decision_id": "d", "action_id": "a"})
    assert c is not None and c.kind == "click" and c.action_id == "a"
    p = reward_of("purchase", {"decision_id": "d", "value": 42.0})
    assert p is not None and p.kind == "conversion" and p.value == 42.0
    f = reward_of("feedback", {"decision_id": "d", "action_id": "a", "kind": "dismiss"})
    assert f is not None and reward_value(f, RewardSettings()) == 0.0
    assert reward_value(p, RewardSettings()) == 1.0
    assert reward_value(p, RewardSettings(conversion_value=True)) == 42.0
