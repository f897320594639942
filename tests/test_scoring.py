from engine.config import Action, ScoringSettings
from engine.scoring import AffinityPopularityScorer, PopularitySnapshot

SHOES = Action(id="shoes", placements=("p",), category="shoes", item_id="s1", tags=("sale",))
BOOKS = Action(id="books", placements=("p",), category="books", item_id="b1")
HATS = Action(id="hats", placements=("p",), category="hats", item_id="h1")


def test_popularity_orders_anonymous_visitors() -> None:
    pop = PopularitySnapshot({"item": {"b1": 50.0, "h1": 5.0}})
    ranked = AffinityPopularityScorer(ScoringSettings()).rank([SHOES, BOOKS, HATS], None, pop)
    assert [a.id for a, _ in ranked] == ["books", "hats", "shoes"]


def test_affinity_overrides_moderate_popularity() -> None:
    pop = PopularitySnapshot({"item": {"b1": 3.0}})
    scorer = AffinityPopularityScorer(ScoringSettings())
    ranked = scorer.rank([SHOES, BOOKS, HATS], {"category": {"shoes": 1.0}, "item": {"s1": 1.0}}, pop)
    assert ranked[0][0].id == "shoes"
    assert ranked[0][1] > ranked[1][1]


def test_ties_are_deterministic() -> None:
    scorer = AffinityPopularityScorer(ScoringSettings())
    a = scorer.rank([HATS, BOOKS], None, PopularitySnapshot())
    b = scorer.rank([BOOKS, HATS], None, PopularitySnapshot())
    assert [x.id for x, _ in a] == [x.id for x, _ in b] == ["books", "hats"]
