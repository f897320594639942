"""What an engine configuration file may contain: strict pydantic models of the TOML document.

Every table rejects unknown keys, every value is checked for its type (strictly: ``true`` is not a
number, ``"5"`` is not an integer) and range, and floats must be finite. The same models give the JSON
Schema editors use (``config/engine.schema.json``, written by ``python -m engine.config --schema``).
Cross-references (duplicate ids, placements an action names, policy names) are checked in
``engine.config.load``, which also turns these models into the dataclasses of ``engine.config.model``.

>>> doc = Document.model_validate({"placement": [{"id": "home", "max_items": 3}]})
>>> doc.placement[0].max_items, doc.placement[0].policy
(3, 'affinity_popularity')
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from engine.config.model import BASELINE_POLICY


@cache
def event_types() -> tuple[str, ...]:
    """The event types of the contract: the ``type`` enum of ``schemas/json/envelope.v1.schema.json``.

    Read from the file rather than imported from ``schemas.events``, which compiles every validator.

    >>> "page_view" in event_types(), "pageview" in event_types()
    (True, False)
    """
    spec = find_spec("schemas")
    assert spec is not None and spec.submodule_search_locations, "the schemas package is part of pulse"
    path = Path(next(iter(spec.submodule_search_locations))) / "json" / "envelope.v1.schema.json"
    enum = json.loads(path.read_text())["properties"]["type"]["enum"]
    return tuple(str(e) for e in enum)


def _event_type(value: str) -> str:
    if value not in event_types():
        raise ValueError(f"unknown event type {value!r}; expected one of {', '.join(event_types())}")
    return value


def _timestamp(value: Any) -> Any:
    """TOML date-times as they are, ISO-8601 strings parsed; both become epoch seconds."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 timestamp") from None
    if isinstance(value, datetime):
        return value.timestamp()
    raise ValueError(f"expected a TOML date-time or an ISO-8601 string, got {value!r}")


def _unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{v!r} is listed twice")
        seen.add(v)
    return values


EventType = Annotated[str, AfterValidator(_event_type), WithJsonSchema({"type": "string", "enum": []})]
EventList = Annotated[list[EventType], Field(min_length=1), AfterValidator(_unique)]
Timestamp = Annotated[
    float | None,
    BeforeValidator(_timestamp),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "RFC 3339 / ISO-8601 date-time"}),
]
#: The keys of ``engine.config.model.WINDOWS`` (a test keeps the two equal).
WindowName = Literal["1h", "24h", "7d"]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s]+$")]
Text = Annotated[str, Field(max_length=1024)]
PositiveFloat = Annotated[float, Field(gt=0)]
Weight = Annotated[float, Field(ge=0)]


#: The channels a next-best action can go out on (consent purposes ``marketing_<channel>``, engine.consent).
NbaChannel = Literal["web", "email", "push", "sms"]
_HOURS = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")


def _hours(value: str) -> str:
    m = _HOURS.match(value)
    if m is None or (m.group(3) == "24" and m.group(4) != "00"):
        raise ValueError(f"{value!r} is not a local time span HH:MM-HH:MM (e.g. 09:00-20:00, 22:00-06:00)")
    if m.group(1, 2) == m.group(3, 4):
        raise ValueError(f"{value!r} is an empty span")
    return value


def _timezone(value: str) -> str:
    from engine.timing import zone  # zoneinfo: only when a time zone is given

    zone(value)
    return value


Hours = Annotated[str, AfterValidator(_hours), Field(description="Local time span HH:MM-HH:MM; overnight wraps.")]
TimeZone = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_timezone)]


