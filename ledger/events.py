"""The event catalogue of SPEC §2: every touchpoint as a frozen pydantic model.

Events are facts. They are validated here for *shape* only (types, the closed tag vocabulary,
money with at most two places, offset-aware times, person keys); whether a fact refers to things
that exist is decided when it is recorded (`ledger.recording`), and what a fact *means*
(attribution, commission) is decided by projections under a rule set.

Each class names its wire `type` (``lead.captured``) and carries a ``class_version``; a stored
event of an older version is brought up to date by the class's ``upcast_vN_vM`` functions
before it is validated (`upcast`).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import lru_cache
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, Literal, Union

import phonenumbers
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

# --- small named types -------------------------------------------------------------------

TWO_PLACES = Decimal("0.01")


# What a source may write for money: ASCII digits (Decimal alone also reads "1_000" and "１００").
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _to_money(value: Any) -> Decimal:
    """CNY amount: a decimal string or a number, never negative, at most two decimals."""
    if isinstance(value, bool) or value is None:
        raise ValueError("money must be a decimal string or number")
    if isinstance(value, float):
        value = repr(value)
    text = str(value).strip()
    try:
        amount = Decimal(text)
    except (InvalidOperation, ValueError):
        raise ValueError(f"not a decimal amount: {str(value)[:40]!r}") from None
    if not amount.is_finite():
        raise ValueError("money must be a finite amount")
    if not _DECIMAL_TEXT.fullmatch(text):
        raise ValueError(f"not a decimal amount: {str(value)[:40]!r}")
    if amount < 0:
        raise ValueError("negative money is rejected")
    if amount.as_tuple().exponent < -2:  # type: ignore[operator]
        raise ValueError("money has more than 2 decimal places")
    if amount > Decimal("1000000000"):
        raise ValueError("money above 1,000,000,000 CNY is not a plausible amount")
    return amount.copy_abs().quantize(TWO_PLACES)  # copy_abs: "-0" is 0.00, never "-0.00"


Money = Annotated[
    Decimal,
    BeforeValidator(_to_money),
    PlainSerializer(lambda d: f"{d:.2f}", return_type=str, when_used="json"),
]
# No control characters in ids and identity keys: PostgreSQL's text columns (the identity
# index) cannot hold NUL, and an id is never meant to hold a newline or a tab.
NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=NO_CONTROLS)]
Text = Annotated[str, Field(max_length=2000)]


def _not_a_number(value: Any) -> Any:
    """A time is ISO 8601 text (or a datetime from Python): pydantic would read a bare number as
    Unix time, which has no offset written (SPEC §2)."""
    if isinstance(value, (int, float, Decimal)) or (isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip())):
        raise ValueError("must be an ISO 8601 date-time with offset, e.g. 2026-07-01T09:00:00+08:00")
    return value


def _plausible_year(moment: Any) -> Any:
    """Years 1900–2999 only: projections add up to 100 years to a time or a day and convert it
    between zones, which must stay inside what ``datetime`` holds (a year-9999 lead broke every
    read; a year-9999 ``valid_until`` broke ``due``)."""
    if not 1900 <= moment.year <= 2999:
        raise ValueError(f"year {moment.year} is outside 1900–2999")
    return moment


_NUMBER_TEXT = re.compile(r"[+-]?\d+(?:\.\d*)?", re.ASCII)
Moment = Annotated[AwareDatetime, BeforeValidator(_not_a_number), AfterValidator(_plausible_year)]
Day = Annotated[date, AfterValidator(_plausible_year)]
Hours = Annotated[Decimal, Field(ge=0, le=168), PlainSerializer(str, return_type=str, when_used="json")]

ChannelKind = Literal["medical_trust", "sports_scene", "online_platform"]
ProductClass = Literal["assessment", "fill_item", "course_package"]
StaffRole = Literal["channel_agent", "consultant", "clinician", "store_manager", "front_desk"]
NoShowReason = Literal[
    "schedule_conflict",
    "cost_concern",
    "unsure_of_value",
    "symptoms_improved",
    "chose_competitor",
    "unreachable",
    "other",
]
CHANNEL_KINDS: tuple[str, ...] = ("medical_trust", "sports_scene", "online_platform")
PRODUCT_CLASSES: tuple[str, ...] = ("assessment", "fill_item", "course_package")
NO_SHOW_REASONS: tuple[str, ...] = NoShowReason.__args__  # type: ignore[attr-defined]


class Frozen(BaseModel):
    # defer_build: a class's validator is built the first time it validates, not at import —
    # a command that reads one month's kept statement never builds most of them.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


# --- people ------------------------------------------------------------------------------


_SEPARATORS = str.maketrans("", "", " -.()\u00a0\t")


@lru_cache(maxsize=1 << 17)
def normalise_phone(raw: str) -> tuple[str, bool]:
    """E.164 form of a phone and whether it is a valid number (SPEC §2).

    Cached: every stored event with a person is validated again when it is read, and a
    customer's phone recurs in each of its events (a rebuild normalises it a dozen times).

    Mainland 11-digit mobiles get +86; spaces, dashes, dots, brackets, a leading ``0086`` or
    ``+86`` are accepted. A string that cannot be read as a phone is kept as given (stripped) and
    reported invalid: the lead it came with is recorded but never attributed (§4)."""
    text = raw.strip()
    if not text or len(text) > 32:
        return text, False  # kept whole: `Person.phone` rejects it rather than keying a truncation
    cleaned = text.translate(_SEPARATORS) or text
    mainland = _MAINLAND_MOBILE.fullmatch(cleaned)
    if mainland:
        digits = mainland.group(1)
        return ("+86" + digits, True) if _mainland_mobile_is_valid(digits) else (text, False)
    return _normalise_cleaned(cleaned)


_MAINLAND_MOBILE = re.compile(r"(?:\+86|0086|86)?(1\d{10})")


@lru_cache(maxsize=1 << 17)
def _mainland_mobile_is_valid(digits: str) -> bool:
    """The common case, without phonenumbers' parser: validity of an 11-digit mainland mobile."""
    return phonenumbers.is_valid_number(phonenumbers.PhoneNumber(country_code=86, national_number=int(digits)))


