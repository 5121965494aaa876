"""The month's HTML report (issue #8): one self-contained page whose figures are the commands' own.

The store is a small demo group (two months from 2026-09-01, so the report month is 2026-10) plus
a few events of October: a clinician cut to 0 hours in one store (so that a forecast month is
flagged), and a store and a channel whose names are hostile input (markup, mathtext, a phone).
The page is checked as text, and as Chromium sees it (the DOM and a screenshot in test-artifacts/).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from tests.golden import run_cli
from tests.scenario import write

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
MONTH = "2026-10"
AS_OF = "2026-10-31"

HOSTILE_STORE = "$\\\\frac{1}{0}$ <img src=x onerror=alert(1)> 13812345678"
HOSTILE_CHANNEL = "<script>alert('x')</script> & 运动渠道"
OCTOBER = f"""
{{"event_id": "t-cut-pt2", "type": "resource.declared", "occurred_at": "2026-10-20T09:00:00+08:00", "resource_id": "sh-jingan-pt2", "kind": "clinician", "store_id": "sh-jingan", "weekly_hours": 0}}
{{"event_id": "t-cut-pt3", "type": "resource.declared", "occurred_at": "2026-10-20T09:00:00+08:00", "resource_id": "sh-jingan-pt3", "kind": "clinician", "store_id": "sh-jingan", "weekly_hours": 0}}
{{"event_id": "t-evil-store", "type": "store.registered", "occurred_at": "2026-10-20T09:00:00+08:00", "store_id": "evil-store", "name": "{HOSTILE_STORE}"}}
{{"event_id": "t-evil-channel", "type": "channel.registered", "occurred_at": "2026-10-20T09:00:00+08:00", "channel_id": "evil-channel", "name": "{HOSTILE_CHANNEL}", "kind": "sports_scene"}}
"""


def cli(*args: str) -> bytes:
    done = run_cli(list(args))
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def build(url: str, folder: Path) -> None:
    """The demo group and October's extra events, into the store at ``url``."""
    demo = folder / "demo.jsonl"
    if not demo.exists():
        cli("demo", "--customers", "200", "--months", "2", "--seed", "5", "--out", str(demo))
        write(folder, OCTOBER, "october.jsonl")
    cli("init", "--store", url)
    cli("ingest", str(demo), str(folder / "october.jsonl"), "--store", url)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The store, the CLI's JSON for the month, and the report pages (zh, en) as the CLI wrote them."""
    folder = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{folder / 'group.db'}"
    build(url, folder)
    found = {
        "folder": folder,
        "url": url,
        "settle": orjson.loads(cli("settle", "--month", MONTH, "--json", "--store", url)),
        "ledgers": orjson.loads(cli("ledgers", "--month", MONTH, "--json", "--store", url)),
        "liability": orjson.loads(cli("liability", "--as-of", AS_OF, "--months", "3", "--json", "--store", url)),
    }
    for lang in ("zh", "en"):
        page = folder / f"report-{lang}.html"
        out = cli("report", "--month", MONTH, "--lang", lang, "--out", str(page), "--store", url)
        assert str(page) in out.decode()
        found[lang] = page.read_text(encoding="utf-8")
    return found


# --- reading the page back ---------------------------------------------------------------------


class Page(HTMLParser):
    """Tags with their attributes, and the text of every cell that names its figure (data-*)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: list[tuple[dict[str, str | None], str]] = []
        self.ids: set[str] = set()
        self._open: list[tuple[dict[str, str | None], list[str]]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if found.get("id"):
            self.ids.add(found["id"])
        if tag in ("td", "dd") and any(k.startswith("data-") for k in found):
            self._open.append((found, []))

    def handle_data(self, data: str) -> None:
        for _, parts in self._open:
            parts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "dd") and self._open:
            found, parts = self._open.pop()
            self.cells.append((found, "".join(parts).strip()))

    def cell(self, **wanted: str) -> str:
        matches = [text for attrs, text in self.cells if all(attrs.get(f"data-{k}") == v for k, v in wanted.items())]
        assert len(matches) == 1, (wanted, matches)
        return matches[0]


def shown_figure(value, text: str) -> None:
    """A ledger figure on the page against the CLI's JSON value of it."""
    if isinstance(value, dict):  # a ratio: numerator, denominator, rate (4 places)
        if text.startswith(f"{value['numerator']}/{value['denominator']} = ") or "/" not in text:
            shown = text.rsplit("= ", 1)[-1]
            if value["rate"] is None:
                assert shown == "–", text
            else:
                assert abs(Decimal(shown.rstrip("%")) - Decimal(value["rate"]) * 100) <= Decimal("0.05"), (value, text)
            return
        raise AssertionError((value, text))
    if isinstance(value, int):
        assert text == f"{value:,}", (value, text)
    else:
        assert text == ("–" if value is None else value), (value, text)


