"""The service as a person uses it (issue #8 part 3): ``channel-ledger serve`` runs as its own
process on a free port; the history of a demo clinic group arrives over HTTP in JSON Lines
batches, then today's events one at a time, as source systems would send them; the report page of
the current month is opened in headless Chromium, and what it shows — the heatmap, the channel
charts, the figures — is checked against the commands' ``--json``. A screenshot is kept in
test-artifacts/service-report.png."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from cli.service import hash_token
from ledger import demo
from ledger.store import LedgerStore
from policies import default_rules
from tests.golden import run_cli
from tests.test_report import ARTIFACTS, Page, check_commissions, check_forecast, check_ledgers, chromium

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from load_service import serving  # noqa: E402 - the benchmark's way of running serve, shared

TOKEN, BATCH = "desk-token-for-the-browser-test", 400
CHARTS = ("lead-funnel", "no-show-reasons", "fill-course-mix", "forecast-heatmap", "commission-chart")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A running ``serve`` over a fresh SQLite store with the shipped rules; its URL, store and log."""
    folder = tmp_path_factory.mktemp("served")
    url = f"sqlite:///{folder / 'ledger.db'}"
    assert run_cli(["init", "--store", url]).returncode == 0
    tokens = folder / "tokens.toml"
    tokens.write_text(f'[[source]]\nname = "front-desk"\ntoken_sha256 = "{hash_token(TOKEN)}"\nevents = ["*"]\nread = true\n', encoding="utf-8")
    log = folder / "serve.log"
    with serving(url, tokens, log) as base:
        yield {"base": base, "store": url, "log": log, "folder": folder}


def today_local() -> date:
    return default_rules().local_date(datetime.now(default_rules().tz))


def post(client: httpx.Client, body: bytes, content_type: str) -> dict:
    answer = client.post("/events", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text[:2000]
    return answer.json()


@pytest.fixture(scope="module")
def day(served: dict) -> dict:
    """A demo group whose two months end with this one: everything before today in batches, then
    today's events one by one. Returns the day, the month and the phone of one of today's people."""
    today = today_local()
    start = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    events = list(demo.generate(seed=11, customers=160, start=start, months=2))
    tz = default_rules().tz

    def local_day(event: dict) -> date:
        return datetime.fromisoformat(event["occurred_at"]).astimezone(tz).date()

    history = [e for e in events if local_day(e) < today]
    todays = [e for e in events if local_day(e) == today]
    with httpx.Client(base_url=served["base"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client:
        for i in range(0, len(history), BATCH):
            lines = b"".join(orjson.dumps(e) + b"\n" for e in history[i : i + BATCH])
            assert post(client, lines, "application/x-ndjson")["accepted"] == len(history[i : i + BATCH])
        for event in todays:
            assert post(client, orjson.dumps(event), "application/json")["accepted"] == 1
    assert todays, "the demo has events today"
    phone = next(e["person"]["phone"] for e in reversed(history) if "phone" in e.get("person", {}))
    return {"today": today, "month": today.strftime("%Y-%m"), "posted": len(history) + len(todays), "phone": phone}


def cli_json(*args: str) -> dict:
    done = run_cli(list(args))
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout)


def test_every_posted_event_is_in_the_store_once_and_the_chain_verifies(served: dict, day: dict) -> None:
    with LedgerStore(served["store"]) as ledger:
        ids = [r.event.event_id for r in ledger.read()]
    assert len(ids) == len(set(ids)) == day["posted"] + 1  # and the rule set `init` adopted
    assert run_cli(["verify", "--store", served["store"]]).returncode == 0


def test_chromium_shows_the_current_month_with_the_commands_numbers(served: dict, day: dict, tmp_path: Path) -> None:
    browser = chromium()
    page_url = f"{served['base']}/report?token={TOKEN}"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page_url], capture_output=True, timeout=180)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    seen = dom.stdout.decode("utf-8")
    assert f"<title>渠道账本月报 · {day['month']}</title>" in seen  # the current month, unasked
    page = Page(seen)
    for chart in CHARTS:
        assert chart in page.ids, chart
    store, month, today = served["store"], day["month"], day["today"].isoformat()
    assert check_ledgers(page, cli_json("ledgers", "--month", month, "--json", "--store", store)) > 50
    check_commissions(page, cli_json("settle", "--month", month, "--json", "--store", store))
    check_forecast(page, cli_json("liability", "--as-of", today, "--json", "--store", store))

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "service-report.png"
    shot.unlink(missing_ok=True)
    done = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars", page_url], capture_output=True, timeout=180)
    assert done.returncode == 0 and shot.exists(), done.stderr.decode(errors="replace")[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # charts, not a blank page or an error


def test_the_server_log_names_routes_not_people(served: dict, day: dict) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answer = httpx.get(f"{served['base']}/customers/{day['phone']}/attribution", headers=headers)
    assert answer.status_code == 200
    assert answer.content == run_cli(["attribution", day["phone"], "--json", "--store", served["store"]]).stdout
    time.sleep(0.5)  # the access line is written after the answer
    log = served["log"].read_text(encoding="utf-8", errors="replace")
    assert "GET /customers/{ref}/attribution 200" in log
    digits = "".join(c for c in day["phone"] if c.isdigit())
    assert digits[-8:] not in log and TOKEN not in log
