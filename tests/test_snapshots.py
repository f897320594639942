"""Signed, data-only model snapshots: round trip per model class, tamper detection, and refusal of pickles,
forgeries, replays and mislabelled blobs."""

from __future__ import annotations

import ast
import doctest
import hashlib
import os
import pickle
import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import engine.snapshots
from engine.model_state import ModelState
from engine.policies import POLICIES, Candidate, CTRRanker, LinUCB, make_policy
from engine.recommend.signal import COVISIT_MODEL, COVISIT_STATE, CollaborativeSignal
from engine.settings import REPO_ROOT
from engine.snapshots import MAGIC, MODEL_KINDS, SnapshotError, dump_model, load_model, read_header

KEY = b"k" * 32
OTHER = b"o" * 32
ACTIONS = [Candidate(f"a{i}", {f"cat:c{i % 4}": 1.0}) for i in range(12)]
CTX = {"aff_cat:c1": 0.9, "segment:s1": 1.0}


def _trained(name: str, n: int = 400) -> Any:
    policy = make_policy(name)
    rng = random.Random(0)
    for _ in range(n):
        ctx = {f"aff_cat:c{rng.randrange(4)}": rng.random(), "segment:s1": 1.0, "recency_h": rng.random() * 9}
        policy.learn_one(ctx, ACTIONS[rng.randrange(len(ACTIONS))], float(rng.random() < 0.2))
    return policy


def _signal(visitors: int = 60) -> CollaborativeSignal:
    rng = random.Random(1)
    signal = CollaborativeSignal(top_k=8, history_size=5, half_life=50.0)
    rows = [[f"v{rng.randrange(visitors)}", f"i{int(rng.paretovariate(1.2)) % 40}", rng.choice((0.5, 1.0, 2.0)),
             float(t)] for t in range(3000)]
    signal.learn_many(rows)
    return signal


def _old_format_blob(model: object, key: bytes = KEY) -> bytes:
    """A blob exactly as the previous (format 1) code wrote it: a zlib-compressed pickle, validly signed."""
    payload = zlib.compress(pickle.dumps(model, protocol=5), 1)
    header = orjson.dumps({"format": 1, "model_version": 9, "policy": "linucb",
                           "policy_class": "engine.policies.linear.LinUCB", "created_at": "x", "n_updates": 1,
                           "payload_len": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
                           "compression": "zlib", "pickle_protocol": 5})
    body = engine.snapshots._PREFIX.pack(MAGIC, 1, len(header)) + header + payload
    return body + engine.snapshots._mac(key, body)


def _resigned(blob: bytes, edit: Any, key: bytes = KEY) -> bytes:
    """``blob`` with its header edited by ``edit`` (a function of the header dict) and signed again with
    ``key``: what a holder of the key could produce."""
    _, fmt, header_len = engine.snapshots._PREFIX.unpack_from(blob)
    start = engine.snapshots._PREFIX.size
    header = orjson.loads(blob[start:start + header_len])
    payload = blob[start + header_len:-32]
    header, payload = edit(header, payload)
    raw = orjson.dumps(header)
    body = engine.snapshots._PREFIX.pack(MAGIC, fmt, len(raw)) + raw + payload
    return body + engine.snapshots._mac(key, body)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_each_policy_ranks_the_same_after_from_state_to_state_and_through_a_snapshot(name: str) -> None:
    policy = _trained(name)
    direct = type(policy).from_state(policy.to_state())
    blob = dump_model(policy, 42, KEY, name=f"home/{name}")
    loaded, version = load_model(blob, KEY, name=f"home/{name}", kind=name)
    assert version == 42 and type(loaded) is type(policy) is type(direct)
    assert loaded.n_updates == direct.n_updates == policy.n_updates == 400
    for seed in range(5):
        want = policy.rank(CTX, ACTIONS, 4, random.Random(seed))
        assert loaded.rank(CTX, ACTIONS, 4, random.Random(seed)) == want
        if name != "linear_thompson":  # its generator is per object: the first rank above drew from it
            assert direct.rank(CTX, ACTIONS, 4, random.Random(seed)) == want
    loaded.learn_one(CTX, ACTIONS[0], 1.0)  # keeps learning after a reload, as the original does
    policy.learn_one(CTX, ACTIONS[0], 1.0)
    assert loaded.n_updates == 401
    if name != "linear_thompson":
        assert loaded.rank(CTX, ACTIONS, 4, random.Random(9)) == policy.rank(CTX, ACTIONS, 4, random.Random(9))
    header = read_header(blob, KEY)
    assert (header.kind, header.name, header.model_version, header.n_updates) == (name, f"home/{name}", 42, 400)