def check_ledgers(page: Page, ledgers: dict) -> int:
    """Every ledger figure the page shows equals the one ``ledgers --json`` gives; returns how many."""
    def figures(entry: dict) -> dict:
        return {**entry["lead_quality"], **entry["deal_structure"], **entry["fulfillment_pressure"]}

    by_kind = {k["channel_kind"]: figures(k) for k in ledgers["kinds"]} | {"*": figures(ledgers["total"])}
    by_channel = {c["channel_id"]: figures(c) for c in ledgers["channels"]}
    checked = 0
    for attrs, text in page.cells:
        metric = attrs.get("data-metric")
        if attrs.get("data-kind") is not None:
            shown_figure(by_kind[attrs["data-kind"]][metric], text)
            checked += 1
        elif attrs.get("data-channel") is not None:
            shown_figure(by_channel[attrs["data-channel"]][metric], text)
            checked += 1
    shown_kinds = {attrs["data-kind"] for attrs, _ in page.cells if attrs.get("data-kind")}
    shown_channels = {attrs["data-channel"] for attrs, _ in page.cells if attrs.get("data-channel")}
    assert shown_kinds == set(by_kind) and shown_channels == set(by_channel)
    return checked


def check_commissions(page: Page, settle: dict) -> None:
    assert settle["totals"], "the fixture has commission lines in the month"
    for payee, parts in settle["totals"].items():
        for part in ("source", "deal", "fulfillment", "total"):
            assert page.cell(payee=payee, part=part) == parts[part]
    for part in ("source", "deal", "fulfillment", "total"):
        assert page.cell(payee="*", part=part) == settle["grand_total"][part]
    assert page.cell(fact="digest") == settle["digest"]
    assert page.cell(fact="rule-versions") == ", ".join(settle["rule_versions"])


def check_forecast(page: Page, liability: dict) -> None:
    for row in liability["forecast"]:
        key = {"store": row["store_id"], "month": row["month"]}
        assert page.cell(metric="hours", **key) == row["hours"]
        assert page.cell(metric="capacity_hours", **key) == row["capacity_hours"]
        utilisation = row["utilisation"]
        assert page.cell(metric="utilisation", **key) == ("–" if utilisation is None else f"{Decimal(utilisation) * 100:.1f}%")
        assert bool(page.cell(metric="flagged", **key)) == row["flagged"]


def external_references(text: str) -> list[str]:
    """Anything the page would load: src/href that is not a fragment, scripts, links, frames, CSS
    imports and urls; and any http(s) address at all apart from the SVG namespace names."""
    page = Page(text)
    found = [f"<{tag}>" for tag, _ in page.tags if tag in ("script", "link", "iframe", "frame", "object", "embed", "base")]
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in ("src", "href", "xlink:href", "srcset", "poster", "data") and not (value or "").startswith("#"):
                found.append(f"<{tag} {name}={value}>")
    found += re.findall(r"@import|url\((?!#)[^)]*\)", text)
    without_namespaces = re.sub(r'xmlns(?::\w+)?="http://www\.w3\.org/[^"]*"', "", text)
    found += re.findall(r"https?://\S{0,40}", without_namespaces)
    return found


# --- the page as text -------------------------------------------------------------------------


def test_the_page_loads_nothing_from_anywhere(group: dict) -> None:
    for lang in ("zh", "en"):
        assert external_references(group[lang]) == []
    assert external_references('<img src="https://cdn.example/x.png">') != []  # the check can see one
    assert external_references('<link rel="stylesheet" href="x.css">') != []
    assert external_references('<svg><use xlink:href="#a"/></svg>') == []


