"""Versioned, signed model snapshots: what a stream worker publishes and serving hot-reloads. Data only.

A snapshot is one self-describing byte string::

    MAGIC "PULSEPOL" | u16 format version | u32 header length | header (JSON) | payload | HMAC-SHA256

* the **header** says which model this is and where it belongs: the ``name`` it is published under
  (``<placement>/<policy>``), its ``model_version``, its ``kind`` (``linucb``, ``covisit`` ...), ``created_at``,
  ``n_updates``, and how to read the payload: lengths, compression, and per array its name, dtype, shape and
  offset;
* the **payload** is the zlib-compressed ``params`` (JSON) followed by the raw bytes of the arrays of the
  model's :class:`~engine.model_state.ModelState` (``to_state()``): numbers and strings, no code, no pickle;
* the **HMAC-SHA256** (key shared by the workers that write and the API replicas that read) covers
  everything before it, so the name and the version are signed with the bytes.

:func:`load_model` checks length, magic and the HMAC before anything is parsed, then that the blob is the
one the caller asked for: its signed ``name`` (a blob of placement A stored under B is refused), and
optionally that its signed version is newer than the one already loaded and the one advertised next to it
(an old blob re-published is refused). Arrays are rebuilt with ``numpy.frombuffer`` from a short list of
numeric dtypes; the model from ``from_state`` of a class found in :data:`MODEL_KINDS` by its ``kind``.
Format 1 (zlib-compressed pickles) is refused, even correctly signed. Any failure is a
:class:`SnapshotError` whose ``reason`` (``signature``, ``format``, ``name``, ``replay``) serving counts.

``key`` may also be a sequence of keys when loading (key rotation: new key first, old key second).

>>> from engine.policies import Candidate, LinUCB
>>> policy = LinUCB()
>>> policy.learn_one({"aff_cat:shoes": 1.0}, Candidate("a", {"cat:shoes": 1.0}), 1.0)
>>> blob = dump_model(policy, 7, b"k" * 32, name="home/linucb")
>>> loaded, version = load_model(blob, b"k" * 32, name="home/linucb")
>>> type(loaded).__name__, version, loaded.n_updates
('LinUCB', 7, 1)
>>> read_header(blob, key=b"k" * 32).kind
'linucb'
>>> load_model(blob, b"k" * 32, name="cart/linucb")
Traceback (most recent call last):
...
engine.snapshots.SnapshotError: snapshot is 'home/linucb', not 'cart/linucb'
>>> load_model(blob, b"k" * 32, name="home/linucb", newer_than=7)
Traceback (most recent call last):
...
engine.snapshots.SnapshotError: snapshot version 7 is not newer than the loaded version 7
>>> load_model(blob[:-1] + bytes([blob[-1] ^ 1]), b"k" * 32, name="home/linucb")
Traceback (most recent call last):
...
engine.snapshots.SnapshotError: bad signature: snapshot was not produced with this key or was altered
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, Self

import numpy as np
import orjson

from engine.clusters import Clusters
from engine.model_state import ARRAY_DTYPES, ModelState
from engine.policies import POLICIES
from engine.recommend.signal import CollaborativeSignal

__all__ = [
    "FORMAT_VERSION", "MODEL_KINDS", "REASONS", "Snapshottable", "SnapshotError", "SnapshotHeader",
    "dump_model", "load_model", "read_header",
]

MAGIC = b"PULSEPOL"
FORMAT_VERSION = 2
_PREFIX = struct.Struct(">8sHI")  # magic, format version, header length
_MAC_LEN = 32
_MAX_HEADER = 64 * 1024
#: Decompressed payloads above this are refused (a snapshot holds a bounded model; see engine.recommend).
MAX_PAYLOAD = 1 << 30
_MIN_KEY = 16
_ALIGN = 64
#: Why a snapshot was refused, as counted by serving (``pulse_model_rejected_total{reason}``).
REASONS = ("signature", "format", "name", "replay")


class Snapshottable(Protocol):
    """What a snapshotted model has: a ``name`` (its kind), ``n_updates``, and the two state verbs."""

    name: str
    n_updates: int

    def to_state(self) -> ModelState: ...

    @classmethod
    def from_state(cls, state: ModelState) -> Self: ...


#: Model kind (the class's ``name``) -> class: the only classes a snapshot can rebuild.
MODEL_KINDS: dict[str, Any] = {**POLICIES, CollaborativeSignal.name: CollaborativeSignal,
                               Clusters.name: Clusters}  # behavioural clusters (engine/clusters.py)


class SnapshotError(ValueError):
    """The blob is not a valid snapshot for this key, name and version; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, message: str, reason: str = "format") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    """What a snapshot says about itself (only trusted once its signature has been checked)."""

    format: int
    name: str
    model_version: int
    kind: str
    created_at: str
    n_updates: int
    compression: str
    payload_len: int
    raw_len: int
    params_len: int
    arrays: list[list[Any]]  # [name, dtype, shape, offset] per array


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _check_key(key: bytes | bytearray) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) < _MIN_KEY:
        raise ValueError(f"snapshot signing key must be at least {_MIN_KEY} bytes")
    return bytes(key)


