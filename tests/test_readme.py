"""The README is documentation people copy from: its examples must be true."""

from __future__ import annotations

import re
from pathlib import Path

from ledger.events import SOURCE_TYPES
from ledger.ingest import ingest_files

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_demo_and_test_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["./dev demo", "./dev test"]
    dev = (ROOT / "dev").read_text()
    assert "demo)" in dev and "test)" in dev


def test_every_source_event_type_has_an_example_that_ingests(sqlite_store_url, tmp_path) -> None:
    from ledger.store import LedgerStore

    block = re.search(r"```jsonl\n(.*?)```", README, re.S).group(1)
    path = tmp_path / "readme.jsonl"
    path.write_text(block, encoding="utf-8")
    with LedgerStore(sqlite_store_url) as store:
        report = ingest_files(store, [str(path)])
        assert report.rejected == []
        shown = {r.event.type for r in store.read()}
    assert shown == set(SOURCE_TYPES) - {"policy.adopted"}