def test_linear_thompson_posterior_is_exactly_the_same_after_a_reload() -> None:
    policy = _trained("linear_thompson")
    loaded, _ = load_model(dump_model(policy, 1, KEY, name="p/lt"), KEY, name="p/lt")
    for seed in range(3):
        ctx = {"aff_cat:c2": random.Random(seed).random(), "segment:s1": 1.0}
        for a, b in zip(policy.posterior(ctx, ACTIONS), loaded.posterior(ctx, ACTIONS), strict=True):
            assert np.array_equal(a, b)
        fresh = [load_model(dump_model(policy, 1, KEY, name="p/lt"), KEY, name="p/lt")[0] for _ in range(2)]
        assert fresh[0].rank(ctx, ACTIONS, 3, random.Random(seed)) == fresh[1].rank(ctx, ACTIONS, 3,
                                                                                     random.Random(seed))


def test_ctr_ranker_keeps_learning_exactly_as_the_original_with_sgd_and_adagrad() -> None:
    from river import linear_model, optim

    for optimizer in (optim.SGD(0.05), optim.AdaGrad(0.1)):
        ranker = CTRRanker(epsilon=0.1, model=linear_model.LogisticRegression(optimizer=optimizer, l2=0.001))
        rng = random.Random(3)
        for _ in range(300):
            ranker.learn_one({"aff_cat:c1": rng.random()}, ACTIONS[rng.randrange(12)], float(rng.random() < 0.3))
        assert set(map(type, ranker.model._weights.to_dict())) == {int}
        loaded, _ = load_model(dump_model(ranker, 1, KEY, name="p/ctr"), KEY, name="p/ctr")
        for _ in range(100):
            ctx, a, r = {"aff_cat:c2": rng.random()}, ACTIONS[rng.randrange(12)], float(rng.random() < 0.3)
            ranker.learn_one(ctx, a, r)
            loaded.learn_one(ctx, a, r)
        assert loaded.predict(CTX, ACTIONS) == ranker.predict(CTX, ACTIONS)
        assert loaded.model._weights.to_dict() == ranker.model._weights.to_dict()


def test_ctr_ranker_with_another_river_model_refuses_to_be_snapshotted() -> None:
    from river import linear_model, optim

    ranker = CTRRanker(model=linear_model.LogisticRegression(optimizer=optim.Adam()))
    with pytest.raises(TypeError, match="CTRRanker snapshots support"):
        dump_model(ranker, 1, KEY, name="p/ctr")


def test_co_visitation_signal_round_trips_with_and_without_histories() -> None:
    signal = _signal()
    histories = [["i1", "i3"], ["i0"], ["i7", "i2", "i9"], ["unknown"]]
    items = [f"i{k}" for k in range(40)]
    for model, name in ((signal, COVISIT_STATE), (signal.for_serving(), COVISIT_MODEL)):
        direct = CollaborativeSignal.from_state(model.to_state())
        loaded, version = load_model(dump_model(model, 3, KEY, name=name), KEY, name=name, kind="covisit")
        assert version == 3
        for other in (direct, loaded):
            assert other.n_updates == signal.n_updates and other.model.state_size() == model.model.state_size()
            for h in histories:
                assert other.candidate_scores(h, items) == signal.candidate_scores(h, items)
            assert other.model.history("v3") == model.model.history("v3")
    # the learner's state goes on learning exactly as the model it was taken from
    loaded, _ = load_model(dump_model(signal, 4, KEY, name=COVISIT_STATE), KEY, name=COVISIT_STATE)
    more = [[f"v{k % 70}", f"i{(k * 7) % 45}", 1.0, 3000.0 + k] for k in range(2000)]
    signal.learn_many(more)
    loaded.learn_many(more)
    assert np.array_equal(loaded.model._w[:len(loaded.model.row_items)], signal.model._w[:len(signal.model.row_items)])
    assert loaded.model.history("v5") == signal.model.history("v5")
    assert all(loaded.model.neighbours(i) == signal.model.neighbours(i) for i in items)


