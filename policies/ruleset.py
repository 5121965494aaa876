"""Versioned rule sets (SPEC §8) and the book of adopted versions (SPEC §6).

A rule set is everything a projection needs besides the events: the protection period, the
follow-up timeout, the three commission rates, the forecast cadence and the pressure threshold.
It is read from a TOML file (``load_rules`` / ``parse_rules``), stored inside a ``policy.adopted``
event as a JSON-ready dict (``RuleSet.canonical_dict`` / ``RuleSet.from_event_rules``), and looked
up by date through a ``RuleBook`` (the version whose ``effective_from`` is the latest not after the
date, SPEC §6).

Rules are pure data: nothing here reads the wall clock, the machine's time zone or a database.
Rates and other fractional values are ``Decimal``, never ``float``: TOML numbers are parsed
straight into ``Decimal`` (``tomllib``'s ``parse_float``), and a ``float`` handed in from Python is
converted through its shortest ``repr``.

Fractional values are held in one canonical form, so that the same rules always give the same
text, the same ``canonical_dict`` and the same digest however the file spelled them: rates and the
pressure threshold keep at least two decimal places (``0.1`` → ``0.10``, ``0.035`` stays
``0.035``), cadences drop trailing zeros (``2.0`` → ``2``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError

__all__ = [
    "CHANNEL_KINDS",
    "PRODUCT_CLASSES",
    "RULE_KEYS",
    "Adoption",
    "ClassRates",
    "ConflictingRuleVersion",
    "NoRulesInForce",
    "RuleBook",
    "RuleChange",
    "RuleFileError",
    "RuleFinding",
    "RuleSet",
    "SourceRates",
    "UnknownRuleVersion",
    "WeeklyCadence",
    "default_rules",
    "diff_rules",
    "load_rules",
    "parse_rules",
]

# The closed vocabularies of SPEC §2: ``channel.registered.kind`` and
# ``order.paid.items[].product_class``.
CHANNEL_KINDS: Final[tuple[str, ...]] = ("medical_trust", "sports_scene", "online_platform")
PRODUCT_CLASSES: Final[tuple[str, ...]] = ("assessment", "fill_item", "course_package")

# Day counts are capped at 100 years: far beyond any business use, and well inside what
# ``datetime`` arithmetic can hold (a larger value would overflow inside a projection).
MAX_DAYS: Final[int] = 36_500
# At most this many decimal places in a rate, a cadence or a threshold (0.000001 = 0.0001 %).
MAX_PLACES: Final[int] = 6

_TWO_PLACES = Decimal("0.01")
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
# Names people write for China Standard Time that are not IANA keys.
_CHINA_ALIASES = {
    alias: "Asia/Shanghai"
    for alias in (
        "asia/beijing", "beijing", "china", "cst", "china standard time",
        "utc+8", "gmt+8", "utc+08:00",
    )
}


# --- errors --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleFinding:
    """One thing wrong with a rule file: the dotted ``field`` path (``""`` for the file as a
    whole), the ``reason``, and for TOML syntax errors the 1-based ``line``/``column``."""

    field: str
    reason: str
    line: int | None = None
    column: int | None = None

    def render(self, source: str) -> str:
        where = self.field
        if self.line is not None:
            where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        return f"{source}: {where}: {self.reason}" if where else f"{source}: {self.reason}"


class RuleFileError(ValueError):
    """A rule file (or the ``rules`` of a ``policy.adopted`` event) is not a valid rule set.

    Carries every finding (``findings``); ``field`` and ``reason`` are those of the first, so a
    caller that only shows one line still names the field. ``str()`` shows them all, one a line::

        rules.toml: source_rate.sports_scene.fill_item: missing rate

    It is a ``ValueError`` so that a pydantic validator calling ``RuleSet.from_event_rules``
    reports it as an ordinary validation error.
    """

    def __init__(self, source: str, findings: Sequence[RuleFinding]):
        if not findings:
            raise ValueError("RuleFileError needs at least one finding")
        self.source = source
        self.findings: tuple[RuleFinding, ...] = tuple(findings)
        self.field = self.findings[0].field
        self.reason = self.findings[0].reason
        self.line = self.findings[0].line
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f.render(self.source) for f in self.findings)


class NoRulesInForce(LookupError):
    """No adopted rule set applies on ``on``: nothing adopted yet, or ``on`` precedes the
    earliest ``effective_from`` (``earliest``)."""

    def __init__(self, on: date, earliest: date | None):
        self.on = on
        self.earliest = earliest
        if earliest is None:
            message = (
                f"no rule set is in force on {on.isoformat()}: none has been adopted "
                "(hint: `channel-ledger init` adopts the shipped rules)"
            )
        else:
            message = (
                f"no rule set is in force on {on.isoformat()}: the earliest adopted rule set "
                f"takes effect on {earliest.isoformat()}"
            )
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownRuleVersion(LookupError):
    """A rule version was asked for by name and was never adopted."""

    def __init__(self, version: str, known: Sequence[str]):
        self.version = version
        self.known = tuple(known)
        listed = ", ".join(self.known) if self.known else "none"
        super().__init__(f"rule version {version!r} was never adopted; adopted: {listed}")

    def __str__(self) -> str:
        return str(self.args[0])


class ConflictingRuleVersion(ValueError):
    """One version name adopted twice with different content: a version names one rule set."""

    def __init__(self, version: str, first_position: int, position: int):
        self.version = version
        self.first_position = first_position
        self.position = position
        super().__init__(
            f"rule version {version!r} adopted at position {position} differs from the rule set "
            f"adopted under that name at position {first_position}; "
            "give changed rules a new version"
        )

    def __str__(self) -> str:
        return str(self.args[0])


# --- value parsing -------------------------------------------------------------------------


def _toml_type(value: Any) -> str:
    """How a value reads in TOML terms, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, (Decimal, float)):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


