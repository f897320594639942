"""The decide request contract and its OpenAPI description, without infrastructure."""

import orjson
import pytest

from engine.config import load_config
from engine.settings import REPO_ROOT
from serving.decide import DecideRequestError, parse_decide_request

CFG = load_config(REPO_ROOT / "config" / "engine.toml")


def parse(body: dict) -> object:
    return parse_decide_request(orjson.dumps(body), CFG)


def test_valid_request_defaults_n_to_the_placement() -> None:
    req = parse({"anonymous_id": "a", "placement": "home_hero", "context": {"channel": "web"}})
    assert req.n == CFG.placements["home_hero"].max_items and req.candidates is None


@pytest.mark.parametrize(("body", "reason"), [
    ({"anonymous_id": "a"}, "placement: unknown placement None"),
    ({"anonymous_id": "a", "placement": "nope"}, "unknown placement 'nope'"),
    ({"anonymous_id": "", "placement": "home_hero"}, "anonymous_id: must be a non-empty string"),
    ({"customer_id": 5, "placement": "home_hero"}, "customer_id"),
    ({"anonymous_id": "a", "placement": "home_hero", "n": 0}, "n: must be an integer from 1"),
    ({"anonymous_id": "a", "placement": "home_hero", "n": True}, "n: must be an integer"),
    ({"anonymous_id": "a", "placement": "home_hero", "candidates": ["ghost"]}, "unknown action ids ['ghost']"),
    ({"anonymous_id": "a", "placement": "home_hero", "context": []}, "context: must be an object"),
])
def test_invalid_requests_say_why(body: dict, reason: str) -> None:
    with pytest.raises(DecideRequestError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse(body)


def test_not_json_is_a_clear_error() -> None:
    with pytest.raises(DecideRequestError, match="not valid JSON"):
        parse_decide_request(b"{", CFG)


def test_openapi_documents_the_final_shapes() -> None:
    from serving.app import create_app

    spec = create_app().openapi()
    decide = spec["paths"]["/v1/decide"]["post"]
    req = decide["requestBody"]["content"]["application/json"]["schema"]
    assert req["required"] == ["placement"]
    resp = decide["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    assert {"decision_id", "actions", "policy", "model_version", "degraded", "holdout_arm", "propensity"} <= set(resp)
    assert {"202", "422", "503"} <= set(spec["paths"]["/v1/events"]["post"]["responses"])