class Strict(BaseModel):
    """A table: unknown keys are errors, types are not coerced, numbers are finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Profile(Strict):
    ttl_days: PositiveFloat = Field(default=90.0, description="A profile untouched for this long expires (retention).")
    session_timeout_minutes: PositiveFloat = Field(default=30.0, description="Inactivity that starts a new session.")
    dedup_window: int = Field(default=64, ge=1, le=1024, description="Event ids kept per customer (dedup).")


class Privacy(Strict):
    """Consent (docs/security.md, "Consent")."""

    consent_mode: Literal["opt_in", "opt_out"] = Field(
        default="opt_out", description="opt_in: nothing about a visitor is stored and answers are not "
        "personalised until they consent to personalisation; opt_out: until they withdraw it.")


class AffinityFeature(Strict):
    """A time-decayed score per value of an event property; the strongest ``top_k`` values are kept."""

    name: Name
    kind: Literal["affinity"]
    field: Name = Field(description="The event property (also looked up in a purchase's items).")
    weights: Annotated[dict[EventType, float], Field(min_length=1)] = Field(
        description="How much one event of each type adds.")
    half_life_hours: PositiveFloat = 72.0
    top_k: int = Field(default=50, ge=1, le=10_000)


class RecentFeature(Strict):
    """The last ``size`` distinct values of an event property."""

    name: Name
    kind: Literal["recent"]
    field: Name
    events: EventList
    size: int = Field(default=20, ge=1, le=1000)


class WindowFeature(Strict):
    """Counts of events over sliding windows (ring buffers of buckets)."""

    name: Name
    kind: Literal["window"]
    events: EventList
    windows: Annotated[list[WindowName], Field(min_length=1), AfterValidator(_unique)]


Feature = Annotated[AffinityFeature | RecentFeature | WindowFeature, Field(discriminator="kind")]
#: The accepted feature kinds (counts per event type are always kept, so there is no "count" kind).
FEATURE_KINDS = ("affinity", "recent", "window")


class Collaborative(Strict):
    """Item-to-item co-visitation learned in the stream, a ranking feature for every policy."""

    enabled: bool = True
    weights: dict[EventType, Weight] = Field(
        default_factory=lambda: {"page_view": 0.5, "click": 1.0, "add_to_cart": 1.5, "purchase": 2.0},
        description="Interaction weight per event type (events carrying an item_id).")
    params: dict[str, Any] = Field(default_factory=dict, description="engine.recommend.CoVisitation parameters.")
    snapshot_every_updates: int = Field(default=50_000, ge=1)
    snapshot_every_seconds: PositiveFloat = 5.0


class Scoring(Strict):
    """The transparent baseline scorer (affinity x popularity)."""

    category_weight: Weight = 1.0
    item_weight: Weight = 2.0
    tag_weight: Weight = 0.3
    popularity_half_life_hours: PositiveFloat = 24.0
    covisit_weight: Weight = 1.5


class Reward(Strict):
    window_seconds: PositiveFloat = Field(
        default=600.0, description="How long a decision waits for its click/conversion before the default is learned.")
    default: float = 0.0
    aggregation: Literal["first", "sum", "max"] = Field(
        default="max", description="How several rewards of one decision combine.")
    conversion_value: bool = Field(default=False, description="Learn a conversion's monetary value instead of 1.0.")
    click: float = 1.0
    conversion: float = 1.0


class Placement(Strict):
    """Where on the site a decision is asked for, and the policy that decides."""

    id: Id
    max_items: int = Field(default=5, ge=1, le=100, description="Actions returned when a request gives no n.")
    policy: str = Field(default=BASELINE_POLICY, min_length=1, description="affinity_popularity or a learner's name.")
    policy_params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the policy.")
    holdout_share: float = Field(default=0.0, ge=0.0, lt=1.0, description="Share of visitors (sticky) on the holdout.")
    holdout_policy: str = Field(default=BASELINE_POLICY, min_length=1)
    reward: Reward = Field(default_factory=Reward)
    snapshot_every_updates: int = Field(default=200, ge=1)
    snapshot_every_seconds: PositiveFloat = 5.0
    # next-best action (engine.channels, engine.timing, engine.arbitration)
    channels: Annotated[list[NbaChannel], AfterValidator(_unique)] = Field(
        default_factory=list, description="A next-best-action placement: each answer names a channel (and a "
        "send_at for the others than web), among these.")
    business_hours: bool = Field(default=False, description="B2B: channels only on weekdays in business hours.")
    arbitration: Literal["propensity_x_value_x_lever", "propensity"] | None = Field(
        default=None, description="The final order: by propensity x value x lever, or by propensity alone. "
        "Default: propensity_x_value_x_lever when an action of the placement declares a value or a lever, "
        "else the policy's own order.")
    min_expected_value: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Below it (the best propensity x value), the answer is nothing now "
        "(reason below_threshold).")


#: What a segment condition may compare (``engine.segments.METRICS``, kept here so the schema lists them).
SegmentMetric = Literal["monetary", "cart_items", "cart_quantity", "session_pages", "minutes_since_last_seen",
                        "days_since_last_seen", "days_since_first_seen"]
#: The subjects of a condition: exactly one per condition.
CONDITION_SUBJECTS = ("count", "window", "metric", "affinity", "consent", "segment")


class SegmentCondition(Strict):
    """One condition: a subject (count, window + span, metric, affinity + value, consent, or segment) and,
    for the numeric ones, inclusive bounds."""

    count: EventType | None = Field(default=None, description="All-time events of this type.")
    window: Name | None = Field(default=None, description="A window feature; with span.")
    span: WindowName | None = Field(default=None, description="Which window of the feature.")
    metric: SegmentMetric | None = None
    affinity: Name | None = Field(default=None, description="An affinity feature; with value.")
    value: Text | None = Field(default=None, description="The affinity value; its share of the strongest, 0-1.")
    consent: Name | None = Field(default=None, description="A consent purpose that must be granted.")
    granted: bool = Field(default=True, description="With consent: false means the purpose is not granted.")
    segment: Name | None = Field(default=None, description="Membership of a segment declared earlier.")
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_subject(self) -> SegmentCondition:
        given = [k for k in CONDITION_SUBJECTS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(CONDITION_SUBJECTS)}"
                             + (f" (got {', '.join(given)})" if given else ""))
        numeric = given[0] in ("count", "window", "metric", "affinity")
        if numeric and self.min is None and self.max is None:
            raise ValueError(f"{given[0]}: give min and/or max")
        if not numeric and (self.min is not None or self.max is not None):
            raise ValueError(f"{given[0]}: min and max do not apply")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if (self.window is None) != (self.span is None):
            raise ValueError("window and span go together")
        if (self.affinity is None) != (self.value is None):
            raise ValueError("affinity and value go together")
        if self.consent is None and not self.granted:
            raise ValueError("granted applies to consent only")
        return self


Conditions = Annotated[list[SegmentCondition], Field(max_length=32)]


class Segment(Strict):
    """A named set of customers: every ``all`` condition holds, one of ``any`` (if given), none of ``none``."""

    id: Name
    description: Text = ""
    all: Conditions = []
    any: Conditions = []
    none: Conditions = []

    @model_validator(mode="after")
    def _some_condition(self) -> Segment:
        if not (self.all or self.any or self.none):
            raise ValueError("give at least one condition in all, any or none")
        return self


#: A segment an audience names: a declared segment, or a behavioural cluster ``cluster:<k>`` (engine/clusters.py).
AudienceSegment = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^([A-Za-z0-9_]+|cluster:[0-9]+)$")]


class Audience(Strict):
    include: Annotated[list[AudienceSegment], AfterValidator(_unique)] = Field(
        default_factory=list, description="Shown only to members of one of these segments.")
    exclude: Annotated[list[AudienceSegment], AfterValidator(_unique)] = Field(
        default_factory=list, description="Never shown to members of these segments.")


#: The largest frequency cap: a profile keeps at most this many contact times per action and channel.
MAX_CAP = 50
CapCount = Annotated[int, Field(ge=1, le=MAX_CAP)]


class Caps(Strict):
    """At most this many contacts per customer per calendar period of their time zone (weeks start on Monday)."""

    hour: CapCount | None = None
    day: CapCount | None = None
    week: CapCount | None = None


class Action(Strict):
    """One entry of the catalogue of actions / content."""

    id: Id
    placements: Annotated[list[Id], Field(min_length=1), AfterValidator(_unique)]
    category: Text | None = None
    item_id: Text | None = None
    tags: Annotated[list[Text], Field(max_length=100)] = []
    title: Text | None = None
    payload: dict[str, Any] = Field(default_factory=dict, description="Returned as is with the decision.")
    valid_from: Timestamp = None
    valid_to: Timestamp = None
    audience: Audience | None = None
    # next-best action: the channels it can go out on, its business value and lever (engine.arbitration)
    channels: Annotated[list[NbaChannel], AfterValidator(_unique)] = Field(
        default_factory=list, description="Channels it can go out on (default: every channel of the placement).")
    value: Weight | None = Field(default=None, description="Business value of its success (default 1).")
    lever: Weight | None = Field(default=None, description="Business lever, a multiplier (default 1).")
    caps: Caps | None = Field(default=None, description="Frequency caps per customer of this action, per "
                              "calendar period (override [contact_policy] action_caps period by period).")


class Contact(Strict):
    """Contact policy of next-best-action placements (engine.timing, engine.channels): when each channel may
    reach a customer, in the customer's time zone, and how their best hour and channel are learned."""

    default_timezone: TimeZone = Field(default="UTC", description="When neither the request's context.timezone "
                                       "nor the profile (identify traits.timezone) gives one.")
    hours: dict[NbaChannel, Hours] = Field(
        default_factory=lambda: {"email": "09:00-20:00", "push": "10:00-21:00", "sms": "10:00-20:00"},  # type: ignore[arg-type]
        description="Contact hours per channel, local time; a channel not listed may be used at any hour.")
    business_hours: Hours = Field(default="09:00-18:00", description="Placements with business_hours = true "
                                  "(B2B): Monday to Friday, within these hours as well.")
    send_within_hours: int = Field(default=24, ge=1, le=168, description="send_at is the best hour within this "
                                   "horizon (the first open hour if none is open in it, up to 7 days).")
    activity_half_life_days: PositiveFloat = Field(default=28.0, description="Half-life of the activity hours.")
    activity_prior_strength: Weight = Field(default=4.0, description="Pseudo-events of the population's hours "
                                            "mixed into a customer's (a newcomer gets the population's best).")
    engagement_prior_strength: Weight = Field(default=20.0, description="Pseudo-impressions of the population's "
                                              "engagement rate per channel in a customer's estimate.")


