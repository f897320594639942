"""Who may say who a visitor is: the trust rules of ``identify`` and ``consent`` events.

An anonymous id is whatever a browser says; a customer id is only believed from the site itself. An event
that links an anonymous id to a customer (``identify``) or sets a customer's consent is *trusted* when

* it comes from the site's back end: a ``server`` key at the collector, or a producer that the events topic's
  ACLs admit (no ``pulse-source`` header; ``engine/trust.py``, docs/security.md), or
* it comes from a browser (``public`` key) with an identity proof: ``properties.user_hash`` =
  HMAC-SHA256(``IDENTITY_SECRET``, customer id) in hex, which the site's back end computed for the logged-in
  customer (as Intercom's and Zendesk's identity verification work), checked in constant time, and only when
  ``IDENTITY_PROOFS`` is on.

An untrusted identify is recorded on the anonymous id's profile and links nothing; an untrusted consent
for a customer id applies to the anonymous id only (none given: it is dead-lettered). The same holds for every
other event a browser sends: its customer id is believed only with a proof (else the event goes to its
anonymous id, which a trusted identify may have linked to the customer), so a page cannot write into any
customer's profile by naming them (:func:`needs_belief`).

>>> secret = b"s" * 32
>>> proof = identity_proof(secret, "cust-1")
>>> len(proof), verify_proof(secret, "cust-1", proof), verify_proof(secret, "cust-2", proof)
(64, True, False)
>>> verify_proof(secret, "cust-1", proof.upper()), verify_proof(secret, "cust-1", None), verify_proof(b"", "c", "")
(True, False, False)
>>> policy = IdentityPolicy(secret)
>>> policy.trusted([], "cust-1", {}), policy.trusted([("pulse-source", b"public")], "cust-1", {})
(True, False)
>>> policy.trusted([("pulse-source", b"public")], "cust-1", {"user_hash": proof})
True
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from engine.settings import Settings
from engine.trust import Headers, is_trusted

#: The property of an identify or consent event that carries the identity proof.
PROOF_PROPERTY = "user_hash"
#: Shortest identity secret accepted outside development (engine/production.py).
MIN_IDENTITY_SECRET_BYTES = 32
#: The secret development uses when proofs are on and none is set.
DEV_IDENTITY_SECRET = "dev-only-identity-secret"
#: Event types whose customer id must be trusted before it is believed.
GUARDED_TYPES = frozenset({"identify", "consent"})


def needs_belief(event_type: str, headers: Headers | None, customer_id: str | None) -> bool:
    """Whether this event's customer id must pass :meth:`IdentityPolicy.trusted` before it is believed: an
    identify or a consent always; any other event when it comes from a browser (a ``public`` key).

    >>> needs_belief("page_view", [("pulse-source", b"public")], "cust-1"), needs_belief("page_view", [], "cust-1")
    (True, False)
    >>> needs_belief("identify", [], "cust-1"), needs_belief("click", [("pulse-source", b"public")], None)
    (True, False)
    """
    return customer_id is not None and (event_type in GUARDED_TYPES or not is_trusted(headers))


def identity_proof(secret: bytes, customer_id: str) -> str:
    """What the site's back end puts in the page for its logged-in customer."""
    return hmac.new(secret, customer_id.encode(), hashlib.sha256).hexdigest()


def verify_proof(secret: bytes, customer_id: str, user_hash: Any) -> bool:
    """Constant-time check of a proof (hex, either case); False without a secret or a string proof."""
    if not secret or not isinstance(user_hash, str) or len(user_hash) != 64:
        return False
    return hmac.compare_digest(identity_proof(secret, customer_id), user_hash.lower())


class IdentityPolicy:
    """Decides whether an event's customer id is to be believed (see the module's docstring)."""

    def __init__(self, secret: bytes | None) -> None:
        #: None: browser proofs are not accepted
        self.secret = secret

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityPolicy:
        if not settings.identity_proofs:
            return cls(None)
        return cls((settings.identity_secret or DEV_IDENTITY_SECRET).encode())

    def trusted(self, headers: Headers | None, customer_id: str, properties: Mapping[str, Any]) -> bool:
        if is_trusted(headers):
            return True
        return self.secret is not None and verify_proof(self.secret, customer_id, properties.get(PROOF_PROPERTY))