def dump_model(model: Snapshottable, version: int, key: bytes, *, name: str, compress_level: int = 1) -> bytes:
    """Serialise ``model`` as snapshot ``version`` of ``name``, signed with ``key`` (>= 16 bytes).

    ``model`` is any class of :data:`MODEL_KINDS`. ``compress_level`` is zlib's (0-9); 1 already shrinks a
    LinUCB snapshot several times in a fraction of the time level 6 takes.
    """
    key = _check_key(key)
    kind = getattr(model, "name", None)
    if not isinstance(kind, str) or MODEL_KINDS.get(kind) is not type(model):
        raise TypeError(f"{type(model).__name__} is not a snapshottable model ({', '.join(sorted(MODEL_KINDS))})")
    state = model.to_state()
    params = orjson.dumps(state.params)
    parts, arrays, offset = [params], [], len(params)
    for array_name, arr in state.arrays.items():
        a = np.ascontiguousarray(arr)
        dtype = a.dtype.str
        if dtype not in ARRAY_DTYPES:
            raise TypeError(f"array {array_name!r} of {kind} has dtype {dtype}, not one of {sorted(ARRAY_DTYPES)}")
        pad = -offset % _ALIGN
        parts.append(b"\0" * pad)
        offset += pad
        arrays.append([array_name, dtype, list(a.shape), offset])
        parts.append(a.tobytes())
        offset += a.nbytes
    raw = b"".join(parts)
    payload = zlib.compress(raw, compress_level)
    header = orjson.dumps({
        "format": FORMAT_VERSION,
        "name": name,
        "model_version": int(version),
        "kind": kind,
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "n_updates": int(model.n_updates),
        "compression": "zlib",
        "payload_len": len(payload),
        "raw_len": len(raw),
        "params_len": len(params),
        "arrays": arrays,
    })
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + payload
    return body + _mac(key, body)


