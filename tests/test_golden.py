"""Every golden case under tests/golden (see tests/golden.py)."""

from __future__ import annotations

import pytest

from tests.golden import Case, cases, check


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_golden(case: Case, sqlite_store_url: str) -> None:
    check(case, sqlite_store_url)