def test_the_sections_and_charts_are_there(group: dict) -> None:
    page = Page(group["zh"])
    wanted = {"key-figures", "ledgers", "lead-funnel", "no-show-reasons", "fill-course-mix", "ledgers-by-kind",
              "ledgers-by-channel", "forecast", "forecast-heatmap", "forecast-table", "commission",
              "commission-chart", "commission-table", "statement"}
    assert wanted <= page.ids
    for chart in ("lead-funnel", "no-show-reasons", "fill-course-mix", "forecast-heatmap", "commission-chart"):
        figure = re.search(rf'<figure id="{chart}".*?</figure>', group["zh"], re.S).group(0)
        assert "<svg" in figure and "<text" in figure, chart  # text stays text: CJK drawn by the viewer's fonts


def test_the_figures_are_the_commands_figures(group: dict) -> None:
    for lang in ("zh", "en"):
        page = Page(group[lang])
        assert check_ledgers(page, group["ledgers"]) > 200
        check_commissions(page, group["settle"])
        check_forecast(page, group["liability"])


def test_the_statement_is_the_kept_one_unless_the_store_moved_on_after_the_page_was_read(group: dict) -> None:
    from cli.report import statement_at
    from ledger.store import LedgerStore
    from projections.settlement import Settlement
    from projections.state import KeptLines

    with LedgerStore(group["url"]) as store:
        position = store.position()
        recorded = list(store.read(upto=position))
        kept = statement_at(store, MONTH, recorded, position)
        assert isinstance(kept.lines, KeptLines) and (kept.position, kept.digest) == (position, group["settle"]["digest"])
        # as if another writer appended after the first half was read: the page stays of that half
        half = recorded[: len(recorded) // 2]
        at = half[-1].position
        folded = statement_at(store, MONTH, half, at)
        plain = Settlement(((r.position, r.event) for r in half), position=at).statement(MONTH)
        assert not isinstance(folded.lines, KeptLines)
        assert (folded.position, folded.digest, tuple(folded.lines)) == (at, plain.digest, tuple(plain.lines))
        assert folded.digest != kept.digest


def test_the_heatmap_shows_every_store_and_month_and_flags_the_pressed_ones(group: dict) -> None:
    forecast = group["liability"]["forecast"]
    flagged = [row for row in forecast if row["flagged"]]
    assert flagged, "the fixture cuts sh-jingan's clinicians so that a month is over the threshold"
    for lang, over in (("zh", "超负荷"), ("en", "OVER")):
        heatmap = re.search(r'<figure id="forecast-heatmap".*?</figure>', group[lang], re.S).group(0)
        assert heatmap.count(over) == len(flagged)
        for row in forecast:
            shown = "无产能" if lang == "zh" else "no capacity"
            if row["utilisation"] is not None:
                shown = f"{Decimal(row['utilisation']) * 100:.1f}%"
            assert shown in heatmap, row
        for month in {row["month"] for row in forecast}:
            assert month in heatmap


def test_labels_follow_the_language(group: dict) -> None:
    zh, en = group["zh"], group["en"]
    assert '<html lang="zh-CN">' in zh and '<html lang="en">' in en
    for word in ("三张账", "线索漏斗", "爽约原因", "医疗信任型", "来源奖励", "履约预测", "结算单摘要"):
        assert word in zh and word not in en, word
    for word in ("The three ledgers", "Lead funnel", "No-show reasons", "medical trust", "source", "Fulfillment forecast", "Statement digest"):
        assert word in en, word
    assert "Lead funnel" not in zh


def test_strings_from_events_are_escaped_and_phones_masked(group: dict) -> None:
    for text in (group["zh"], group["en"]):
        assert "<script" not in text and "<img" not in text and "onerror=alert" not in text.replace("&lt;img src=x onerror=alert", "")
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; 运动渠道" in text  # the channel, in its table row
        assert "13812345678" not in text and "138****5678" in text
        heatmap = re.search(r'<figure id="forecast-heatmap".*?</figure>', text, re.S).group(0)
        assert "&lt;img src=x" in heatmap and "$\\frac" in heatmap  # drawn as text, not as markup or mathtext


def test_the_same_events_give_the_same_bytes(group: dict) -> None:
    from cli.report import render_report
    from ledger.store import LedgerStore

    with LedgerStore(group["url"]) as store:  # this process, another hash seed than the CLI's
        assert render_report(store, MONTH) == group["zh"]
        assert render_report(store, MONTH, lang="en", as_of=None) == group["en"]


def test_pages_rendered_at_once_in_threads_are_the_same(group: dict) -> None:
    """The HTTP service renders from several threads; matplotlib's settings are global."""
    from concurrent.futures import ThreadPoolExecutor

    from cli.report import gather_report, render_html
    from ledger.store import LedgerStore

    with LedgerStore(group["url"]) as store:
        data = gather_report(store, MONTH)
    with ThreadPoolExecutor(max_workers=3) as pool:
        pages = list(pool.map(render_html, [data] * 3, ["zh", "en", "zh"]))
    assert pages == [group["zh"], group["en"], group["zh"]]


def test_the_same_events_in_postgresql_give_the_same_page(group: dict, pg_store_url: str) -> None:
    from cli.report import render_report
    from ledger.store import LedgerStore

    build(pg_store_url, group["folder"])
    with LedgerStore(pg_store_url) as store:
        assert render_report(store, MONTH) == group["zh"]


def test_as_of_moves_the_forecast(group: dict) -> None:
    from cli.report import render_report
    from ledger.store import LedgerStore

    liability = orjson.loads(cli("liability", "--as-of", "2026-10-15", "--months", "3", "--json", "--store", group["url"]))
    with LedgerStore(group["url"]) as store:
        from datetime import date

        page = Page(render_report(store, MONTH, lang="en", as_of=date(2026, 10, 15)))
    check_forecast(page, liability)
    assert {row["month"] for row in liability["forecast"]} == {"2026-10", "2026-11", "2026-12"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--month", "2026-13"], "Error: a month is written YYYY-MM (e.g. 2026-07), not '2026-13'"),
        (["--month", "2025-01"], "Error: no activity in 2025-01"),
        (["--month", MONTH, "--lang", "fr"], "Error: unknown language 'fr'"),
        (["--month", MONTH, "--as-of", "31/10/2026"], "Error: --as-of takes a date YYYY-MM-DD"),
        (["--month", MONTH, "--out", "/no/such/folder/r.html"], "Error: --out /no/such/folder/r.html: folder"),
    ],
)
def test_refusals_are_one_line(group: dict, args: list[str], message: str) -> None:
    out = ["--out", str(group["folder"] / "refused.html")] if "--out" not in args else []
    done = run_cli(["report", *args, *out, "--store", group["url"]])
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert err.startswith(message) and "Traceback" not in err, err
    assert not (group["folder"] / "refused.html").exists()


