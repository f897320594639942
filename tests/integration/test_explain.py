"""``"explain": true`` on the real stack: eligibility with the rule that excluded a candidate, the baseline's
terms that add up to the score it answered, and a learned policy's posterior."""

from __future__ import annotations

import math
import uuid

import httpx
import pytest

from tests.support import Stack, event, produce, wait_until

pytestmark = pytest.mark.integration


def explained(api: str, visitor: str, placement: str = "home_hero", **extra: object) -> dict:
    r = httpx.post(f"{api}/v1/decide", json={"anonymous_id": visitor, "placement": placement, "n": 3,
                                             "explain": True, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_explain_names_the_excluding_rule_and_the_terms_of_each_score(stack: Stack, worker: object,
                                                                      api: str) -> None:
    visitor = f"anon-explain-{uuid.uuid4().hex[:6]}"
    produce(stack.bootstrap, stack.events_topic,
            [event("click", visitor, category="jackets", item_id="sku-jacket-1") for _ in range(3)])
    answer = wait_until(lambda: (lambda a: a if a["personalised"] else None)(explained(api, visitor)),
                        timeout=60, what="the visitor's profile")
    by_id = {c["action_id"]: c for c in answer["explanation"]["candidates"]}
    # no cart: the free-shipping offer is for has_cart members only, and the explanation says so
    assert by_id["promo-free-shipping"] == {"action_id": "promo-free-shipping", "eligible": False,
                                            "excluded_by": "audience: a member of none of has_cart"}
    shown = [a["action_id"] for a in answer["actions"]]
    for rank, action in enumerate(answer["actions"]):
        entry = by_id[action["action_id"]]
        assert entry["eligible"] and entry["rank"] == rank
        terms = {t["term"]: t["value"] for t in entry["contributions"]}
        prior = terms.pop("popularity prior")
        assert math.isclose(prior * (1 + sum(terms.values())), action["score"], rel_tol=1e-5), entry
    jackets = by_id["promo-winter-jackets"]
    assert "promo-winter-jackets" in shown and any(t["term"] == "category affinity" and t["value"] > 0
                                                   for t in jackets["contributions"])
    below = [c for c in by_id.values() if c["eligible"] and c["action_id"] not in shown]
    assert below and all(c["rank"] is None for c in below)
    # without explain, no explanation; a non-boolean explain is refused
    plain = httpx.post(f"{api}/v1/decide", json={"anonymous_id": visitor, "placement": "home_hero"}).json()
    assert "explanation" not in plain
    bad = httpx.post(f"{api}/v1/decide", json={"anonymous_id": visitor, "placement": "home_hero", "explain": "yes"})
    assert bad.status_code == 400 and "explain" in bad.json()["error"]


def test_explain_gives_a_learned_policy_s_posterior(stack: Stack, worker: object, api: str) -> None:
    for i in range(40):  # some visitors land on the learning arm, some on the control (baseline) arm
        answer = explained(api, f"anon-explain-{i}-{uuid.uuid4().hex[:4]}", "product_recs")
        entries = [c for c in answer["explanation"]["candidates"] if c["eligible"]]
        assert entries
        if answer["policy"] == "linear_thompson":
            assert all(c["uncertainty"] >= 0 and math.isfinite(c["expected_reward"]) for c in entries), entries
            return
        assert all("contributions" in c for c in entries)
    pytest.fail("no visitor of 40 was on the learning arm (holdout_share is 0.1)")
