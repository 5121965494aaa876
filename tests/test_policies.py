"""Rule sets (SPEC §8) and the rules in force by date (SPEC §6)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import (
    CHANNEL_KINDS,
    PRODUCT_CLASSES,
    RULE_KEYS,
    ConflictingRuleVersion,
    NoRulesInForce,
    RuleBook,
    RuleChange,
    RuleFileError,
    RuleSet,
    UnknownRuleVersion,
    default_rules,
    diff_rules,
    load_rules,
    parse_rules,
)

RULES_DIR = Path(__file__).parent / "rules"
D = Decimal

# A minimal valid rule file: only what has no default.
MINIMAL = """
version = "t1"
effective_from = 2026-01-01

[source_rate.medical_trust]
assessment = 0
fill_item = 0.03
course_package = 0.08

[source_rate.sports_scene]
assessment = 0
fill_item = 0.04
course_package = 0.10

[source_rate.online_platform]
assessment = 0
fill_item = 0.02
course_package = 0.05

[deal_rate]
assessment = 0
fill_item = 0.02
course_package = 0.05
"""


def minimal(**top: str) -> str:
    """MINIMAL with top-level keys (TOML text values) added or replaced; they precede the tables."""
    keys = {"fulfillment_rate": "0.10", "repurchase_rate": "0.03", **top}
    return "".join(f"{key} = {value}\n" for key, value in keys.items()) + MINIMAL


def rules_error(text: str) -> RuleFileError:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(text, "rules.toml")
    return caught.value


# --- the shipped default is the SPEC §8 table -----------------------------------------------

SPEC_SOURCE_RATES = {
    "medical_trust": ("0.00", "0.03", "0.08"),
    "sports_scene": ("0.00", "0.04", "0.10"),
    "online_platform": ("0.00", "0.02", "0.05"),
}
SPEC_DEAL_RATES = ("0.00", "0.02", "0.05")


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
@pytest.mark.parametrize("column", range(3))
def test_default_source_rate_matches_spec_table(kind: str, column: int) -> None:
    product_class = PRODUCT_CLASSES[column]
    assert default_rules().source_rate_for(kind, product_class) == D(SPEC_SOURCE_RATES[kind][column])


@pytest.mark.parametrize("column", range(3))
def test_default_deal_rate_matches_spec_table(column: int) -> None:
    assert default_rules().deal_rate_for(PRODUCT_CLASSES[column]) == D(SPEC_DEAL_RATES[column])


def test_default_scalars_match_spec() -> None:
    rules = default_rules()
    assert rules.version == "2026.1"
    assert rules.effective_from == date(2026, 1, 1)
    assert rules.timezone == "Asia/Shanghai"
    assert str(rules.tz) == "Asia/Shanghai"
    assert rules.protection_days == 90
    assert rules.followup_timeout_days == 7
    assert rules.reattribute_after_protection is False
    assert rules.source_window_days == 365
    assert rules.fulfillment_rate == D("0.10")
    assert rules.repurchase_rate == D("0.03")
    assert rules.pressure_threshold == D("0.85")
    assert rules.cadence_for("course_package") == 2
    assert rules.cadence_for("fill_item") == 1
    assert rules.cadence_for("assessment") == 0


def test_shipped_file_explains_every_key() -> None:
    """An operations person reads default.toml: every key and table has a comment above it."""
    from importlib import resources

    lines = resources.files("policies").joinpath("default.toml").read_text("utf-8").splitlines()
    explained = set()
    for number, line in enumerate(lines):
        if line and not line.startswith("#") and lines[number - 1].startswith("#"):
            explained.add(line.split("=")[0].strip().strip("[]").split(".")[0])
    assert set(RULE_KEYS) <= explained
    assert "保护期" in "\n".join(lines)


def test_rates_are_decimals_never_floats() -> None:
    for path, value in default_rules().flat():
        assert not isinstance(value, float), path
    assert isinstance(default_rules().source_rate_for("sports_scene", "fill_item"), Decimal)


def test_defaults_fill_in_what_a_file_leaves_out() -> None:
    rules = parse_rules(minimal())
    default = default_rules()
    assert rules.protection_days == default.protection_days
    assert rules.followup_timeout_days == default.followup_timeout_days
    assert rules.source_window_days == default.source_window_days
    assert rules.timezone == default.timezone
    assert rules.cadence_per_week == default.cadence_per_week
    assert rules.pressure_threshold == default.pressure_threshold
    assert diff_rules(default, rules) == [RuleChange("version", "2026.1", "t1")]


def test_rule_set_is_immutable() -> None:
    rules = default_rules()
    with pytest.raises(Exception):
        rules.protection_days = 3  # type: ignore[misc]
    with pytest.raises(Exception):
        rules.source_rate.sports_scene.fill_item = D("0.5")  # type: ignore[misc]
    assert hash(rules) == hash(parse_rules(rules.to_toml()))


def test_unknown_names_in_lookups_list_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown channel kind 'yoga'.*medical_trust"):
        default_rules().source_rate_for("yoga", "fill_item")
    with pytest.raises(ValueError, match="unknown product class 'membership'.*course_package"):
        default_rules().deal_rate_for("membership")


def test_short_protection_fixture_is_the_default_with_three_days() -> None:
    short = load_rules(RULES_DIR / "short_protection.toml")
    assert short.version == "2026.2-short"
    assert short.protection_days == 3
    assert diff_rules(default_rules(), short) == [
        RuleChange("version", "2026.1", "2026.2-short"),
        RuleChange("protection_days", 90, 3),
    ]


# --- every kind of bad rule file names the field --------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "field", "reason"),
    [
        ("bad_missing_rate.toml", "source_rate.sports_scene.fill_item", "missing rate"),
        ("bad_negative_rate.toml", "deal_rate.fill_item", "negative rate -0.02"),
        ("bad_rate_above_one.toml", "source_rate.online_platform.course_package", "rate 5 is above 1"),
        ("bad_unknown_channel_kind.toml", "source_rate.yoga_studio", "unknown channel kind 'yoga_studio'"),
        ("bad_unknown_product_class.toml", "deal_rate.membership", "unknown product class 'membership'"),
        ("bad_unknown_key.toml", "protection_day", "unknown key 'protection_day'"),
        ("bad_timezone.toml", "timezone", "unknown time zone 'Asia/Beijing'"),
    ],
)
def test_bad_rule_file_names_the_field(fixture: str, field: str, reason: str) -> None:
    path = RULES_DIR / fixture
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    error = caught.value
    assert len(error.findings) == 1, str(error)
    assert error.source == str(path)
    assert error.field == field
    assert error.reason.startswith(reason)
    assert str(error).startswith(f"{path}: {field}: {reason}")


def test_missing_rate_message_reads_as_in_the_brief() -> None:
    text = minimal().replace("fill_item = 0.04\n", "")
    assert str(rules_error(text)) == "rules.toml: source_rate.sports_scene.fill_item: missing rate"


def test_unknown_names_list_the_allowed_ones() -> None:
    kind = rules_error(minimal() + "\n[source_rate.yoga]\nassessment = 0\n")
    assert kind.reason.endswith("allowed: medical_trust, sports_scene, online_platform")
    product = rules_error(minimal().replace("[deal_rate]\n", "[deal_rate]\nmembership = 0.01\n"))
    assert product.reason.endswith("allowed: assessment, fill_item, course_package")
    key = rules_error(minimal(protection_day="90"))
    assert "did you mean protection_days?" in key.reason
    assert "source_window_days" in key.reason


def test_toml_syntax_error_gives_the_line() -> None:
    path = RULES_DIR / "bad_syntax.toml"
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    error = caught.value
    assert error.line == 4
    assert error.field == ""
    assert error.reason.startswith("TOML syntax error")
    assert str(error).startswith(f"{path}: line 4, column ")


def test_all_findings_are_reported_together() -> None:
    text = minimal(timezone='"Mars/Olympus"', protection_days="-1").replace(
        "fill_item = 0.04\n", "fill_item = 1.5\n"
    ).replace("course_package = 0.05\n", "", 1)
    error = rules_error(text)
    fields = [finding.field for finding in error.findings]
    assert fields == [
        "timezone",
        "protection_days",
        "source_rate.sports_scene.fill_item",
        "source_rate.online_platform.course_package",
    ]
    assert str(error).count("\n") == 3
    assert error.field == "timezone"


@pytest.mark.parametrize(
    ("top", "field", "reason"),
    [
        ({"protection_days": '"90"'}, "protection_days", "must be a whole number of days, got a string"),
        ({"protection_days": "90.0"}, "protection_days", "must be a whole number of days"),
        ({"protection_days": "true"}, "protection_days", "must be a whole number of days, got a boolean"),
        ({"followup_timeout_days": "0"}, "followup_timeout_days", "must be at least 1 days"),
        ({"source_window_days": "-1"}, "source_window_days", "must be at least 0 days"),
        ({"protection_days": "100000000"}, "protection_days", "must be at most"),
        ({"reattribute_after_protection": '"yes"'}, "reattribute_after_protection", "must be true or false"),
        ({"reattribute_after_protection": "1"}, "reattribute_after_protection", "must be true or false"),
        ({"pressure_threshold": "0"}, "pressure_threshold", "pressure threshold 0 must be above 0"),
        ({"pressure_threshold": "85"}, "pressure_threshold", "pressure threshold 85 is a utilisation fraction"),
        ({"timezone": "8"}, "timezone", "must be a time zone name"),
        ({"timezone": '"localtime"'}, "timezone", "unknown time zone"),
        ({"timezone": '"../../etc/passwd"'}, "timezone", "unknown time zone"),
        ({"fulfillment_rate": '"ten percent"'}, "fulfillment_rate", "a rate must be a decimal number"),
        ({"fulfillment_rate": "nan"}, "fulfillment_rate", "a rate must be a finite decimal number"),
        ({"fulfillment_rate": "0.1234567"}, "fulfillment_rate", "a rate has more than 6 decimal places"),
        ({"fulfillment_rate": "true"}, "fulfillment_rate", "a rate must be a decimal number, got a boolean"),
    ],
)
def test_wrong_values_name_the_field(top: dict[str, str], field: str, reason: str) -> None:
    error = rules_error(minimal(**top))
    assert (error.field, error.reason[: len(reason)]) == (field, reason), str(error)


def test_version_must_be_a_quoted_name() -> None:
    unquoted = rules_error(minimal().replace('version = "t1"', "version = 2026.1"))
    assert unquoted.field == "version"
    assert 'quote it: version = "2026.1"' in unquoted.reason
    spaced = rules_error(minimal().replace('version = "t1"', 'version = "2026 march"'))
    assert spaced.field == "version"


def test_effective_from_is_a_date_not_a_time() -> None:
    text = minimal().replace("= 2026-01-01", "= 2026-01-01T00:00:00+08:00")
    error = rules_error(text)
    assert error.field == "effective_from"
    assert error.reason == "must be a date (YYYY-MM-DD), not a date-time"


def test_tables_must_be_tables() -> None:
    deal_table = "[deal_rate]\nassessment = 0\nfill_item = 0.02\ncourse_package = 0.05\n"
    text = minimal().replace(deal_table, "")
    error = rules_error("deal_rate = 0.05\n" + text)
    assert error.field == "deal_rate"
    assert error.reason.startswith("must be a table of rates per product class")
    missing = rules_error(text)
    assert (missing.field, missing.reason[:14]) == ("deal_rate", "missing table:")


def test_cadence_table_must_name_every_class() -> None:
    error = rules_error(minimal() + "\n[cadence_per_week]\ncourse_package = 3\n")
    assert [f.field for f in error.findings] == [
        "cadence_per_week.assessment",
        "cadence_per_week.fill_item",
    ]
    assert error.reason == "missing cadence"


def test_cadence_is_not_bounded_by_one_but_by_the_week() -> None:
    table = "\n[cadence_per_week]\nassessment = 0\nfill_item = {}\ncourse_package = 3\n"
    rules = parse_rules(minimal() + table.format("1.5"))
    assert rules.cadence_for("fill_item") == D("1.5")
    assert rules.cadence_for("course_package") == 3
    error = rules_error(minimal() + table.format("-1"))
    assert error.field == "cadence_per_week.fill_item"


def test_missing_file_and_bad_encoding_are_rule_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match="cannot read the file"):
        load_rules(tmp_path / "absent.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'version = "\xe9"\n')
    with pytest.raises(RuleFileError, match="not UTF-8"):
        load_rules(latin)


def test_rule_file_error_is_a_value_error_for_pydantic_validators() -> None:
    assert issubclass(RuleFileError, ValueError)


# --- round trips -----------------------------------------------------------------------------


def test_to_toml_round_trips_and_is_canonical() -> None:
    for rules in (default_rules(), load_rules(RULES_DIR / "short_protection.toml")):
        text = rules.to_toml()
        again = parse_rules(text)
        assert again == rules
        assert again.to_toml() == text
        assert again.canonical_dict() == rules.canonical_dict()


def test_spelling_of_numbers_does_not_change_the_rules() -> None:
    a = parse_rules(minimal())
    respelt = minimal().replace("course_package = 0.10", 'course_package = "0.1"')
    b = parse_rules(respelt.replace("assessment = 0\n", "assessment = 0.000\n"))
    assert a == b
    assert a.to_toml() == b.to_toml()
    assert a.digest() == b.digest()
    assert a.source_rate_for("sports_scene", "course_package").as_tuple() == D("0.10").as_tuple()


def test_canonical_dict_is_json_ready_and_round_trips() -> None:
    import json

    rules = load_rules(RULES_DIR / "march_sports_bonus.toml")
    data = rules.canonical_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["effective_from"] == "2026-03-01"
    assert data["source_rate"]["sports_scene"]["fill_item"] == "0.05"
    assert data["protection_days"] == 90
    assert data["reattribute_after_protection"] is False
    assert data["cadence_per_week"] == {"assessment": "0", "fill_item": "1", "course_package": "2"}
    assert RuleSet.from_event_rules(data) == rules
    assert RuleSet.from_event_rules(json.loads(json.dumps(data))).digest() == rules.digest()


def test_from_event_rules_reports_rule_errors() -> None:
    data = default_rules().canonical_dict()
    data["deal_rate"]["fill_item"] = "-1"
    with pytest.raises(RuleFileError) as caught:
        RuleSet.from_event_rules(data)
    assert caught.value.field == "deal_rate.fill_item"
    assert caught.value.source == "policy.adopted rules"
    with pytest.raises(RuleFileError):
        RuleSet.from_event_rules(["not", "a", "table"])  # type: ignore[arg-type]


def test_from_event_rules_reads_float_numbers_through_their_repr() -> None:
    data = default_rules().canonical_dict()
    data["fulfillment_rate"] = 0.1
    assert RuleSet.from_event_rules(data).fulfillment_rate == D("0.10")


rates = st.decimals(min_value=0, max_value=1, places=4, allow_nan=False, allow_infinity=False)
class_rates = st.fixed_dictionaries({cls: rates for cls in PRODUCT_CLASSES})
cadences = st.decimals(min_value=0, max_value=14, places=2, allow_nan=False, allow_infinity=False)
rule_data = st.fixed_dictionaries(
    {
        "version": st.from_regex(r"[0-9A-Za-z][0-9A-Za-z._\-+]{0,20}", fullmatch=True),
        "effective_from": st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)),
        "timezone": st.sampled_from(["Asia/Shanghai", "Asia/Hong_Kong", "UTC", "America/New_York"]),
        "protection_days": st.integers(0, 3650),
        "followup_timeout_days": st.integers(1, 365),
        "reattribute_after_protection": st.booleans(),
        "source_window_days": st.integers(0, 3650),
        "source_rate": st.fixed_dictionaries({kind: class_rates for kind in CHANNEL_KINDS}),
        "deal_rate": class_rates,
        "fulfillment_rate": rates,
        "repurchase_rate": rates,
        "cadence_per_week": st.fixed_dictionaries({cls: cadences for cls in PRODUCT_CLASSES}),
        "pressure_threshold": st.decimals(min_value=D("0.01"), max_value=2, places=2),
    }
)


@settings(max_examples=150, deadline=None)
@given(rule_data)
def test_valid_random_rule_sets_round_trip_exactly(data: dict) -> None:
    rules = RuleSet.from_event_rules(data)
    # Every rate keeps its value exactly.
    for kind in CHANNEL_KINDS:
        for cls in PRODUCT_CLASSES:
            assert rules.source_rate_for(kind, cls) == data["source_rate"][kind][cls]
    assert rules.fulfillment_rate == data["fulfillment_rate"]
    from_text = parse_rules(rules.to_toml())
    from_event = RuleSet.from_event_rules(rules.canonical_dict())
    assert from_text == rules == from_event
    assert from_text.to_toml() == rules.to_toml()
    assert from_event.canonical_dict() == rules.canonical_dict()
    # Digits, not just values, survive: the canonical form is a fixed point.
    assert [str(v) for _, v in from_text.flat()] == [str(v) for _, v in rules.flat()]
    assert diff_rules(rules, from_text) == []


# --- which rules are in force (SPEC §6) -------------------------------------------------------


def version(name: str, effective_from: date, **changes: object) -> RuleSet:
    data = default_rules().canonical_dict()
    data.update(version=name, effective_from=effective_from.isoformat(), **changes)
    return RuleSet.from_event_rules(data)


def test_in_force_switches_on_the_effective_date() -> None:
    jan = default_rules()
    march = load_rules(RULES_DIR / "march_sports_bonus.toml")
    book = RuleBook([(10, march), (1, jan)])
    assert book.in_force(date(2026, 1, 1)) is jan
    assert book.in_force(date(2026, 2, 28)) is jan
    assert book.in_force(date(2026, 3, 1)) is march
    assert book.in_force(date(2027, 1, 1)) is march
    assert book.versions == ("2026.1", "2026.3")


def test_nothing_in_force_before_the_first_version() -> None:
    book = RuleBook([(1, default_rules())])
    with pytest.raises(NoRulesInForce) as caught:
        book.in_force(date(2025, 12, 31))
    assert caught.value.earliest == date(2026, 1, 1)
    assert "2025-12-31" in str(caught.value) and "2026-01-01" in str(caught.value)
    with pytest.raises(NoRulesInForce, match="none has been adopted"):
        RuleBook().in_force(date(2026, 1, 1))


def test_same_effective_date_the_later_adoption_wins() -> None:
    a = version("a", date(2026, 2, 1), protection_days=30)
    b = version("b", date(2026, 2, 1), protection_days=60)
    assert RuleBook([(5, a), (7, b)]).in_force(date(2026, 2, 1)) is b
    assert RuleBook([(7, a), (5, b)]).in_force(date(2026, 2, 1)) is a
    # Adopting a later-dated version earlier in the ledger still lets it apply from its date.
    late = version("late", date(2026, 6, 1))
    book = RuleBook([(1, late), (2, a)])
    assert book.in_force(date(2026, 5, 31)) is a
    assert book.in_force(date(2026, 6, 1)) is late


def test_in_force_at_counts_the_day_in_the_rules_time_zone() -> None:
    jan = default_rules()
    march = load_rules(RULES_DIR / "march_sports_bonus.toml")
    book = RuleBook([(1, jan), (2, march)])
    # 2026-02-28 16:30 UTC is 2026-03-01 00:30 in Shanghai.
    assert book.in_force_at(datetime(2026, 2, 28, 16, 30, tzinfo=timezone.utc)) is march
    assert book.in_force_at(datetime(2026, 2, 28, 15, 59, tzinfo=timezone.utc)) is jan
    assert march.month_of(datetime(2026, 2, 28, 16, 30, tzinfo=timezone.utc)) == "2026-03"
    with pytest.raises(ValueError):
        book.in_force_at(datetime(2026, 3, 1))
    with pytest.raises(NoRulesInForce):
        book.in_force_at(datetime(2025, 12, 31, 15, 59, tzinfo=timezone(timedelta(0))))


def test_a_version_names_one_rule_set() -> None:
    jan = default_rules()
    changed = version("2026.1", date(2026, 1, 1), protection_days=30)
    with pytest.raises(ConflictingRuleVersion, match="'2026.1'"):
        RuleBook([(1, jan), (2, changed)])
    with pytest.raises(ConflictingRuleVersion):
        RuleBook.single(jan, 1).with_adopted(2, changed)
    # Re-adopting identical rules is fine, and can win a tie again.
    other = version("other", date(2026, 1, 1), protection_days=30)
    book = RuleBook([(1, jan), (2, other), (3, jan)])
    assert book.in_force(date(2026, 1, 1)) is jan
    assert book.versions == ("other", "2026.1")
    assert len(book) == 3


def test_book_lookups_and_immutability() -> None:
    jan = default_rules()
    book = RuleBook.single(jan, position=4)
    grown = book.with_adopted(9, load_rules(RULES_DIR / "march_sports_bonus.toml"))
    assert len(book) == 1 and len(grown) == 2
    assert grown.get("2026.1") is jan
    assert "2026.3" in grown and "2026.3" not in book
    assert [a.position for a in grown.adoptions] == [4, 9]
    with pytest.raises(UnknownRuleVersion, match="2026.1, 2026.3"):
        grown.get("2025.9")
    with pytest.raises(ValueError, match="same position"):
        RuleBook([(1, jan), (1, version("x", date(2026, 5, 1)))])
    with pytest.raises(TypeError):
        book.in_force(datetime(2026, 1, 2, tzinfo=timezone.utc))  # type: ignore[arg-type]


# --- diffs -----------------------------------------------------------------------------------


def test_diff_finds_exactly_the_changed_fields_in_spec_order() -> None:
    jan = default_rules()
    march = load_rules(RULES_DIR / "march_sports_bonus.toml")
    assert diff_rules(jan, march) == [
        RuleChange("version", "2026.1", "2026.3"),
        RuleChange("effective_from", date(2026, 1, 1), date(2026, 3, 1)),
        RuleChange("source_rate.sports_scene.fill_item", D("0.04"), D("0.05")),
        RuleChange("deal_rate.course_package", D("0.05"), D("0.06")),
    ]
    assert diff_rules(jan, jan) == []
    assert [c.field for c in diff_rules(march, jan)] == [c.field for c in diff_rules(jan, march)]
    assert diff_rules(jan, march)[2].describe() == "source_rate.sports_scene.fill_item: 0.04 → 0.05"


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_diff_reports_each_changed_rate_and_nothing_else(data: st.DataObject) -> None:
    base = default_rules()
    paths = [path for path, _ in base.flat() if path.split(".")[0].endswith("_rate")]
    chosen = data.draw(st.lists(st.sampled_from(paths), unique=True, max_size=6))
    changed = base.canonical_dict()
    expected = []
    for path in paths:
        if path not in chosen:
            continue
        old = dict(base.flat())[path]
        new = data.draw(rates.filter(lambda r, old=old: r != old))
        *parents, leaf = path.split(".")
        node = changed
        for part in parents:
            node = node[part]
        node[leaf] = str(new)
        expected.append(RuleChange(path, old, new))
    assert diff_rules(base, RuleSet.from_event_rules(changed)) == expected