#: Where a touch happens (``engine.attribution.CHANNELS``, the ``impression`` event's enum).
Channel = Literal["web", "app", "email", "push", "sms", "in_app"]
Cost = Annotated[float, Field(ge=0, le=1e9)]
Model = Literal["last_touch", "linear", "position_based"]


def _all_models() -> list[Model]:
    return ["last_touch", "linear", "position_based"]


class CostPerImpression(Strict):
    """What one impression costs (both add up): ROI = (attributed revenue - cost) / cost."""

    actions: dict[Id, Cost] = Field(default_factory=dict, description="Per action id (declared actions).")
    channels: dict[Channel, Cost] = Field(default_factory=dict, description="Per channel.")


class Attribution(Strict):
    """Conversions credited in the stream to the touches (impressions, clicks) before them (docs/attribution.md)."""

    enabled: bool = Field(default=False, description="Keep touch lists and attribution counters in the worker.")
    window_hours: Annotated[float, Field(gt=0, le=2160)] = Field(
        default=168.0, description="A conversion credits the touches of this many hours before it (at most 90 days).")
    models: Annotated[list[Model], Field(min_length=1), AfterValidator(_unique)] = Field(
        default_factory=_all_models,
        description="position_based: 40% first touch, 40% last, 20% shared by those between.")
    goals: Annotated[list[EventType], AfterValidator(_unique)] = Field(
        default_factory=list, description="Event types counted as conversions besides purchase.")
    max_touches: int = Field(default=20, ge=1, le=200, description="Touches kept per person (the oldest go).")
    cost_per_impression: CostPerImpression = Field(default_factory=CostPerImpression)