def _to_decimal(value: Any, what: str) -> Decimal:
    """A finite Decimal from a Decimal, an int, a decimal string or (via repr) a float."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, float, str)):
        raise ValueError(f"{what} must be a decimal number, got {_toml_type(value)}")
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{what} must be a decimal number, got {str(value)[:40]!r}") from None
    if not number.is_finite():
        raise ValueError(f"{what} must be a finite decimal number")
    if number == 0:
        number = Decimal(0)  # -0 and 0E-5 are plain 0
    if -number.normalize().as_tuple().exponent > MAX_PLACES:  # type: ignore[operator]
        raise ValueError(f"{what} has more than {MAX_PLACES} decimal places")
    return number


def _canonical(number: Decimal, min_places: int) -> Decimal:
    """The one spelling of a value: trailing zeros dropped, but at least ``min_places`` places."""
    normal = number.normalize()
    if normal.as_tuple().exponent > -min_places:  # type: ignore[operator]
        return normal.quantize(Decimal(1).scaleb(-min_places))
    return normal


def _rate(value: Any) -> Decimal:
    number = _to_decimal(value, "a rate")
    if number < 0:
        raise ValueError(f"negative rate {number}; a rate is a fraction between 0 and 1")
    if number > 1:
        raise ValueError(
            f"rate {number} is above 1; rates are fractions (0.05 means 5 %), not percentages"
        )
    return _canonical(number, 2)


def _cadence(value: Any) -> Decimal:
    number = _to_decimal(value, "a cadence")
    if number < 0:
        raise ValueError(f"negative cadence {number}; sessions per week cannot be below 0")
    if number > 7 * 24:
        raise ValueError(f"cadence {number} sessions per week is not plausible (at most 168)")
    return _canonical(number, 0)


def _threshold(value: Any) -> Decimal:
    number = _to_decimal(value, "the pressure threshold")
    if number <= 0:
        raise ValueError(
            f"pressure threshold {number} must be above 0 (0.85 means 85 % utilisation)"
        )
    if number > 10:
        raise ValueError(
            f"pressure threshold {number} is a utilisation fraction (0.85 means 85 %), "
            "not a percentage"
        )
    return _canonical(number, 2)


def _days(minimum: int) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number of days, got {_toml_type(value)}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum} days, got {value}")
        if value > MAX_DAYS:
            raise ValueError(f"must be at most {MAX_DAYS} days, got {value}")
        return value

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_toml_type(value)}")
    return value


_VERSION_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,64}$")


def _version(value: Any) -> str:
    if not isinstance(value, str):
        hint = ' (quote it: version = "2026.1")' if isinstance(value, (int, Decimal, float)) else ""
        raise ValueError(f"must be a string, got {_toml_type(value)}{hint}")
    if not value:
        raise ValueError("must not be empty")
    if not _VERSION_RE.match(value):
        raise ValueError("must be 1 to 64 characters without spaces or control characters")
    return value


_ISO_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _effective_date(value: Any) -> date:
    if isinstance(value, datetime):
        raise ValueError("must be a date (YYYY-MM-DD), not a date-time")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _ISO_DATE_RE.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a calendar date") from None
    raise ValueError(f"must be a date (YYYY-MM-DD), got {_toml_type(value)}")


@cache
def _zone_keys() -> tuple[str, ...]:
    return tuple(sorted(k for k in zoneinfo.available_timezones() if k not in _NOT_ZONES))


def _zone(value: Any) -> str:
    if not isinstance(value, str):
        got = _toml_type(value)
        raise ValueError(f'must be a time zone name such as "Asia/Shanghai", got {got}')
    # zoneinfo recurses once per "/" (a name of ~250 parts overflows the stack): no real zone
    # name is longer than a few dozen characters.
    ok = value not in _NOT_ZONES and not value.startswith(("posix/", "right/")) and len(value) <= 64 and value.count("/") <= 4
    if ok:
        try:
            zoneinfo.ZoneInfo(value)
        except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
            ok = False
    if not ok:
        alias = _CHINA_ALIASES.get(value.strip().lower())
        close = [alias] if alias else difflib.get_close_matches(value, _zone_keys(), n=1)
        hint = f"; did you mean {close[0]}?" if close else "; use an IANA name like Asia/Shanghai"
        raise ValueError(f"unknown time zone {value!r}{hint}")
    return value


Rate = Annotated[Decimal, PlainValidator(_rate)]
Cadence = Annotated[Decimal, PlainValidator(_cadence)]


# --- the model -----------------------------------------------------------------------------


class _Frozen(BaseModel):
    # defer_build: a class's validator is built the first time it validates, not at import —
    # a command that reads one month's kept statement never builds most of them.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class ClassRates(_Frozen):
    """A rate per product class (SPEC §2 ``product_class``): a fraction of the item amount,
    0 ≤ rate ≤ 1 (0.05 = 5 %). Every class must be named."""

    assessment: Rate
    fill_item: Rate
    course_package: Rate

    def __getitem__(self, product_class: str) -> Decimal:
        return getattr(self, _check_class(product_class))

    def items(self) -> tuple[tuple[str, Decimal], ...]:
        return tuple((name, getattr(self, name)) for name in PRODUCT_CLASSES)


class SourceRates(_Frozen):
    """The source reward rates (来源奖励, SPEC §5): one ``ClassRates`` row per channel kind."""

    medical_trust: ClassRates
    sports_scene: ClassRates
    online_platform: ClassRates

    def __getitem__(self, kind: str) -> ClassRates:
        return getattr(self, _check_kind(kind))

    def items(self) -> tuple[tuple[str, ClassRates], ...]:
        return tuple((name, getattr(self, name)) for name in CHANNEL_KINDS)


class WeeklyCadence(_Frozen):
    """Expected sessions per week per product class, for the liability forecast (SPEC §7).
    When a rule file gives the table, it must name every class (no silent per-class default)."""

    assessment: Cadence
    fill_item: Cadence
    course_package: Cadence

    def __getitem__(self, product_class: str) -> Decimal:
        return getattr(self, _check_class(product_class))

    def items(self) -> tuple[tuple[str, Decimal], ...]:
        return tuple((name, getattr(self, name)) for name in PRODUCT_CLASSES)


def _check_class(product_class: str) -> str:
    if product_class not in PRODUCT_CLASSES:
        raise ValueError(
            f"unknown product class {product_class!r}; allowed: {', '.join(PRODUCT_CLASSES)}"
        )
    return product_class


def _check_kind(kind: str) -> str:
    if kind not in CHANNEL_KINDS:
        raise ValueError(f"unknown channel kind {kind!r}; allowed: {', '.join(CHANNEL_KINDS)}")
    return kind


class RuleSet(_Frozen):
    """One version of the rules (SPEC §8). Immutable; equal rule sets compare and hash equal.

    Build one with ``load_rules`` / ``parse_rules`` (a TOML file), ``default_rules()`` (the shipped
    defaults) or ``RuleSet.from_event_rules`` (a ``policy.adopted`` event). Calling the
    constructor directly works too but raises pydantic's ``ValidationError``.
    """

    version: Annotated[str, PlainValidator(_version)]
    """Name of this version, e.g. ``"2026.1"``; statements list the versions they used (§6)."""

    effective_from: Annotated[date, PlainValidator(_effective_date)]
    """First day (in ``timezone``) on which this version applies (§6)."""

    timezone: Annotated[str, PlainValidator(_zone)] = "Asia/Shanghai"
    """IANA time zone in which business days and months are counted (§5 recognition, §9)."""

    protection_days: Annotated[int, PlainValidator(_days(0))] = 90
    """保护期, in days of 24 h: the owner keeps everything for this long after the source (§4)."""

    followup_timeout_days: Annotated[int, PlainValidator(_days(1))] = 7
    """Days without a follow-up or payment after which a ``followup_timeout`` transfer ticket is
    eligible (§4); the due list warns 2 days before (§7)."""

    reattribute_after_protection: Annotated[bool, PlainValidator(_flag)] = False
    """Whether a valid lead from another owner after protection ends takes ownership (§4)."""

    source_window_days: Annotated[int, PlainValidator(_days(0))] = 365
    """Days after the source's time during which paid items earn the source reward (§5)."""

    source_rate: SourceRates
    """来源奖励: fraction of an item's amount paid to the owner, by channel kind and class (§5)."""

    deal_rate: ClassRates
    """成交奖励: fraction of an item's amount paid to the order's ``closed_by``, by class (§5)."""

    fulfillment_rate: Rate
    """履约奖励: fraction of a delivered session's value paid to the clinician (§5)."""

    repurchase_rate: Rate
    """Fraction of a repeat order's course_package amount paid to the previous order's main
    clinician (§5, basis ``repurchase``)."""

    cadence_per_week: WeeklyCadence = WeeklyCadence(
        assessment=Decimal("0"), fill_item=Decimal("1"), course_package=Decimal("2")
    )
    """Expected sessions per week per product class, for the forecast (§7)."""

    pressure_threshold: Annotated[Decimal, PlainValidator(_threshold)] = Decimal("0.85")
    """Utilisation (booked hours ÷ capacity hours) above which a month is flagged (§7)."""

    # --- lookups ---------------------------------------------------------------------------

    def source_rate_for(self, kind: str, product_class: str) -> Decimal:
        """The source reward rate for an item of ``product_class`` bought by a customer whose
        owner's channel is of ``kind`` (§5). Raises ``ValueError`` for an unknown name."""
        return self.source_rate[kind][product_class]

    def deal_rate_for(self, product_class: str) -> Decimal:
        """The deal reward rate for an item of ``product_class`` (§5)."""
        return self.deal_rate[product_class]

    def cadence_for(self, product_class: str) -> Decimal:
        """Expected sessions per week for outstanding sessions of ``product_class`` (§7)."""
        return self.cadence_per_week[product_class]

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The rules' time zone as a ``ZoneInfo``."""
        return zoneinfo.ZoneInfo(self.timezone)

    def local_date(self, moment: datetime) -> date:
        """The business day of an aware ``moment`` in the rules' time zone (§5, §9)."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("a moment without a UTC offset has no business day")
        return moment.astimezone(self.tz).date()

    def month_of(self, moment: datetime) -> str:
        """The business month ``YYYY-MM`` of an aware ``moment`` in the rules' time zone (§5)."""
        return self.local_date(moment).strftime("%Y-%m")

    # --- interchange -----------------------------------------------------------------------

    def flat(self) -> tuple[tuple[str, Any], ...]:
        """Every rule as ``(dotted path, value)`` in the SPEC §8 order; values are the typed
        values (``Decimal``, ``int``, ``bool``, ``date``, ``str``)."""
        rows: list[tuple[str, Any]] = []
        for name in RULE_KEYS:
            value = getattr(self, name)
            if isinstance(value, SourceRates):
                for kind, row in value.items():
                    rows.extend((f"{name}.{kind}.{cls}", rate) for cls, rate in row.items())
            elif isinstance(value, (ClassRates, WeeklyCadence)):
                rows.extend((f"{name}.{cls}", number) for cls, number in value.items())
            else:
                rows.append((name, value))
        return tuple(rows)

    def canonical_dict(self) -> dict[str, Any]:
        """The rule set as JSON-ready data, for a ``policy.adopted`` event and for hashing:
        keys in the SPEC §8 order, the date as ``YYYY-MM-DD``, rates/cadences/threshold as
        decimal strings in canonical form, day counts as integers, the flag as a boolean.
        ``RuleSet.from_event_rules`` is its inverse."""
        out: dict[str, Any] = {}
        for path, value in self.flat():
            *parents, leaf = path.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = _json_value(value)
        return out

    @classmethod
    def from_event_rules(
        cls, rules: Mapping[str, Any], source: str = "policy.adopted rules"
    ) -> RuleSet:
        """Rebuild a rule set from ``canonical_dict`` output (the ``rules`` of a
        ``policy.adopted`` event). Raises ``RuleFileError`` with every finding."""
        if not isinstance(rules, Mapping):
            reason = f"rules must be a table, got {_toml_type(rules)}"
            raise RuleFileError(source, [RuleFinding("", reason)])
        return _validate(dict(rules), source)

    def to_toml(self) -> str:
        """Canonical TOML text: same rules ⇒ same text; ``parse_rules(r.to_toml()) == r``."""
        scalars: list[str] = []
        tables: dict[str, list[str]] = {}
        for path, value in self.flat():
            *parents, leaf = path.split(".")
            line = f"{leaf} = {_toml_value(value)}"
            if parents:
                tables.setdefault(".".join(parents), []).append(line)
            else:
                scalars.append(line)
        parts = ["# channel-ledger rule set (SPEC §8)", *scalars]
        for header, lines in tables.items():
            parts.extend(["", f"[{header}]", *lines])
        return "\n".join(parts) + "\n"

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of ``canonical_dict``: same rules ⇒ same digest."""
        payload = json.dumps(
            self.canonical_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


RULE_KEYS: Final[tuple[str, ...]] = tuple(RuleSet.model_fields)
"""The top-level keys of a rule file, in the SPEC §8 order."""


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text  # a bare TOML number; read back exactly through parse_float=Decimal
    if isinstance(value, int):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    # TOML basic strings share JSON's escapes (\" \\ \n \t \uXXXX ...).
    return json.dumps(value, ensure_ascii=False)


# --- validation and error translation ------------------------------------------------------

_TABLE_WORDS = {
    "source_rate": "a table of channel kinds (medical_trust, sports_scene, online_platform)",
    "deal_rate": "a table of rates per product class (assessment, fill_item, course_package)",
    "cadence_per_week": "a table of sessions per week per product class",
}


def _validate(data: dict[str, Any], source: str) -> RuleSet:
    try:
        return RuleSet.model_validate(data)
    except ValidationError as error:
        raise RuleFileError(source, [_finding(e) for e in error.errors()]) from None


def _finding(error: Mapping[str, Any]) -> RuleFinding:
    loc = tuple(str(part) for part in error["loc"])
    path = ".".join(loc)
    kind = error["type"]
    leaf = loc[-1] if loc else ""
    parent = loc[:-1]
    if kind == "missing":
        if not parent:
            if leaf in _TABLE_WORDS:
                return RuleFinding(path, f"missing table: {_TABLE_WORDS[leaf]}")
            return RuleFinding(path, "missing key")
        if parent[0] == "source_rate" and len(parent) == 1:
            return RuleFinding(path, "missing channel kind (its table of rates per product class)")
        if parent[0] == "cadence_per_week":
            return RuleFinding(path, "missing cadence")
        return RuleFinding(path, "missing rate")
    if kind == "extra_forbidden":
        if not parent:
            what, allowed = "key", RULE_KEYS
        elif parent == ("source_rate",):
            what, allowed = "channel kind", CHANNEL_KINDS
        else:
            what, allowed = "product class", PRODUCT_CLASSES
        close = difflib.get_close_matches(leaf, allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return RuleFinding(path, f"unknown {what} {leaf!r}{hint}; allowed: {', '.join(allowed)}")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        got = _toml_type(error.get("input"))
        if len(loc) == 2 and loc[0] == "source_rate":
            want = "a table of rates per product class (assessment, fill_item, course_package)"
        else:
            want = _TABLE_WORDS.get(leaf, "a table")
        return RuleFinding(path, f"must be {want}, got {got}")
    if kind == "value_error":
        cause = (error.get("ctx") or {}).get("error")
        return RuleFinding(path, str(cause) if cause is not None else error["msg"])
    return RuleFinding(path, str(error["msg"]))


_TOML_WHERE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse the TOML text of a rule file (SPEC §8). ``source`` names it in errors.

    Raises ``RuleFileError`` for a TOML syntax error (with its line and column), a missing or
    unknown key, a value of the wrong type, a rate outside 0..1, a bad time zone; all findings of
    one file are reported together.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _TOML_WHERE.search(message)
        line = column = None
        if match:
            message = message[: match.start()]
            if match.group(1):
                line, column = int(match.group(1)), int(match.group(2))
            else:
                line = text.count("\n") + 1
        reason = f"TOML syntax error: {message}"
        raise RuleFileError(source, [RuleFinding("", reason, line, column)]) from None
    except (ValueError, RecursionError) as error:  # tomllib: an integer too long, nesting too deep
        kind = "nested too deeply" if isinstance(error, RecursionError) else "a value too large to read"
        raise RuleFileError(source, [RuleFinding("", f"TOML syntax error: {kind}", None, None)]) from None
    return _validate(data, source)


def load_rules(path: str | PathLike[str]) -> RuleSet:
    """Read and parse a rule file; errors name the path as given."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        reason = f"cannot read the file: {error.strerror or error}"
        raise RuleFileError(source, [RuleFinding("", reason)]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        reason = f"not UTF-8 text (byte {error.start})"
        raise RuleFileError(source, [RuleFinding("", reason)]) from None
    return parse_rules(text, source)


@cache
def default_rules() -> RuleSet:
    """The shipped rule set (``policies/default.toml``): the SPEC §8 defaults, version
    ``2026.1``, effective from 2026-01-01."""
    text = resources.files(__package__ or "policies").joinpath("default.toml").read_text("utf-8")
    return parse_rules(text, "policies/default.toml")


# --- diffs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleChange:
    """One rule that differs between two rule sets: the dotted ``field`` path and the typed
    ``old`` and ``new`` values (``Decimal`` for rates)."""

    field: str
    old: Any
    new: Any

    def describe(self) -> str:
        return f"{self.field}: {_json_value(self.old)} → {_json_value(self.new)}"


def diff_rules(a: RuleSet, b: RuleSet) -> list[RuleChange]:
    """Every rule whose value differs from ``a`` to ``b``, in the SPEC §8 order (the order of
    ``RuleSet.flat``). ``version`` and ``effective_from`` count as rules too."""
    return [
        RuleChange(path, old, new)
        for (path, old), (_, new) in zip(a.flat(), b.flat(), strict=True)
        if old != new
    ]


# --- the book of adopted versions ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Adoption:
    """A rule set as adopted by a ``policy.adopted`` event at ledger ``position``."""

    position: int
    rules: RuleSet


class RuleBook:
    """The rule sets adopted so far, looked up by date (SPEC §6). Immutable.

    ``in_force(on)`` is the rule set whose ``effective_from`` is the latest not after ``on``.
    Ties: when several adopted rule sets share that ``effective_from``, the one adopted later
    (higher ledger position) wins; the earlier one then never applies.

    Built from ``(position, RuleSet)`` pairs in any order. A version name stands for one rule
    set: adopting it again with different content raises ``ConflictingRuleVersion``;
    re-adopting identical rules is allowed (it can win a tie again).
    """

    __slots__ = ("_adoptions", "_by_date", "_by_version")

    def __init__(self, adoptions: Iterable[tuple[int, RuleSet] | Adoption] = ()):
        items: list[Adoption] = []
        for entry in adoptions:
            adoption = entry if isinstance(entry, Adoption) else Adoption(*entry)
            if not isinstance(adoption.rules, RuleSet):
                raise TypeError("a RuleBook holds RuleSet instances")
            if isinstance(adoption.position, bool) or not isinstance(adoption.position, int):
                raise TypeError("an adoption's position is an integer ledger position")
            items.append(adoption)
        items.sort(key=lambda a: a.position)
        by_version: dict[str, Adoption] = {}
        seen_positions: set[int] = set()
        for adoption in items:
            if adoption.position in seen_positions:
                raise ValueError(f"two rule sets adopted at the same position {adoption.position}")
            seen_positions.add(adoption.position)
            first = by_version.get(adoption.rules.version)
            if first is None:
                by_version[adoption.rules.version] = adoption
            elif first.rules != adoption.rules:
                raise ConflictingRuleVersion(
                    adoption.rules.version, first.position, adoption.position
                )
        self._adoptions: tuple[Adoption, ...] = tuple(items)
        # Latest-winning order: by effective_from, then by adoption position.
        self._by_date: tuple[Adoption, ...] = tuple(
            sorted(items, key=lambda a: (a.rules.effective_from, a.position))
        )
        self._by_version: dict[str, RuleSet] = {v: a.rules for v, a in by_version.items()}

    @classmethod
    def single(cls, rules: RuleSet, position: int = 0) -> RuleBook:
        """A book holding one rule set (tests, what-if runs)."""
        return cls([(position, rules)])

    def with_adopted(self, position: int, rules: RuleSet) -> RuleBook:
        """A new book with ``rules`` adopted at ``position`` as well (this one is unchanged).
        Raises ``ConflictingRuleVersion`` when the version name is taken by other rules, so
        ingest can check an adoption before recording it."""
        return RuleBook([*self._adoptions, Adoption(position, rules)])

    def in_force(self, on: date) -> RuleSet:
        """The rule set that applies on business day ``on`` (SPEC §6); ``NoRulesInForce`` when
        none has taken effect by then."""
        if isinstance(on, datetime):
            raise TypeError("in_force takes a business date; use in_force_at for a moment")
        for adoption in reversed(self._by_date):
            if adoption.rules.effective_from <= on:
                return adoption.rules
        raise NoRulesInForce(on, self._by_date[0].rules.effective_from if self._by_date else None)

    def in_force_at(self, moment: datetime) -> RuleSet:
        """The rule set that applies at an aware ``moment``: each rule set takes effect at 00:00
        of its ``effective_from`` in its own time zone; among those in effect, the latest
        ``effective_from`` wins (ties: the later adoption). With one time zone throughout this
        is ``in_force`` of the moment's local date."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("a moment without a UTC offset cannot be placed in a business day")
        for adoption in reversed(self._by_date):
            if adoption.rules.local_date(moment) >= adoption.rules.effective_from:
                return adoption.rules
        earliest = self._by_date[0].rules if self._by_date else None
        on = earliest.local_date(moment) if earliest else moment.date()
        raise NoRulesInForce(on, earliest.effective_from if earliest else None)

    @property
    def earliest(self) -> RuleSet:
        """The rule set that takes effect first (facts older than every rule set are read under
        it where a projection must still answer, e.g. attribution); ``NoRulesInForce`` if none."""
        if not self._by_date:
            raise NoRulesInForce(date.min, None)
        return self._by_date[0].rules

    def get(self, version: str) -> RuleSet:
        """The adopted rule set named ``version``; ``UnknownRuleVersion`` if there is none."""
        try:
            return self._by_version[version]
        except KeyError:
            raise UnknownRuleVersion(version, self.versions) from None

    @property
    def versions(self) -> tuple[str, ...]:
        """Distinct adopted version names, in the order they take effect: by ``effective_from``,
        then by (latest) adoption position — the last one is in force on the latest dates."""
        order: dict[str, None] = {}
        for adoption in self._by_date:
            order.pop(adoption.rules.version, None)
            order[adoption.rules.version] = None
        return tuple(order)

    @property
    def adoptions(self) -> tuple[Adoption, ...]:
        """Every adoption, in ledger order."""
        return self._adoptions

    def __contains__(self, version: object) -> bool:
        return version in self._by_version

    def __iter__(self) -> Iterator[Adoption]:
        return iter(self._adoptions)

    def __len__(self) -> int:
        return len(self._adoptions)

    def __bool__(self) -> bool:
        return bool(self._adoptions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuleBook) and self._adoptions == other._adoptions

    def __hash__(self) -> int:
        return hash(self._adoptions)

    def __repr__(self) -> str:
        listed = ", ".join(f"{a.position}:{a.rules.version}" for a in self._adoptions)
        return f"RuleBook([{listed}])"
