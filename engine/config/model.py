"""The validated configuration as the rest of the code reads it: frozen dataclasses, built once.

``engine.config.schema`` says what a file may contain; ``engine.config.load`` turns a checked file
into these objects.

>>> Placement(id="home").learning.learns
False
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The transparent, non-learning scorer (engine.scoring); every other policy name is a learner.
BASELINE_POLICY = "affinity_popularity"
#: How several rewards of one decision combine.
REWARD_AGGREGATIONS = ("first", "sum", "max")
#: Window name -> (bucket width seconds, number of buckets). Ring buffers keep state bounded.
WINDOWS: dict[str, tuple[int, int]] = {"1h": (300, 12), "24h": (3600, 24), "7d": (86400, 7)}


@dataclass(frozen=True, slots=True)
class AffinityFeature:
    name: str
    field: str
    weights: Mapping[str, float]
    half_life_hours: float = 72.0
    top_k: int = 50


@dataclass(frozen=True, slots=True)
class RecentFeature:
    name: str
    field: str
    events: tuple[str, ...]
    size: int = 20


@dataclass(frozen=True, slots=True)
class WindowFeature:
    name: str
    events: tuple[str, ...]
    windows: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    ttl_days: float = 90.0
    session_timeout_minutes: float = 30.0
    dedup_window: int = 64


#: The consent modes (``[privacy] consent_mode``).
OPT_IN, OPT_OUT = "opt_in", "opt_out"


@dataclass(frozen=True, slots=True)
class PrivacySettings:
    #: ``opt_in``: nothing is stored about a visitor until some consent is granted, and answers are
    #: non-personalised until personalisation is; ``opt_out``: personalised until withdrawn.
    consent_mode: str = OPT_OUT


@dataclass(frozen=True, slots=True)
class ScoringSettings:
    category_weight: float = 1.0
    item_weight: float = 2.0
    tag_weight: float = 0.3
    popularity_half_life_hours: float = 24.0
    covisit_weight: float = 1.5


@dataclass(frozen=True, slots=True)
class CollaborativeSettings:
    """Item-to-item co-visitation learned in the stream and used as a ranking feature."""

    enabled: bool = True
    #: Interaction weight per event type (events carrying an ``item_id``).
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"page_view": 0.5, "click": 1.0, "add_to_cart": 1.5, "purchase": 2.0}
    )
    params: Mapping[str, Any] = field(default_factory=dict)
    snapshot_every_updates: int = 50_000
    snapshot_every_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class RewardSettings:
    #: How long a decision waits for its click/conversion before the default reward is learned.
    window_seconds: float = 600.0
    default: float = 0.0
    #: How several rewards of one decision combine: the first one, their sum, or their maximum.
    aggregation: str = "max"
    #: Learn a conversion's monetary value instead of 1.0.
    conversion_value: bool = False
    click: float = 1.0
    conversion: float = 1.0


@dataclass(frozen=True, slots=True)
class LearningSettings:
    policy: str = BASELINE_POLICY
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Share of visitors (sticky per visitor) who get ``holdout_policy`` instead: the control arm.
    holdout_share: float = 0.0
    holdout_policy: str = BASELINE_POLICY
    reward: RewardSettings = field(default_factory=RewardSettings)
    snapshot_every_updates: int = 200
    snapshot_every_seconds: float = 5.0

    @property
    def learns(self) -> bool:
        return self.policy != BASELINE_POLICY or self.holdout_policy != BASELINE_POLICY


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    max_items: int = 5
    learning: LearningSettings = field(default_factory=LearningSettings)
    # next-best action (engine.channels, engine.timing, engine.arbitration): channels answered, B2B hours,
    # the final order ("policy": the policy's own; else an ARBITRATIONS mode) and the "nothing now" threshold
    channels: tuple[str, ...] = ()
    business_hours: bool = False
    arbitration: str = "policy"
    min_expected_value: float | None = None


@dataclass(frozen=True, slots=True)
class SegmentCondition:
    """One condition of a segment (``engine.segments``): exactly one of the subjects is set."""

    count: str | None = None
    window: str | None = None
    span: str | None = None
    metric: str | None = None
    affinity: str | None = None
    value: str | None = None
    consent: str | None = None
    granted: bool = True
    segment: str | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class Segment:
    id: str
    description: str = ""
    all: tuple[SegmentCondition, ...] = ()
    any: tuple[SegmentCondition, ...] = ()
    none: tuple[SegmentCondition, ...] = ()


@dataclass(frozen=True, slots=True)
class Audience:
    """Who may be shown an action: members of at least one ``include`` segment (when given), of no
    ``exclude`` segment."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def admits(self, segments: set[str] | frozenset[str]) -> bool:
        """
        >>> Audience(include=("vip",), exclude=("lapsed",)).admits({"vip"}), Audience().admits(set())
        (True, True)
        """
        return (not self.include or not segments.isdisjoint(self.include)) and segments.isdisjoint(self.exclude)


#: Calendar periods of frequency caps, in the customer's time zone (engine.contact_policy).
PERIODS = ("hour", "day", "week")


