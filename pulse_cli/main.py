"""The ``pulse`` command (a console script; docs/cli.md).

=====================================  ==============================================================
``pulse replay FILE``                  JSON lines or a Segment export into the events topic (progress
                                       bar and rate; ``--rate`` paces it; invalid events reported)
``pulse profile ID``                   a customer's or anonymous id's profile, from the admin API
``pulse export ID``                    everything held about a person (``--out FILE`` to save it)
``pulse config validate PATH``         the engine configuration: a summary, or every problem (exit 1)
``pulse keys new [--role R]``          a fresh API key as an ``API_KEYS`` entry, ``role:key``
=====================================  ==============================================================

The admin API is ``--api`` (``PULSE_API_URL``, default ``http://127.0.0.1:8000``) with an admin key from
``--key`` (``PULSE_ADMIN_KEY``); Kafka is ``--bootstrap`` (``KAFKA_BOOTSTRAP``) with the security settings of
every client (``engine/kafka_client.py``). Errors go to stderr with a non-zero exit: 1 for what the command
found (an invalid configuration, invalid events, no such profile), 2 for a wrong invocation.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import orjson
import typer
from rich.console import Console

app = typer.Typer(name="pulse", help="pulse: real-time personalisation, from the command line.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="The engine configuration.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DEFAULT_API = "http://127.0.0.1:8000"
ApiOption = Annotated[str, typer.Option("--api", envvar="PULSE_API_URL", help="the pulse API's base URL")]
KeyOption = Annotated[str, typer.Option("--key", envvar="PULSE_ADMIN_KEY", help="an admin API key",
                                        show_default=False)]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def _get(api: str, key: str, path: str) -> Any:
    """GET an admin route: the decoded JSON, or exit saying why (no key, refused, not found, unreachable)."""
    import httpx

    if not key:
        raise _fail("an admin key is needed: --key or PULSE_ADMIN_KEY", 2)
    try:
        r = httpx.get(api.rstrip("/") + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    except httpx.HTTPError as exc:
        raise _fail(f"{api} did not answer: {exc}") from None
    try:
        body = r.json()
    except ValueError:
        body = {"error": r.text[:500]}
    if r.status_code != 200:
        why = body.get("error") or body.get("detail") if isinstance(body, dict) else None
        raise _fail(f"{r.status_code} from {path}: {why or r.text[:500]}")
    return body


def _print_json(doc: Any) -> None:
    out.print_json(orjson.dumps(doc).decode(), indent=2)


@app.command()
def profile(person_id: Annotated[str, typer.Argument(help="a customer id or an anonymous id")],
            api: ApiOption = DEFAULT_API, key: KeyOption = "") -> None:
    """Show what is held about a customer or an anonymous id (GET /v1/profiles/ID)."""
    _print_json(_get(api, key, f"/v1/profiles/{quote(person_id, safe='')}"))


@app.command()
def export(person_id: Annotated[str, typer.Argument(help="a customer id or an anonymous id")],
           api: ApiOption = DEFAULT_API, key: KeyOption = "",
           output: Annotated[Path | None, typer.Option("--out", help="write the document to this file")] = None
           ) -> None:
    """Everything held about a person as one JSON document (GET /v1/profiles/ID/export)."""
    doc = _get(api, key, f"/v1/profiles/{quote(person_id, safe='')}/export")
    if output is None:
        _print_json(doc)
        return
    output.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    err.print(f"wrote {output} ({output.stat().st_size} bytes)", highlight=False)


@config_app.command("validate")
def config_validate(path: Annotated[Path, typer.Argument(help="the engine configuration (TOML)")],
                    overlay: Annotated[list[Path] | None, typer.Option(
                        "--overlay", help="a file merged on top (repeatable)")] = None) -> None:
    """Validate an engine configuration: a one-line summary, or every problem with its place (exit 1)."""
    from engine.config import ConfigError, load_config
    from engine.config.__main__ import summary

    if not path.is_file():
        raise _fail(f"{path}: no such file", 2)
    try:
        cfg = load_config(path, overlays=list(overlay or []))
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from None
    out.print(summary(str(path), cfg), highlight=False, markup=False)


@keys_app.command("new")
def keys_new(role: Annotated[str, typer.Option(help="public, server or admin")] = "server",
             sha256: Annotated[bool, typer.Option("--sha256", help="also print the key's SHA-256 (for an "
                                                  "API_KEYS_FILE entry that holds no secret) on stderr")] = False
             ) -> None:
    """A fresh random API key, printed as an API_KEYS entry: role:key."""
    from serving.auth import ROLES, new_key

    if role not in ROLES:
        raise _fail(f"unknown role {role!r}; roles: {', '.join(ROLES)}", 2)
    key = new_key(role)
    print(f"{role}:{key}")
    if sha256:
        err.print(f"key_sha256 = \"{hashlib.sha256(key.encode()).hexdigest()}\"", highlight=False)


@app.command()
def replay(file: Annotated[Path, typer.Argument(help="JSON lines (.gz too), a Segment export, or one JSON "
                                                     "list / batch")],
           bootstrap: Annotated[str, typer.Option(envvar="KAFKA_BOOTSTRAP", help="Kafka bootstrap servers")
                                ] = "127.0.0.1:9092",
           topic: Annotated[str, typer.Option(envvar="EVENTS_TOPIC", help="the events topic")] = "events",
           rate: Annotated[float, typer.Option(min=0, help="at most this many events per second (0: as fast "
                                                           "as Kafka takes them)")] = 0.0,
           strict: Annotated[bool, typer.Option(help="stop at the first invalid event")] = False,
           quiet: Annotated[bool, typer.Option(help="no progress bar")] = False) -> None:
    """Publish a file's events to the events topic, validated as the collector does; invalid ones are
    reported and skipped (exit 1 if any)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pulse_cli.replay import count_lines
    from pulse_cli.replay import replay as run

    if not file.is_file():
        raise _fail(f"{file}: no such file", 2)
    total = count_lines(file)
    progress = Progress(TextColumn("[bold]replay[/bold]"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("lines"), TextColumn("{task.fields[published]} published"),
                        TextColumn("{task.fields[rate]:.0f} events/s"), TimeElapsedColumn(),
                        console=err, disable=quiet, transient=False)
    started = time.monotonic()
    with progress:
        task = progress.add_task("replay", total=total, published=0, rate=0.0)

        def on_line(line: int, published: int) -> None:
            elapsed = time.monotonic() - started
            progress.update(task, completed=min(line, total), published=published,
                            rate=published / elapsed if elapsed > 0 else 0.0)

        try:
            result = asyncio.run(run(file, bootstrap, topic, rate=rate, strict=strict, on_line=on_line))
        except Exception as exc:  # Kafka unreachable, refused: say so, no traceback
            raise _fail(f"replay to {topic} at {bootstrap} failed: {exc!r}") from None
        progress.update(task, completed=total)
    for line, reason in result.reasons:
        err.print(f"line {line}: {reason}", highlight=False, markup=False)
    more = result.invalid - len(result.reasons)
    if more > 0:
        err.print(f"... and {more} more invalid events", highlight=False)
    out.print(f"published {result.published} events to {topic} in {result.seconds:.1f} s "
              f"({result.rate:.0f} events/s); {result.invalid} invalid", highlight=False)
    if result.invalid:
        raise typer.Exit(1)


def main() -> None:
    """The console script's entry point."""
    app(prog_name="pulse")


if __name__ == "__main__":
    main()