def test_an_empty_store_is_refused(sqlite_store_url: str, tmp_path: Path) -> None:
    done = run_cli(["report", "--month", MONTH, "--out", str(tmp_path / "r.html"), "--store", sqlite_store_url])
    assert done.returncode == 1
    assert done.stderr.decode().startswith("Error: the store holds no events")


# --- the page as a person sees it --------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") or os.environ.get("CHANNEL_LEDGER_TEST_BROWSER"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package); CI must not skip this")
        pytest.skip("chromium is not installed (apt-get install chromium fonts-noto-cjk)")
    return found


def test_chromium_shows_the_heatmap_and_the_channel_charts_with_the_commands_numbers(group: dict, tmp_path: Path) -> None:
    browser = chromium()
    page_file = group["folder"] / "report-zh.html"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page_file.as_uri()], capture_output=True, timeout=180)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    seen = dom.stdout.decode("utf-8")
    page = Page(seen)
    for chart in ("lead-funnel", "no-show-reasons", "fill-course-mix", "forecast-heatmap", "commission-chart"):
        assert chart in page.ids
        assert re.search(rf'<figure id="{chart}"[^>]*>.*?<svg.*?</svg>', seen, re.S), chart
    assert check_ledgers(page, group["ledgers"]) > 200
    check_commissions(page, group["settle"])
    check_forecast(page, group["liability"])

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-zh.png"
    shot.unlink(missing_ok=True)
    done = subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars", page_file.as_uri()],
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0 and shot.exists(), done.stderr.decode(errors="replace")[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # charts, not a blank page
    red = sum(n for n, (r, g, b) in colours if r >= 110 and g < 70 and b < 70)
    assert red > 500  # the flagged, over-threshold heatmap cells (deep red) are on screen