def test_snapshot_ships_only_used_capacity() -> None:
    policy = LinUCB()
    for i in range(3):
        policy.learn_one({"x": 1.0}, Candidate(f"a{i}"), 1.0)
    assert policy._Ainv.shape[0] == 8  # capacity
    loaded, _ = load_model(dump_model(policy, 1, KEY, name="p/linucb"), KEY, name="p/linucb")
    assert loaded._Ainv.shape[0] == 4  # prior row + 3 actions
    loaded.learn_one({"x": 1.0}, Candidate("a9"), 1.0)  # and it grows again when needed
    assert loaded.n_actions == 4


def test_tampering_anywhere_is_detected() -> None:
    blob = dump_model(_trained("linucb", 50), 1, KEY, name="p/linucb")
    for pos in (0, 9, 20, len(blob) // 2, len(blob) - 40, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(SnapshotError):
            load_model(bytes(bad), KEY, name="p/linucb")
    for cut in (0, 10, len(blob) - 1):
        with pytest.raises(SnapshotError):
            load_model(blob[:cut], KEY, name="p/linucb")
    with pytest.raises(SnapshotError, match="bad signature") as info:
        load_model(blob, OTHER, name="p/linucb")
    assert info.value.reason == "signature"
    with pytest.raises(SnapshotError):
        load_model(blob + b"x", KEY, name="p/linucb")


def test_forged_blob_is_refused_with_reason_signature() -> None:
    forged = dump_model(_trained("popularity", 20), 99, b"attacker-key-of-32-bytes-or-more!", name="p/popularity")
    with pytest.raises(SnapshotError) as info:
        load_model(forged, KEY, name="p/popularity")
    assert info.value.reason == "signature"


def test_mislabelled_blob_is_refused_with_reason_name() -> None:
    blob = dump_model(_trained("linucb", 20), 5, KEY, name="home/linucb")
    with pytest.raises(SnapshotError, match="not 'cart/linucb'") as info:
        load_model(blob, KEY, name="cart/linucb")
    assert info.value.reason == "name"
    with pytest.raises(SnapshotError, match="holds a 'linucb' model") as info:
        load_model(blob, KEY, name="home/linucb", kind="popularity")
    assert info.value.reason == "name"
    state = dump_model(_signal(), 2, KEY, name=COVISIT_STATE)  # the learner's state is not served
    with pytest.raises(SnapshotError) as info:
        load_model(state, KEY, name=COVISIT_MODEL)
    assert info.value.reason == "name"


def test_replayed_blob_is_refused_with_reason_replay() -> None:
    policy = _trained("linucb", 20)
    old = dump_model(policy, 4, KEY, name="p/linucb")
    assert load_model(old, KEY, name="p/linucb", newer_than=3, expect_version=4)[1] == 4
    for newer_than, published in ((4, 5), (7, 8), (3, 5)):  # already loaded / older / published as another version
        with pytest.raises(SnapshotError) as info:
            load_model(old, KEY, name="p/linucb", newer_than=newer_than, expect_version=published)
        assert info.value.reason == "replay"


def test_a_correctly_signed_pickle_of_the_old_format_is_refused_without_unpickling() -> None:
    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, ("touch /tmp/pulse-snapshot-pwned",))

    marker = Path("/tmp/pulse-snapshot-pwned")
    marker.unlink(missing_ok=True)
    for model in (_trained("linucb", 5), Exploit()):
        with pytest.raises(SnapshotError, match="unsupported snapshot format 1") as info:
            load_model(_old_format_blob(model), KEY, name="p/linucb")
        assert info.value.reason == "format"
    assert not marker.exists()


