"""Scenario notation for tests: events written as the JSON Lines a source system would send.

    events = scenario('''
        {"event_id": "e1", "type": "store.registered", "occurred_at": "2026-07-01T09:00+08:00", ...}
    ''')

``jsonl(text)`` keeps blank lines out and returns the text as a file body; ``write(tmp_path, text)``
puts it in a file and returns its path.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import orjson

from ledger.events import LedgerEvent, parse_event


def jsonl(text: str) -> str:
    lines = [line.strip() for line in textwrap.dedent(text).splitlines() if line.strip()]
    return "\n".join(lines) + "\n"


def scenario(text: str) -> list[LedgerEvent]:
    return [parse_event(orjson.loads(line)) for line in jsonl(text).splitlines()]


def write(directory: Path, text: str, name: str = "events.jsonl") -> str:
    path = directory / name
    path.write_text(jsonl(text) if name.endswith(".jsonl") else textwrap.dedent(text).lstrip(), encoding="utf-8")
    return str(path)


# A small clinic: one store, its staff, one channel of each kind, their live codes, capacity.
CLINIC = """
{"event_id": "r-store", "type": "store.registered", "occurred_at": "2026-07-01T09:00:00+08:00", "store_id": "sh-jingan", "name": "静安旗舰店"}
{"event_id": "r-store2", "type": "store.registered", "occurred_at": "2026-07-01T09:00:00+08:00", "store_id": "sh-xuhui", "name": "徐汇店"}
{"event_id": "r-a1", "type": "staff.registered", "occurred_at": "2026-07-01T09:10:00+08:00", "staff_id": "a1", "name": "陈渠道", "role": "channel_agent", "store_id": "sh-jingan"}
{"event_id": "r-a2", "type": "staff.registered", "occurred_at": "2026-07-01T09:10:00+08:00", "staff_id": "a2", "name": "李渠道", "role": "channel_agent", "store_id": "sh-jingan"}
{"event_id": "r-a3", "type": "staff.registered", "occurred_at": "2026-07-01T09:10:00+08:00", "staff_id": "a3", "name": "周渠道", "role": "channel_agent", "store_id": "sh-xuhui"}
{"event_id": "r-c1", "type": "staff.registered", "occurred_at": "2026-07-01T09:10:00+08:00", "staff_id": "c1", "name": "王顾问", "role": "consultant", "store_id": "sh-jingan"}
{"event_id": "r-p1", "type": "staff.registered", "occurred_at": "2026-07-01T09:10:00+08:00", "staff_id": "p1", "name": "刘康复", "role": "clinician", "store_id": "sh-jingan"}
{"event_id": "r-p2", "type": "staff.registered", "occurred_at": "2026-07-01T09:10:00+08:00", "staff_id": "p2", "name": "杨康复", "role": "clinician", "store_id": "sh-jingan"}
{"event_id": "r-m1", "type": "staff.registered", "occurred_at": "2026-07-01T09:10:00+08:00", "staff_id": "m1", "name": "赵店长", "role": "store_manager", "store_id": "sh-jingan"}
{"event_id": "r-ch-med", "type": "channel.registered", "occurred_at": "2026-07-01T10:00:00+08:00", "channel_id": "ortho", "name": "骨科转介", "kind": "medical_trust", "partner": "某三甲医院"}
{"event_id": "r-ch-gym", "type": "channel.registered", "occurred_at": "2026-07-01T10:00:00+08:00", "channel_id": "gym", "name": "健身房", "kind": "sports_scene", "partner": "某健身房"}
{"event_id": "r-ch-dy", "type": "channel.registered", "occurred_at": "2026-07-01T10:00:00+08:00", "channel_id": "douyin", "name": "抖音", "kind": "online_platform", "partner": "抖音"}
{"event_id": "r-qr1", "type": "entry_point.issued", "occurred_at": "2026-07-01T10:05:00+08:00", "entry_point_id": "qr-ortho-a1", "channel_id": "ortho", "owner_staff_id": "a1", "store_id": "sh-jingan"}
{"event_id": "r-qr2", "type": "entry_point.issued", "occurred_at": "2026-07-01T10:05:00+08:00", "entry_point_id": "qr-gym-a2", "channel_id": "gym", "owner_staff_id": "a2", "store_id": "sh-jingan"}
{"event_id": "r-room", "type": "resource.declared", "occurred_at": "2026-07-01T10:10:00+08:00", "resource_id": "room-a", "kind": "room", "store_id": "sh-jingan", "weekly_hours": 72}
{"event_id": "r-res-p1", "type": "resource.declared", "occurred_at": "2026-07-01T10:10:00+08:00", "resource_id": "p1", "kind": "clinician", "store_id": "sh-jingan", "weekly_hours": 40}
"""
