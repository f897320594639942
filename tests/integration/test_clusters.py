"""Behavioural clusters on the real stack: the ingest worker sends the vectors of the profiles it changed, the
learner's online k-means separates two kinds of visitors, the admin endpoint describes them, and decide puts each
visitor in its cluster's segment, which audiences use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra import local
from tests.support import (
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    produce,
    wait_http_ready,
    wait_until,
    with_key,
    worker_process,
)

pytestmark = pytest.mark.integration
CONFIG = str(Path(__file__).parent / "config" / "clusters.toml")


@pytest.fixture(scope="module")
def cluster_stack(kafka: local.KafkaService, redis_server: local.RedisService, log_dir: Path
                  ) -> Iterator[tuple[Stack, str]]:
    stack = Stack(kafka.bootstrap, f"{redis_server.url.rsplit('/', 1)[0]}/13")  # its own models
    stack.create_topics()
    worker = worker_process(stack, log_dir, name=f"worker-clusters-{stack.tag}", ENGINE_CONFIG=CONFIG).start()
    port = free_port()
    api = api_process(stack, log_dir, port, **keys_env(), ENGINE_CONFIG=CONFIG).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(base, api)
        yield stack, with_key(base)
    finally:
        api.stop()
        worker.stop()


def test_two_kinds_of_visitors_become_two_described_clusters_used_by_audiences(
        cluster_stack: tuple[Stack, str]) -> None:
    stack, api = cluster_stack
    tag = uuid.uuid4().hex[:6]
    browsers = [f"anon-browse-{tag}-{i}" for i in range(8)]
    buyers = [f"anon-buy-{tag}-{i}" for i in range(8)]
    events = []
    for v in browsers:  # look at shoes, buy nothing
        events += [event("page_view", v, category="shoes", item_id="sku-shoe-1") for _ in range(2)]
    for v in buyers:  # many books, and purchases
        events += [event("page_view", v, category="books", item_id="sku-book-1") for _ in range(20)]
        events += [event("purchase", v, category="books", item_id="sku-book-1", order_id=f"o-{v}", value=250.0)]
    produce(stack.bootstrap, stack.events_topic, events)

    def described() -> list[dict] | None:
        body = httpx.get(f"{api}/v1/admin/clusters").json()
        found = body["clusters"]
        return found if len(found) == 2 and body["profiles_learned"] >= len(browsers) + len(buyers) else None

    clusters = wait_until(described, timeout=60, what="two clusters published")
    by_top = {c["top_values"][0][0]: c for c in clusters}
    assert set(by_top) == {"shoes", "books"}, clusters
    books, shoes = by_top["books"], by_top["shoes"]
    assert books["mean_value"] > 100 and shoes["mean_value"] == 0.0
    assert books["activity"]["log_purchase"] > 0 and shoes["activity"].get("log_purchase", 0) == 0
    assert books["size"] > 0 and shoes["size"] > 0
    # decide: each visitor in its cluster's segment; the action whose audience names it is the one shown
    for visitor, cluster in ((buyers[0], books), (browsers[0], shoes)):
        r = httpx.post(f"{api}/v1/decide", json={"anonymous_id": visitor, "placement": "home_hero",
                                                 "candidates": ["promo-cluster-0", "promo-cluster-1"]})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert cluster["segment"] in answer["segments"], (answer, cluster)
        assert [a["action_id"] for a in answer["actions"]] == [f"promo-cluster-{cluster['cluster']}"]
    profile = httpx.get(f"{api}/v1/profiles/{buyers[1]}").json()
    assert books["segment"] in profile["segments"]