def test_a_signed_new_format_blob_with_a_pickle_payload_is_refused() -> None:
    blob = dump_model(_trained("random", 1), 1, KEY, name="p/random")

    def pickled(header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        raw = pickle.dumps(_trained("random", 1))
        new = zlib.compress(raw)
        return {**header, "payload_len": len(new), "raw_len": len(raw), "params_len": len(raw)}, new

    with pytest.raises(SnapshotError, match="not JSON") as info:
        load_model(_resigned(blob, pickled), KEY, name="p/random")
    assert info.value.reason == "format"


def test_object_arrays_and_unknown_kinds_are_refused_even_when_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = dump_model(_trained("linucb", 5), 1, KEY, name="p/linucb")
    for edit, message in (
        (lambda h, p: ({**h, "arrays": [[a[0], "|O", a[2], a[3]] for a in h["arrays"]]}, p), "not allowed"),
        (lambda h, p: ({**h, "arrays": [[a[0], a[1], [10**9, 10**9], a[3]] for a in h["arrays"]]}, p), "outside"),
        (lambda h, p: ({**h, "kind": "builtins.eval"}, p), "unknown model kind"),
        (lambda h, p: ({**h, "raw_len": 1 << 40}, p), "out of bounds"),
    ):
        with pytest.raises(SnapshotError, match=message):
            load_model(_resigned(blob, edit), KEY, name="p/linucb")
    monkeypatch.setattr(MODEL_KINDS["random"], "to_state", lambda self: ModelState({}, {"x": np.array([object()])}))
    with pytest.raises(TypeError, match="dtype"):  # nor written
        dump_model(_trained("random", 1), 1, KEY, name="p/random")


def test_inconsistent_states_are_refused() -> None:
    policy = _trained("linucb", 20)

    def shrink(header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        arrays = [[n, d, [s[0] - 1, *s[1:]] if n == "b" else s, o] for n, d, s, o in header["arrays"]]
        return {**header, "arrays": arrays}, payload

    with pytest.raises(SnapshotError, match="not a valid linucb model.*'b' has shape"):
        load_model(_resigned(dump_model(policy, 1, KEY, name="p/l"), shrink), KEY, name="p/l")


def test_key_rotation_and_key_rules() -> None:
    blob = dump_model(_trained("popularity", 10), 3, OTHER, name="p/popularity")
    assert load_model(blob, [KEY, OTHER], name="p/popularity")[1] == 3
    with pytest.raises(ValueError, match="at least 16 bytes"):
        dump_model(_trained("random", 1), 1, b"short", name="p/random")
    with pytest.raises(ValueError):
        load_model(blob, b"", name="p/popularity")
    with pytest.raises(TypeError):
        dump_model(object(), 1, KEY, name="p/x")  # type: ignore[arg-type]


def test_no_pickle_anywhere_in_the_shipped_code() -> None:
    """Nothing the services run imports pickle (nor marshal/shelve/dill): no code from a blob, a message or a
    shared file can run. Tests may use it to build hostile inputs."""
    banned = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
    found = []
    for package in ("engine", "serving", "streams", "schemas", "infra", "bench"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.split(".")[0] in banned]
    assert found == []


def test_docstring_examples_run() -> None:
    result = doctest.testmod(engine.snapshots)
    assert result.attempted > 0 and result.failed == 0


def test_the_snapshot_size_benchmark_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import snapshot_size

    monkeypatch.setenv("BENCH_RESULTS_DIR", str(tmp_path))
    assert snapshot_size.main(["--visitors", "40", "--examples", "100", "--repeats", "1"]) == 0
    result = orjson.loads((tmp_path / "snapshot_size.json").read_bytes())
    for part in ("covisit_blob", "covisit_state", "linear_thompson"):
        assert result[part]["bytes"] > 0 and result[part]["load_ms"] > 0
    assert result["covisit_blob"]["bytes"] < result["covisit_state"]["bytes"]