class ContactPolicy(Strict):
    """Eligibility, suppression and frequency caps before scoring (engine/contact_policy.py, docs/contact-policy.md)."""

    enabled: bool = Field(default=False, description="Count exposures in the stream and apply the rules in decide.")
    suppress_purchased: bool = Field(default=True, description="An action whose item the customer bought is out.")
    suppress_in_cart: bool = Field(default=True, description="An action whose item is in the cart is out.")
    max_shown_without_click: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None, description="An action shown this many times since its last click is out.")
    dismiss_cooldown_hours: Annotated[float, Field(gt=0, le=8760)] | None = Field(
        default=None, description="An action dismissed (feedback kind dismiss) is out for this long.")
    action_caps: Caps = Field(default_factory=Caps, description="Default caps of every action (impressions).")
    channel_caps: dict[Channel, Caps] = Field(default_factory=dict, description="Caps per channel (impressions on it).")
    contact_pressure: Caps = Field(default_factory=Caps, description="Caps over every channel but web, together.")
    max_tracked_actions: int = Field(default=50, ge=1, le=500, description="Actions whose exposures a profile "
                                     "keeps (the least recently touched one goes).")
    max_tracked_purchases: int = Field(default=50, ge=1, le=500, description="Purchased items a profile keeps.")


class ClusterSettings(Strict):
    """Behavioural clusters (engine/clusters.py): online k-means over profiles, learned by the learner; a profile's
    cluster is the segment ``cluster:<k>`` (in decide's answer and in audiences)."""

    enabled: bool = False
    k: int = Field(default=6, ge=1, le=64, description="Clusters at most.")
    feature: Name = Field(default="category", description="The affinity feature whose values the vectors hold.")
    halflife: PositiveFloat = Field(default=5000.0, description="Points after which a centre's step stops shrinking.")
    min_distance: float = Field(default=0.3, ge=0, description="A new centre is seeded only this far from the others.")
    max_profiles_per_batch: int = Field(default=256, ge=1, le=10_000,
                                        description="Profiles of one ingest batch sent to the learner at most.")
    snapshot_every_seconds: PositiveFloat = 5.0


