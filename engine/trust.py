"""Who sent an event, and which event types a web page may send.

The collector (``serving/collector.py``) stamps every event it publishes with Kafka headers: ``pulse-source``
says which kind of API key the caller used, ``public`` (a key embedded in web pages: anyone can send with it)
or ``server`` (a site back end's key, or an admin key), and ``pulse-key`` names the key (for audit). An event
that a producer publishes to Kafka directly carries no ``pulse-source``: it is trusted, because only the
producers that the events topic's ACLs admit can write there (docs/security.md). An unknown value is not
trusted. The envelope schema admits no extra top-level field, so the source travels in headers, not in the
event.

>>> headers = source_headers(PUBLIC, "shop-web")
>>> headers
[('pulse-source', b'public'), ('pulse-key', b'shop-web')]
>>> source_of(headers), is_trusted(headers)
('public', False)
>>> is_trusted(source_headers(SERVER, "shop-backend")), source_of([]), is_trusted([])
(True, 'direct', True)
>>> is_trusted([(SOURCE_HEADER, b"forged")])
False
"""

from __future__ import annotations

from collections.abc import Iterable

#: Kafka header with the trust source of an event published by the collector.
SOURCE_HEADER = "pulse-source"
#: Kafka header with the name of the API key the collector accepted the event with.
KEY_HEADER = "pulse-key"

#: A public key (web pages, apps): the caller may be anyone.
PUBLIC = "public"
#: A server or admin key: the site's own back end.
SERVER = "server"
#: No ``pulse-source`` header: published to Kafka directly by a producer the topic ACLs admit.
DIRECT = "direct"
TRUSTED_SOURCES = frozenset({SERVER, DIRECT})

#: The event types a ``public`` key may send: what a browser sees happen. ``identify`` and ``consent`` from
#: a public key are untrusted (the stream links nothing and records consent for anonymous ids only unless an
#: identity proof says otherwise); ``purchase`` and ``feedback`` come from the site's back end only. A forged
#: ``impression`` only makes its sender see an action less often (caps are per visitor); a ``track`` (a named
#: event of no other type) is counted on its sender's own profile only.
PUBLIC_EVENT_TYPES = frozenset({"page_view", "click", "add_to_cart", "remove_from_cart", "search", "identify",
                                "consent", "impression", "track"})

Headers = Iterable[tuple[str, bytes]]


def source_headers(source: str, key_name: str) -> list[tuple[str, bytes]]:
    """The headers the collector publishes an event with."""
    return [(SOURCE_HEADER, source.encode()), (KEY_HEADER, key_name.encode())]


def source_of(headers: Headers | None) -> str:
    """``public``, ``server``, ``direct`` (no header) or the unknown value found (not trusted)."""
    for name, value in headers or ():
        if name == SOURCE_HEADER:
            return value.decode("utf-8", "replace")
    return DIRECT


def is_trusted(headers: Headers | None) -> bool:
    """Whether an event with these headers comes from the site itself (a server key or a direct producer)."""
    return source_of(headers) in TRUSTED_SOURCES