@lru_cache(maxsize=1 << 17)
def _normalise_cleaned(text: str) -> tuple[str, bool]:
    """phonenumbers is exact but slow (~0.2 ms a call); a customer's phone recurs in many events."""
    try:
        number = phonenumbers.parse(text, "CN")
    except phonenumbers.NumberParseException:
        return text, False
    if not phonenumbers.is_valid_number(number):
        return text, False
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), True


class Person(Frozen):
    """Who an event is about: at least one identity key (§3). Names are never a key."""

    phone: str | None = Field(default=None, max_length=32, pattern=NO_CONTROLS)
    wechat_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=NO_CONTROLS)
    platform_user: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{1,31}:[^\s:\x00-\x1f\x7f]{1,64}$")
    name: str | None = Field(default=None, max_length=64)

    @field_validator("phone", mode="before")
    @classmethod
    def _phone(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            return normalise_phone(value)[0]
        return value

    # How a person identifies beyond its fields, set by `ledger.sealing` and the store: kept in
    # the instance's ``__dict__`` (`identify_by`), not as pydantic private attributes, whose
    # set-up on every validated person cost a third of reading a stored event. Pydantic reads,
    # dumps, compares and hashes a model by its fields only, so these never leak into the wire.
    #
    # ``_keys``: the keyed hashes (``phone:#…``) of the keys below, which identify this person
    # instead of the keys themselves — for a person read from a store that encrypts personal
    # data. ``_withheld``: a person whose sealed data cannot be opened
    # (`ledger.sealing.withheld_person`): its fields hold markers, and it identifies by
    # ``_keys`` only, its phone valid exactly when ``_phone_valid`` says so.
    _keys: ClassVar[tuple[str, ...] | None] = None
    _withheld: ClassVar[bool] = False
    _phone_valid: ClassVar[bool | None] = None

    @model_validator(mode="after")
    def _has_a_key(self) -> Person:
        if self._withheld:  # a person whose sealed data cannot be opened: as `ledger.sealing` built it
            return self
        if not (self.phone or self.wechat_id or self.platform_user):
            raise ValueError("person needs at least one of phone, wechat_id, platform_user")
        return self

    def identify_by(self, keys: tuple[str, ...], withheld: bool = False, phone_valid: bool | None = None) -> None:
        """Make this person identify by the stored keyed hashes ``keys`` (see above)."""
        self.__dict__.update(_keys=keys, _withheld=withheld, _phone_valid=phone_valid)

    @property
    def phone_is_valid(self) -> bool:
        if self._phone_valid is not None:
            return self._phone_valid
        return bool(self.phone) and self.phone.startswith("+") and normalise_phone(self.phone)[1]

    def identity_keys(self) -> tuple[str, ...]:
        """The keys that identify this person: `plain_identity_keys`, or their keyed hashes
        (``phone:#…``) for a person read from a store that encrypts personal data."""
        return self._keys if self._keys is not None else self.plain_identity_keys()

    def plain_identity_keys(self) -> tuple[str, ...]:
        """The normalised keys of this person, in a fixed order (phone, wechat, platform).

        A phone that is not a valid number still keys its own events together (``phone?…``) but
        is never a valid contact for attribution."""
        keys: list[str] = []
        if self.phone:
            keys.append(("phone:" if self.phone_is_valid else "phone?:") + self.phone)
        if self.wechat_id:
            keys.append("wechat:" + self.wechat_id)
        if self.platform_user:
            keys.append("platform:" + self.platform_user)
        return tuple(keys)


# --- the envelope ------------------------------------------------------------------------


class LedgerEvent(Frozen):
    """Envelope of every event: idempotency key, type, and when it happened in the world."""

    type: ClassVar[str]
    class_version: ClassVar[int] = 1

    event_id: Id
    occurred_at: Moment

    @field_validator("event_id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise ValueError("event_id must be printable without surrounding spaces")
        return value

    def wire(self) -> dict[str, Any]:
        """The event as an interchange object (§2): JSON-ready, with its ``type``."""
        body = self.model_dump(mode="json", exclude_none=True)
        return {"event_id": body.pop("event_id"), "type": self.type, **body}

    @property
    def person_ref(self) -> Person | None:
        return getattr(self, "person", None)


# --- reference data ----------------------------------------------------------------------


class StoreRegistered(LedgerEvent):
    type: ClassVar[str] = "store.registered"
    store_id: Id
    name: Text


class StaffRegistered(LedgerEvent):
    type: ClassVar[str] = "staff.registered"
    staff_id: Id
    name: Text
    role: StaffRole
    store_id: Id


class ChannelRegistered(LedgerEvent):
    type: ClassVar[str] = "channel.registered"
    channel_id: Id
    name: Text
    kind: ChannelKind
    partner: Text = ""


class EntryPointIssued(LedgerEvent):
    type: ClassVar[str] = "entry_point.issued"
    entry_point_id: Id
    channel_id: Id
    owner_staff_id: Id
    store_id: Id


class EntryPointRetired(LedgerEvent):
    type: ClassVar[str] = "entry_point.retired"
    entry_point_id: Id


class ResourceDeclared(LedgerEvent):
    """Capacity of a clinician or room from ``occurred_at`` on (§7).

    Version 1 called the capacity ``hours_per_week``; version 2 names it ``weekly_hours``."""

    type: ClassVar[str] = "resource.declared"
    class_version: ClassVar[int] = 2
    resource_id: Id
    kind: Literal["clinician", "room"]
    store_id: Id
    weekly_hours: Hours

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["weekly_hours"] = state.pop("hours_per_week")


# --- the customer journey ----------------------------------------------------------------


class LeadCaptured(LedgerEvent):
    type: ClassVar[str] = "lead.captured"
    person: Person
    via: Literal["scan", "manual", "platform"]
    entry_point_id: Id | None = None
    channel_id: Id | None = None
    recorded_by: Id | None = None

    @model_validator(mode="after")
    def _how_it_came(self) -> LeadCaptured:
        if self.via == "scan" and not self.entry_point_id:
            raise ValueError("entry_point_id is required for a scan")
        if self.via != "scan" and not (self.channel_id and self.recorded_by):
            raise ValueError(f"channel_id and recorded_by are required for via={self.via}")
        return self


class Intake(Frozen):
    pain_site: Text
    duration_days: int = Field(ge=0, le=36500)
    trauma: bool
    prior_imaging: bool
    sport: Text = ""


class Tags(Frozen):
    """The closed tag vocabulary of §2.1: only tags that drive an action."""

    injury_type: Text | None = None
    urgency: Literal["low", "medium", "high"] | None = None
    imaging_done: bool | None = None
    assessed: bool | None = None
    payment_band: Literal["low", "mid", "high"] | None = None
    target_sport: Text | None = None


ALLOWED_TAGS: tuple[str, ...] = tuple(Tags.model_fields)


class LeadTriaged(LedgerEvent):
    type: ClassVar[str] = "lead.triaged"
    person: Person
    by: Id
    intake: Intake
    route: Literal["offline_assessment", "online_screening"]
    tags: Tags = Tags()

    # The marker shown for intake and tags whose sealed data cannot be opened (`ledger.sealing`),
    # set with `withhold` (in ``__dict__``, as `Person`'s extras are).
    _withheld: ClassVar[str | None] = None

    def withhold(self, marker: str) -> None:
        self.__dict__["_withheld"] = marker

    def wire(self) -> dict[str, Any]:
        body = super().wire()
        if self._withheld is not None:
            body["intake"] = body["tags"] = self._withheld
        return body

    @field_validator("tags", mode="before")
    @classmethod
    def _closed_vocabulary(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(_echo(str(k)) for k in value if k not in ALLOWED_TAGS)
            if unknown:
                raise ValueError(
                    f"unknown tag {', '.join(unknown)}; allowed tags: {', '.join(ALLOWED_TAGS)}"
                )
        return value


class FollowupLogged(LedgerEvent):
    type: ClassVar[str] = "followup.logged"
    person: Person
    by: Id
    medium: Literal["wechat", "phone", "in_store"]


class AssessmentBooked(LedgerEvent):
    type: ClassVar[str] = "assessment.booked"
    appointment_id: Id
    person: Person
    store_id: Id
    clinician_id: Id
    slot_start: Moment
    slot_minutes: int = Field(gt=0, le=24 * 60)


class AssessmentAttended(LedgerEvent):
    type: ClassVar[str] = "assessment.attended"
    appointment_id: Id


class AssessmentNoShow(LedgerEvent):
    type: ClassVar[str] = "assessment.no_show"
    appointment_id: Id
    reason: NoShowReason


class AssessmentCancelled(LedgerEvent):
    type: ClassVar[str] = "assessment.cancelled"
    appointment_id: Id


class OrderItem(Frozen):
    sku: Id
    product_class: ProductClass
    sessions: int = Field(ge=0, le=1000)
    session_minutes: int = Field(default=0, ge=0, le=24 * 60)
    amount: Money
    cost: Money | None = None

    @model_validator(mode="after")
    def _minutes_for_sessions(self) -> OrderItem:
        if self.sessions > 0 and self.session_minutes <= 0:
            raise ValueError("session_minutes is required when the item has sessions")
        return self

    @property
    def session_value(self) -> Decimal:
        """Item amount ÷ item sessions (unrounded); zero when the item has no sessions."""
        return self.amount / self.sessions if self.sessions else Decimal(0)


class OrderPaid(LedgerEvent):
    type: ClassVar[str] = "order.paid"
    order_id: Id
    person: Person
    store_id: Id
    closed_by: Id
    paid_via: Literal["store", "mini_program", "douyin", "meituan", "dianping"]
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=100)
    valid_until: Day | None = None

    @field_validator("items")
    @classmethod
    def _unique_skus(cls, items: tuple[OrderItem, ...]) -> tuple[OrderItem, ...]:
        skus = [i.sku for i in items]
        if len(set(skus)) != len(skus):
            raise ValueError("each sku may appear once in an order")
        return items

    @property
    def amount(self) -> Decimal:
        return sum((i.amount for i in self.items), Decimal("0.00"))

    def item(self, sku: str | None) -> OrderItem | None:
        """The item a session or refund names; without a sku, the only item with sessions."""
        if sku is not None:
            return next((i for i in self.items if i.sku == sku), None)
        with_sessions = [i for i in self.items if i.sessions > 0]
        return with_sessions[0] if len(with_sessions) == 1 else None


class SessionDelivered(LedgerEvent):
    type: ClassVar[str] = "session.delivered"
    order_id: Id
    sku: Id | None = None
    clinician_id: Id
    room_id: Id
    minutes: int = Field(gt=0, le=24 * 60)


class OrderRefunded(LedgerEvent):
    type: ClassVar[str] = "order.refunded"
    refund_id: Id
    order_id: Id
    amount: Money
    sessions: int | None = Field(default=None, ge=0, le=1000)
    sku: Id | None = None


class TransferRequested(LedgerEvent):
    type: ClassVar[str] = "ownership.transfer_requested"
    ticket_id: Id
    person: Person
    to_staff_id: Id
    to_channel_id: Id | None = None
    trigger: Literal["followup_timeout", "customer_request", "cross_store"]
    requested_by: Id
    note: Text = ""


class TransferDecided(LedgerEvent):
    type: ClassVar[str] = "ownership.transfer_decided"
    ticket_id: Id
    decision: Literal["approved", "rejected"]
    decided_by: Id
    note: Text = ""


class CustomersMerged(LedgerEvent):
    type: ClassVar[str] = "customers.merged"
    survivor: Person
    merged: Person
    by: Id
    reason: Text = ""


class PolicyAdopted(LedgerEvent):
    """A rule set (§8) adopted into the stream, so that a replay needs nothing but the store."""

    type: ClassVar[str] = "policy.adopted"
    version: Id
    effective_from: date
    rules: dict[str, Any]

    @field_validator("rules")
    @classmethod
    def _rules_are_a_rule_set(cls, rules: dict[str, Any]) -> dict[str, Any]:
        from policies import RuleFileError, RuleSet

        try:
            RuleSet.from_event_rules(rules)
        except RuleFileError as error:
            raise ValueError("; ".join(f"{f.field}: {f.reason}" for f in error.findings)) from None
        return rules

    @model_validator(mode="after")
    def _names_match_the_rules(self) -> PolicyAdopted:
        if str(self.rules.get("version")) != self.version or str(self.rules.get("effective_from")) != self.effective_from.isoformat():
            raise ValueError("version and effective_from must match the rules'")
        return self


class SettlementClosed(LedgerEvent):
    """Written by ``close`` (§6): the month's digest as built to ``position``."""

    type: ClassVar[str] = "settlement.closed"
    month: Annotated[str, Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]
    digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    position: int | None = Field(default=None, ge=0)
    chain_head: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


# --- the catalogue -----------------------------------------------------------------------

EVENT_CLASSES: tuple[type[LedgerEvent], ...] = (
    StoreRegistered,
    StaffRegistered,
    ChannelRegistered,
    EntryPointIssued,
    EntryPointRetired,
    ResourceDeclared,
    LeadCaptured,
    LeadTriaged,
    FollowupLogged,
    AssessmentBooked,
    AssessmentAttended,
    AssessmentNoShow,
    AssessmentCancelled,
    OrderPaid,
    SessionDelivered,
    OrderRefunded,
    TransferRequested,
    TransferDecided,
    CustomersMerged,
    PolicyAdopted,
    SettlementClosed,
)
BY_TYPE: dict[str, type[LedgerEvent]] = {cls.type: cls for cls in EVENT_CLASSES}
EVENT_TYPES: tuple[str, ...] = tuple(BY_TYPE)
SOURCE_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t != "settlement.closed")

AnyEvent = Union[tuple(EVENT_CLASSES)]  # type: ignore[valid-type]


def _echo(text: str, limit: int = 40) -> str:
    """Input echoed in a finding, made safe for a terminal: as written when printable and short,
    else quoted with escapes (an escape sequence in a key must not reach the screen raw)."""
    return text if text.isprintable() and len(text) <= limit else repr(text[:limit])


class Finding(Frozen):
    """Why one input was not accepted: the field (dotted path) and the reason."""

    field: str
    reason: str


class InvalidEvent(ValueError):
    """An input object is not a well-formed event; carries every finding."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        super().__init__("; ".join(f"{f.field}: {f.reason}" for f in findings))


def _findings(error: ValidationError) -> list[Finding]:
    found: list[Finding] = []
    errors = error.errors(include_url=False, include_input=False)
    for err in errors:
        loc = err["loc"]
        if err["type"] == "too_short" and any(e["loc"][: len(loc)] == loc and e["loc"] != loc for e in errors):
            continue  # a list left short only because its items failed: the items say why
        field = ".".join(_echo(str(p)) for p in loc) or "(event)"
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        elif err["type"] == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == NO_CONTROLS:
            reason = "control characters (NUL, newline, tab…) are not allowed"
        elif err["type"] == "timezone_aware":
            reason = "a time without an offset is rejected (add e.g. +08:00)"
        found.append(Finding(field=field, reason=reason))
    return found


def parse_event(obj: Any) -> LedgerEvent:
    """Validate one interchange object (§2) into its event class, or raise `InvalidEvent`."""
    if not isinstance(obj, dict):
        raise InvalidEvent([Finding(field="(line)", reason="an event must be a JSON object")])
    kind = obj.get("type")
    cls = BY_TYPE.get(kind) if isinstance(kind, str) else None
    if cls is None:
        shown = str(kind)[:40] if kind is not None else "missing"
        raise InvalidEvent(
            [Finding(field="type", reason=f"unknown event type {shown!r}; one of: {', '.join(EVENT_TYPES)}")]
        )
    body = {k: v for k, v in obj.items() if k != "type"}
    try:
        return cls.model_validate(body)
    except ValidationError as error:
        raise InvalidEvent(_findings(error)) from None


def upcast(cls: type[LedgerEvent], state: dict[str, Any], from_version: int) -> dict[str, Any]:
    """Bring a stored state of ``from_version`` up to ``cls.class_version`` (in place)."""
    version = from_version
    while version < cls.class_version:
        getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
        version += 1
    return state