class Document(Strict):
    """An engine configuration file (TOML)."""

    include: list[str] = Field(
        default_factory=list, description="Files (relative to this one) loaded first; this file overlays them.")
    replace: list[str] = Field(
        default_factory=list, description="Top-level keys this file replaces whole instead of merging.")
    profile: Profile = Field(default_factory=Profile)
    privacy: Privacy = Field(default_factory=Privacy)
    feature: list[Feature] = []
    collaborative: Collaborative = Field(default_factory=Collaborative)
    scoring: Scoring = Field(default_factory=Scoring)
    segment: list[Segment] = []
    placement: list[Placement] = []
    action: list[Action] = []
    #: attribution and ROI (engine.attribution)
    attribution: Attribution = Field(default_factory=Attribution)
    contact: Contact = Field(default_factory=Contact)  # next-best action: contact hours, timing, channels
    clusters: ClusterSettings = Field(default_factory=ClusterSettings)  # behavioural clusters (engine/clusters.py)
    contact_policy: ContactPolicy = Field(default_factory=ContactPolicy)  # eligibility, suppression, caps


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a configuration file, for editors (e.g. Even Better TOML / taplo).

    >>> schema = json_schema()
    >>> "page_view" in schema["$defs"]["RecentFeature"]["properties"]["events"]["items"]["enum"]
    True
    """
    from engine.policies import POLICIES  # numpy/river: only to write the schema

    schema = Document.model_json_schema()
    policies = [BASELINE_POLICY, *sorted(POLICIES)]
    _fill(schema, list(event_types()), policies)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "pulse engine configuration",
            **schema}


def _fill(node: Any, events: list[str], policies: list[str]) -> None:
    """Put the event-type and policy enums (known only at run time) into the generated schema."""
    if isinstance(node, dict):
        if node.get("enum") == []:
            node["enum"] = events
        for key in ("policy", "holdout_policy"):
            prop = node.get(key)
            if isinstance(prop, dict) and prop.get("type") == "string" and "properties" not in node:
                prop["enum"] = policies
        for value in node.values():
            _fill(value, events, policies)
    elif isinstance(node, list):
        for value in node:
            _fill(value, events, policies)
