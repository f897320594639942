"""Real logged data for the learning-quality benchmarks.

Open Bandit Dataset (OBD) sample
--------------------------------
The ``obp`` wheel (Open Bandit Pipeline, Apache-2.0) ships a 10,000-row sample of the Open Bandit Dataset
for every (behaviour policy, campaign) pair. The wheel is fetched once with
``pip download obp==0.4.1 --no-deps`` into the git-ignored ``.cache/obp/`` and its SHA-256 checked;
``obp`` itself is never installed or imported (its dependencies are heavy): the CSVs are read straight
out of the wheel (a zip file) with the ``csv`` module.

The data come from a 7-day A/B test (late November 2019) on ZOZOTOWN, a fashion e-commerce site,
whose recommendation widget shows 3 items; each impression was served either by a **uniform random**
policy (``random``) or by **Bernoulli Thompson sampling** (``bts``), in three campaigns (``all``: 80
items, ``men``: 34, ``women``: 46).
Saito, Aihara, Matsutani, Narita (2020), "Open Bandit Dataset and Pipeline: Towards Realistic and
Reproducible Off-Policy Evaluation", https://arxiv.org/abs/2008.07146.

``obd/<policy>/<campaign>/<campaign>.csv``, one row per (impression, slot), in time order:

* ``timestamp``: time of the impression (UTC);
* ``item_id``: the item (the *action*) shown, ``0 .. n_items - 1`` within the campaign;
* ``position``: slot of the widget, 1 = left, 2 = centre, 3 = right (we store it 0-based);
* ``click``: 1 if the item was clicked (the *reward*; about 0.4-0.7 % of rows);
* ``propensity_score``: probability that the logging policy put *this item in this slot*: exactly
  ``1 / n_items`` for ``random``, Monte-Carlo estimated from the Thompson posterior for ``bts``;
* ``user_feature_0..3``: anonymised (hashed) categorical user attributes (3-9 distinct values each);
* ``user-item_affinity_<k>``: the user's affinity to item ``k``, from past clicks on it (mostly 0).

``obd/<policy>/<campaign>/item_context.csv``, one row per item:

* ``item_feature_0``: a numeric, standardised item attribute;
* ``item_feature_1..3``: anonymised (hashed) categorical item attributes.

Mapped to the engine's vocabulary: context = ``{"user_<i>:<hash>": 1, "aff_item:<k>": affinity,
"segment:u0_<hash>": 1}`` (``user_feature_0``, 3 values, doubles as a coarse segment for popularity);
candidate = ``Candidate("<k>", {"item:<k>": 1, "item_f0": x, "item_f<i>:<hash>": 1})``, so the
policies' ``match:item`` feature is the user's affinity to the candidate item itself.

>>> log = load_obd("random", "men")  # doctest: +SKIP
>>> len(log.events), len(log.items), log.events[0].propensity  # doctest: +SKIP
(10000, 34, 0.029411764705882353)
"""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

from engine.policies import Candidate