def _verified(blob: bytes, key: bytes | Sequence[bytes]) -> tuple[SnapshotHeader, memoryview]:
    keys = [_check_key(k) for k in ([key] if isinstance(key, bytes | bytearray) else list(key))]
    if not keys:
        raise ValueError("no snapshot key given")
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise SnapshotError(f"snapshot must be bytes, not {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _PREFIX.size + _MAC_LEN or blob[:8] != MAGIC:
        raise SnapshotError("not a pulse model snapshot (bad magic or too short)")
    body, mac = blob[:-_MAC_LEN], blob[-_MAC_LEN:]
    if not any(hmac.compare_digest(_mac(k, body), mac) for k in keys):
        raise SnapshotError("bad signature: snapshot was not produced with this key or was altered", "signature")
    # Signed by a key holder from here on; the checks below catch format drift and keep the reader bounded.
    _, fmt, header_len = _PREFIX.unpack_from(body)
    if fmt != FORMAT_VERSION:
        old = " (pickled models are no longer loaded)" if fmt == 1 else ""
        raise SnapshotError(f"unsupported snapshot format {fmt}{old}; this code reads format {FORMAT_VERSION}")
    if header_len > _MAX_HEADER or _PREFIX.size + header_len > len(body):
        raise SnapshotError("corrupt snapshot header length")
    try:
        header = SnapshotHeader(**orjson.loads(body[_PREFIX.size:_PREFIX.size + header_len]))
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise SnapshotError(f"corrupt snapshot header: {exc}") from None
    payload = memoryview(body)[_PREFIX.size + header_len:]
    if len(payload) != header.payload_len:
        raise SnapshotError("corrupt snapshot payload (length mismatch)")
    return header, payload


def read_header(blob: bytes, key: bytes | Sequence[bytes]) -> SnapshotHeader:
    """The verified header of a snapshot, without decoding the model."""
    return _verified(blob, key)[0]


def _decode_state(header: SnapshotHeader, payload: memoryview) -> ModelState:
    if header.compression != "zlib":
        raise SnapshotError(f"unknown snapshot compression {header.compression!r}")
    if not 0 <= header.params_len <= header.raw_len <= MAX_PAYLOAD:
        raise SnapshotError("snapshot payload lengths out of bounds")
    inflate = zlib.decompressobj()
    try:
        # a bytearray: the arrays are views of it and must be writable (the learner goes on learning in place)
        raw = bytearray(inflate.decompress(payload, header.raw_len))
    except zlib.error as exc:
        raise SnapshotError(f"cannot decompress snapshot payload: {exc}") from None
    if len(raw) != header.raw_len or not inflate.eof or inflate.unconsumed_tail:
        raise SnapshotError("snapshot payload is not the length its header announces")
    try:
        params = orjson.loads(memoryview(raw)[:header.params_len])
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"snapshot params are not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise SnapshotError("snapshot params must be a JSON object")
    arrays: dict[str, np.ndarray] = {}
    for entry in header.arrays:
        try:
            array_name, dtype, shape, offset = entry
            if dtype not in ARRAY_DTYPES or not all(type(n) is int and n >= 0 for n in shape):
                raise ValueError(f"dtype {dtype!r} or shape {shape!r} not allowed")
            count = math.prod(shape)
            dt = np.dtype(dtype)
            if type(offset) is not int or offset < header.params_len or offset + count * dt.itemsize > len(raw):
                raise ValueError("outside the payload")
            arrays[str(array_name)] = np.frombuffer(raw, dtype=dt, count=count, offset=offset).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise SnapshotError(f"bad array entry in snapshot: {exc}") from None
    return ModelState(params, arrays)


def load_model(
    blob: bytes,
    key: bytes | Sequence[bytes],
    *,
    name: str | Sequence[str],
    kind: str | None = None,
    newer_than: int | None = None,
    expect_version: int | None = None,
) -> tuple[Any, int]:
    """Verify and rebuild a snapshot; returns ``(model, model_version)`` or raises :class:`SnapshotError`.

    ``name``: what the caller reads (one name, or the names it accepts); ``kind``: the model kind it expects
    there (``linucb`` ..., :data:`MODEL_KINDS`), if it knows; ``newer_than``: the version already
    loaded, which the snapshot must exceed; ``expect_version``: the version published next to the blob (the
    ``version`` field of its Redis hash), which its signed version must equal.
    """
    header, payload = _verified(blob, key)
    names = [name] if isinstance(name, str) else list(name)
    if header.name not in names:
        raise SnapshotError(f"snapshot is {header.name!r}, not {' or '.join(map(repr, names))}", "name")
    version = header.model_version
    if type(version) is not int:
        raise SnapshotError("snapshot version is not an integer")
    if newer_than is not None and version <= newer_than:
        raise SnapshotError(f"snapshot version {version} is not newer than the loaded version {newer_than}",
                            "replay")
    if expect_version is not None and version != expect_version:
        raise SnapshotError(f"snapshot version {version} is published as version {expect_version}", "replay")
    if kind is not None and header.kind != kind:
        raise SnapshotError(f"snapshot {header.name!r} holds a {header.kind!r} model, not {kind!r}", "name")
    cls = MODEL_KINDS.get(header.kind) if isinstance(header.kind, str) else None
    if cls is None:
        raise SnapshotError(f"unknown model kind {header.kind!r}")
    state = _decode_state(header, payload)
    try:
        model = cls.from_state(state)
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # StateError is a ValueError
        raise SnapshotError(f"snapshot is not a valid {header.kind} model: {exc}") from None
    return model, version
