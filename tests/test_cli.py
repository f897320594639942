"""The ``pulse`` command's offline parts: config validate, keys new, replay's reading and its errors.
(``tests/integration/test_cli.py`` runs replay, profile and export against real Kafka, worker, API and Redis.)"""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
from typer.testing import CliRunner

from engine.settings import REPO_ROOT
from pulse_cli.main import app
from pulse_cli.replay import count_lines, read_events
from schemas import InvalidEvent
from serving.auth import parse_api_keys

runner = CliRunner()


def test_config_validate_summarises_a_good_file_and_names_every_problem_of_a_bad_one(tmp_path: Path) -> None:
    good = runner.invoke(app, ["config", "validate", str(REPO_ROOT / "config" / "engine.toml")])
    assert good.exit_code == 0, good.output
    assert "engine.toml: ok:" in good.stdout and "placements" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[profile]\nttl_day = 1\n[[placement]]\nid = "p"\nmax_items = 0\n')
    result = runner.invoke(app, ["config", "validate", str(bad)])
    assert result.exit_code == 1
    assert "profile.ttl_day: unknown key" in result.stderr and "placement[0].max_items" in result.stderr
    missing = runner.invoke(app, ["config", "validate", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "no such file" in missing.stderr


def test_keys_new_prints_an_api_keys_entry() -> None:
    result = runner.invoke(app, ["keys", "new", "--role", "public"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    [key] = parse_api_keys(line)  # what API_KEYS takes, long enough outside development
    assert key.role == "public" and line.startswith("public:pulse_public_")
    assert runner.invoke(app, ["keys", "new"]).stdout.startswith("server:")
    assert runner.invoke(app, ["keys", "new"]).stdout != runner.invoke(app, ["keys", "new"]).stdout
    digest = runner.invoke(app, ["keys", "new", "--sha256"])
    assert digest.stderr.startswith('key_sha256 = "') and len(digest.stderr.strip()) == len('key_sha256 = ""') + 64
    wrong = runner.invoke(app, ["keys", "new", "--role", "root"])
    assert wrong.exit_code == 2 and "unknown role 'root'" in wrong.stderr


def test_profile_and_export_need_a_key_and_say_when_the_api_is_away() -> None:
    no_key = runner.invoke(app, ["profile", "c-1"], env={"PULSE_ADMIN_KEY": ""})
    assert no_key.exit_code == 2 and "an admin key is needed" in no_key.stderr
    away = runner.invoke(app, ["export", "c-1", "--api", "http://127.0.0.1:9", "--key", "k"])
    assert away.exit_code == 1 and "did not answer" in away.stderr


SEARCH = {"event_id": "e-1", "type": "search", "timestamp": 1714564800000, "anonymous_id": "a-1",
          "properties": {"query": "hats"}}
SEGMENT = {"type": "track", "event": "Video Played", "messageId": "m-1", "anonymousId": "a-2",
           "timestamp": "2024-05-01T12:00:00Z", "sentAt": "2024-05-01T12:00:10Z",
           "receivedAt": "2024-05-01T12:00:00Z"}


def test_replay_reads_json_lines_gzip_segment_exports_and_documents(tmp_path: Path) -> None:
    lines = tmp_path / "events.jsonl.gz"
    lines.write_bytes(gzip.compress(b"\n".join([orjson.dumps(SEARCH), b"", orjson.dumps(SEGMENT),
                                                orjson.dumps({"batch": [SEARCH, SEGMENT]}), b"{oops",
                                                orjson.dumps({**SEARCH, "type": "searched"})]) + b"\n"))
    got = list(read_events(lines))
    assert [n for n, _ in got] == [1, 3, 4, 4, 5, 6]
    events = [e for _, e in got if not isinstance(e, InvalidEvent)]
    # the Segment export's receivedAt/sentAt corrected its clock: 10 s
    assert [(e.type, e.timestamp) for e in events] == [("search", 1714564800.0), ("track", 1714564790.0),
                                                       ("search", 1714564800.0), ("track", 1714564790.0)]
    reasons = [e.reason for _, e in got if isinstance(e, InvalidEvent)]
    assert reasons[0].startswith("line 5: not valid JSON") and reasons[1].startswith("type: unknown event type")
    assert count_lines(lines) == 5
    document = tmp_path / "batch.json"
    document.write_bytes(orjson.dumps({"batch": [SEARCH, SEGMENT]}, option=orjson.OPT_INDENT_2))
    assert [e.type for _, e in read_events(document)] == ["search", "track"]  # type: ignore[union-attr]


def test_replay_refuses_a_missing_file_and_an_unreachable_kafka(tmp_path: Path) -> None:
    assert runner.invoke(app, ["replay", str(tmp_path / "none.jsonl")]).exit_code == 2
    f = tmp_path / "one.jsonl"
    f.write_bytes(orjson.dumps(SEARCH) + b"\n")
    result = runner.invoke(app, ["replay", str(f), "--bootstrap", "127.0.0.1:9", "--quiet"])
    assert result.exit_code == 1 and "failed" in result.stderr