__all__ = [
    "OBP_VERSION",
    "ObdEvent",
    "ObdItem",
    "ObdLog",
    "BEHAVIORS",
    "CAMPAIGNS",
    "obp_wheel",
    "load_obd",
    "iter_obd",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
OBP_CACHE = REPO_ROOT / ".cache" / "obp"
OBP_VERSION = "0.4.1"
#: SHA-256 of obp-0.4.1-py3-none-any.whl on PyPI; a different file is refused.
OBP_WHEEL_SHA256 = "87dec9caf4283c25ab13036532e0a24566f1c7bdcad1653a8ded43b2f5ef8208"
BEHAVIORS = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")


@dataclass(slots=True)
class ObdItem:
    """One item (action) of a campaign and its anonymised attributes."""

    item_id: int
    feature_0: float
    categorical: tuple[str, ...]

    def candidate(self) -> Candidate:
        feats: dict[str, float] = {f"item:{self.item_id}": 1.0, "item_f0": self.feature_0}
        for i, v in enumerate(self.categorical, start=1):
            feats[f"item_f{i}:{v[:10]}"] = 1.0
        return Candidate(str(self.item_id), feats)


@dataclass(slots=True)
class ObdEvent:
    """One logged (impression, slot): what was shown where, to whom, with what probability, and the click."""

    timestamp: float
    item_id: int
    position: int
    click: int
    propensity: float
    user_features: tuple[str, ...]
    affinity: dict[int, float] = field(default_factory=dict)

    def context(self) -> dict[str, float]:
        ctx = {f"user_{i}:{v[:10]}": 1.0 for i, v in enumerate(self.user_features)}
        ctx[f"segment:u0_{self.user_features[0][:10]}"] = 1.0
        for k, a in self.affinity.items():
            ctx[f"aff_item:{k}"] = a
        return ctx


@dataclass
class ObdLog:
    """A logged campaign: events in time order and the campaign's items."""

    behavior: str
    campaign: str
    events: list[ObdEvent]
    items: list[ObdItem]

    @cached_property
    def candidates(self) -> list[Candidate]:
        return [it.candidate() for it in self.items]

    @property
    def clicks(self) -> int:
        return sum(e.click for e in self.events)

    @property
    def ctr(self) -> float:
        """On-policy click-through rate of the logging policy."""
        return self.clicks / len(self.events) if self.events else 0.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def obp_wheel(cache_dir: Path = OBP_CACHE, download: bool = True) -> Path:
    """Path of the verified obp wheel in ``cache_dir``, downloading it with pip if needed."""
    wheel = cache_dir / f"obp-{OBP_VERSION}-py3-none-any.whl"
    if not wheel.exists():
        if not download:
            raise FileNotFoundError(
                f"{wheel} is missing; run: pip download obp=={OBP_VERSION} --no-deps -d {cache_dir}"
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", f"obp=={OBP_VERSION}", "--no-deps",
               "--only-binary=:all:", "-d", str(cache_dir), "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"could not download the obp wheel ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    digest = _sha256(wheel)
    if digest != OBP_WHEEL_SHA256:
        raise RuntimeError(f"{wheel} has SHA-256 {digest}, expected {OBP_WHEEL_SHA256}; delete it and retry")
    return wheel


def _rows(zf: zipfile.ZipFile, member: str) -> Iterator[dict[str, str]]:
    with zf.open(member) as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


def load_obd(behavior: str = "random", campaign: str = "all", wheel: Path | None = None) -> ObdLog:
    """Load one (behaviour policy, campaign) sample of the Open Bandit Dataset, events in time order."""
    if behavior not in BEHAVIORS:
        raise ValueError(f"behavior must be one of {BEHAVIORS}, not {behavior!r}")
    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign must be one of {CAMPAIGNS}, not {campaign!r}")
    base = f"obp/dataset/obd/{behavior}/{campaign}"
    with zipfile.ZipFile(wheel or obp_wheel()) as zf:
        items = [
            ObdItem(int(r["item_id"]), float(r["item_feature_0"]),
                    (r["item_feature_1"], r["item_feature_2"], r["item_feature_3"]))
            for r in _rows(zf, f"{base}/item_context.csv")
        ]
        events: list[ObdEvent] = []
        aff_cols: list[tuple[int, str]] | None = None
        for r in _rows(zf, f"{base}/{campaign}.csv"):
            if aff_cols is None:
                aff_cols = [(int(c.rsplit("_", 1)[1]), c) for c in r if c.startswith("user-item_affinity_")]
            affinity = {k: v for k, c in aff_cols if (v := float(r[c])) != 0.0}
            events.append(ObdEvent(
                timestamp=datetime.fromisoformat(r["timestamp"]).timestamp(),
                item_id=int(r["item_id"]),
                position=int(r["position"]) - 1,
                click=int(r["click"]),
                propensity=float(r["propensity_score"]),
                user_features=tuple(r[f"user_feature_{i}"] for i in range(4)),
                affinity=affinity,
            ))
    items.sort(key=lambda it: it.item_id)
    events.sort(key=lambda e: e.timestamp)  # already sorted in the sample; stable if not
    return ObdLog(behavior, campaign, events, items)


def iter_obd(behaviors: tuple[str, ...] = BEHAVIORS, campaigns: tuple[str, ...] = CAMPAIGNS) -> Iterator[ObdLog]:
    """Every requested (behaviour, campaign) log, reading the wheel once per log."""
    wheel = obp_wheel()
    for b in behaviors:
        for c in campaigns:
            yield load_obd(b, c, wheel)
