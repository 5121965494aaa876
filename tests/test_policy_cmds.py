"""``policy show``, ``policy adopt`` and ``policy diff`` (SPEC §8): the rule sets in the stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_settlement_cli import cli, cli_json, prepared
from tests.scenario import CLINIC
from tests.test_settlement_close import JULY

RULES = Path(__file__).parent / "rules"
BONUS = RULES / "march_sports_bonus.toml"  # 2026.3 from 2026-03-01: sports fill 0.05, course deals 0.06
SHORT = RULES / "short_protection.toml"


def test_show_prints_the_shipped_rules_after_init(sqlite_store_url: str) -> None:
    url = prepared(sqlite_store_url, CLINIC)
    done, out, _ = cli("policy", "show", "--store", url)
    assert done.returncode == 0
    assert out.startswith("rule set 2026.1 · effective from 2026-01-01 · time zone Asia/Shanghai")
    assert "source_rate.sports_scene" in out and "90 days" in out and "adopted versions" in out
    data = cli_json("policy", "show", "--store", url)
    assert data["version"] == "2026.1" and data["rules"]["source_rate"]["sports_scene"]["course_package"] == "0.10"
    assert [a["version"] for a in data["adopted"]] == ["2026.1"]


def test_adopt_records_the_rules_and_show_finds_them_by_date(store_url: str) -> None:
    url = prepared(store_url, CLINIC)
    done, out, err = cli("policy", "adopt", str(BONUS), "--store", url)
    assert done.returncode == 0, err
    assert out.startswith("adopted rule set 2026.3, effective from 2026-03-01, at position")
    assert "changes from 2026.1: rate source_rate.sports_scene.fill_item 0.04→0.05; rate deal_rate.course_package 0.05→0.06" in out
    assert cli_json("policy", "show", "--store", url)["version"] == "2026.3"
    assert cli_json("policy", "show", "--on", "2026-02-28", "--store", url)["version"] == "2026.1"
    assert cli_json("policy", "show", "--on", "2026-03-01", "--store", url)["version"] == "2026.3"
    assert [a["version"] for a in cli_json("policy", "show", "--store", url)["adopted"]] == ["2026.1", "2026.3"]


def test_adopting_the_same_rules_again_writes_nothing(sqlite_store_url: str) -> None:
    url = prepared(sqlite_store_url, CLINIC)
    assert cli("policy", "adopt", str(BONUS), "--store", url)[0].returncode == 0
    done, out, _ = cli("policy", "adopt", str(BONUS), "--store", url)
    assert done.returncode == 0 and out.strip() == "rule set 2026.3 is already adopted (nothing written)"


def test_a_version_name_names_one_rule_set_forever(sqlite_store_url: str, tmp_path: Path) -> None:
    url = prepared(sqlite_store_url, CLINIC)
    changed = tmp_path / "changed.toml"
    changed.write_text(BONUS.read_text().replace("fill_item = 0.05", "fill_item = 0.06"))
    assert cli("policy", "adopt", str(BONUS), "--store", url)[0].returncode == 0
    done, _, err = cli("policy", "adopt", str(changed), "--store", url)
    assert done.returncode == 1 and err.startswith("Error: rule version '2026.3' is already adopted with different rules")
    assert "new version" in err


def test_adopting_rules_for_a_closed_month_says_they_will_be_adjusted(sqlite_store_url: str) -> None:
    url = prepared(sqlite_store_url, JULY)
    assert cli("close", "--month", "2026-07", "--store", url)[0].returncode == 0
    text = BONUS.read_text().replace("effective_from = 2026-03-01", "effective_from = 2026-07-01").replace('"2026.3"', '"2026.7"')
    path = Path(url.removeprefix("sqlite:///")).parent / "july.toml"
    path.write_text(text)
    done, out, _ = cli("policy", "adopt", str(path), "--store", url)
    assert done.returncode == 0 and "note: 2026-07 already closed" in out


def test_a_bad_rule_file_is_refused_with_its_findings(sqlite_store_url: str) -> None:
    url = prepared(sqlite_store_url, CLINIC)
    done, _, err = cli("policy", "adopt", str(RULES / "bad_negative_rate.toml"), "--store", url)
    assert done.returncode == 1 and err.startswith("Error: ") and "negative rate" in err and "Traceback" not in err


def test_diff_two_files_and_an_adopted_version(sqlite_store_url: str) -> None:
    done, out, _ = cli("policy", "diff", str(SHORT), str(BONUS))
    assert done.returncode == 0
    assert "protection_days" in out and "source_rate.sports_scene.fill_item" in out
    data = cli_json("policy", "diff", str(SHORT), str(BONUS))
    assert data["a"] == "2026.2-short" and data["b"] == "2026.3"
    assert {c["field"]: (c["old"], c["new"]) for c in data["changes"]}["protection_days"] == (3, 90)
    url = prepared(sqlite_store_url, CLINIC)
    data = cli_json("policy", "diff", "2026.1", str(BONUS), "--store", url)
    assert [c["field"] for c in data["changes"]] == ["version", "effective_from", "source_rate.sports_scene.fill_item", "deal_rate.course_package"]
    done, out, _ = cli("policy", "diff", "2026.1", "2026.1", "--store", url)
    assert out.strip() == "2026.1 and 2026.1 are the same rules"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["policy", "diff", "nope", str(BONUS)], "Error: 'nope' is neither a rule file nor an adopted version"),
        (["policy", "show", "--version", "9.9"], "Error: rule version '9.9' was never adopted"),
        (["policy", "show", "--on", "March"], "Error: --on takes a date YYYY-MM-DD"),
    ],
)
def test_policy_refusals_are_one_line(sqlite_store_url: str, args: list[str], message: str) -> None:
    url = prepared(sqlite_store_url, CLINIC)
    done, _, err = cli(*args, "--store", url)
    assert done.returncode == 1 and err.startswith(message), err