@dataclass(frozen=True, slots=True)
class Caps:
    """At most so many contacts per calendar period (None: no cap for that period)."""

    hour: int | None = None
    day: int | None = None
    week: int | None = None

    def limits(self) -> tuple[tuple[str, int], ...]:
        """
        >>> Caps(day=3).limits(), Caps().limits()
        ((('day', 3),), ())
        """
        return tuple((p, n) for p, n in (("hour", self.hour), ("day", self.day), ("week", self.week)) if n is not None)

    def over(self, other: Caps | None) -> Caps:
        """These caps with ``other``'s periods on top (an action's caps over the defaults).

        >>> Caps(day=3, week=10).over(Caps(day=1))
        Caps(hour=None, day=1, week=10)
        """
        if other is None:
            return self
        return Caps(*(o if o is not None else s for s, o in ((self.hour, other.hour), (self.day, other.day),
                                                             (self.week, other.week))))


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    placements: tuple[str, ...]
    category: str | None = None
    item_id: str | None = None
    tags: tuple[str, ...] = ()
    title: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    valid_from: float | None = None
    valid_to: float | None = None
    audience: Audience | None = None
    # next-best action: channels it can go out on (empty: the placement's), business value and lever
    channels: tuple[str, ...] = ()
    value: float = 1.0
    lever: float = 1.0
    #: frequency caps of its own (engine.contact_policy), over ``[contact_policy] action_caps``
    caps: Caps | None = None

    def is_valid_at(self, now: float) -> bool:
        return (self.valid_from is None or now >= self.valid_from) and (
            self.valid_to is None or now < self.valid_to
        )


#: Final orders of a placement (``engine.arbitration``); "policy" keeps the policy's own order.
ARBITRATIONS = ("propensity_x_value_x_lever", "propensity")


@dataclass(frozen=True, slots=True)
class ContactSettings:
    """Contact policy of next-best-action placements (``engine.timing``, ``engine.channels``)."""

    default_timezone: str = "UTC"
    #: channel -> (start, end) local minutes of the day; start > end wraps over midnight
    hours: Mapping[str, tuple[int, int]] = field(
        default_factory=lambda: {"email": (540, 1200), "push": (600, 1260), "sms": (600, 1200)})
    business_hours: tuple[int, int] = (540, 1080)
    send_within_hours: int = 24
    activity_half_life_days: float = 28.0
    activity_prior_strength: float = 4.0
    engagement_prior_strength: float = 20.0


@dataclass(frozen=True, slots=True)
class AttributionSettings:
    """Conversions credited to the touches before them, in the stream (``engine.attribution``)."""

    enabled: bool = False
    #: A conversion credits the touches of this many hours before it; a touch list expires with it.
    window_hours: float = 168.0
    models: tuple[str, ...] = ("last_touch", "linear", "position_based")
    #: Event types counted as conversions besides ``purchase`` (their ``properties.value`` as revenue).
    goals: tuple[str, ...] = ()
    max_touches: int = 20
    #: Cost of one impression per action id and per channel (both add up): what ROI is computed against.
    cost_per_impression_actions: Mapping[str, float] = field(default_factory=dict)
    cost_per_impression_channels: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Behavioural clusters (engine/clusters.py)."""

    enabled: bool = False
    k: int = 6
    feature: str = "category"
    halflife: float = 5000.0
    min_distance: float = 0.3
    max_profiles_per_batch: int = 256
    snapshot_every_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class ContactPolicySettings:
    """Eligibility, suppression and frequency caps before scoring (``engine.contact_policy``)."""

    enabled: bool = False
    suppress_purchased: bool = True
    suppress_in_cart: bool = True
    max_shown_without_click: int | None = None
    dismiss_cooldown_hours: float | None = None
    action_caps: Caps = field(default_factory=Caps)
    channel_caps: Mapping[str, Caps] = field(default_factory=dict)
    #: over every channel but web, together
    contact_pressure: Caps = field(default_factory=Caps)
    max_tracked_actions: int = 50
    max_tracked_purchases: int = 50


@dataclass(frozen=True, slots=True)
class EngineConfig:
    profile: ProfileSettings
    scoring: ScoringSettings
    affinities: tuple[AffinityFeature, ...]
    recents: tuple[RecentFeature, ...]
    windows: tuple[WindowFeature, ...]
    placements: Mapping[str, Placement]
    actions: Mapping[str, Action]
    collaborative: CollaborativeSettings = field(default_factory=CollaborativeSettings)
    segments: tuple[Segment, ...] = ()
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    #: attribution and ROI (engine.attribution)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    contact: ContactSettings = field(default_factory=ContactSettings)  # next-best action: timing, channels
    clusters: ClusterSettings = field(default_factory=ClusterSettings)  # behavioural clusters
    #: eligibility, suppression, frequency caps (engine.contact_policy); not ``contact``, which is timing's
    contact_policy: ContactPolicySettings = field(default_factory=ContactPolicySettings)

    def actions_for(self, placement: str) -> list[Action]:
        return [a for a in self.actions.values() if placement in a.placements]
