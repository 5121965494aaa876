"""Shared fixtures: a fresh store on each backend, and scenario helpers in the domain's notation.

PostgreSQL: ``CHANNEL_LEDGER_TEST_POSTGRES`` names the server (a URL without schema). When it is
set, the PostgreSQL tests are mandatory and fail if the server cannot be reached (CI sets it);
when it is not set they run against the local socket if a server answers there, else they skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_ENV = "CHANNEL_LEDGER_TEST_POSTGRES"
LOCAL_PG = "postgresql://root@/test?host=/var/run/postgresql"


def _pg_base() -> str | None:
    configured = os.environ.get(PG_ENV)
    if configured:
        return configured
    try:
        with psycopg.connect("dbname=test host=/var/run/postgresql user=root", connect_timeout=2):
            return LOCAL_PG
    except psycopg.Error:
        return None


PG_BASE = _pg_base()


def pg_url(schema: str) -> str:
    assert PG_BASE is not None
    joiner = "&" if "?" in PG_BASE else "?"
    return f"{PG_BASE}{joiner}schema={schema}"


def drop_schema(schema: str) -> None:
    from ledger.store import parse_store_url, pg_connect_args

    env = parse_store_url(pg_url(schema)).env
    with psycopg.connect(**pg_connect_args(env), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_store_url() -> Iterator[str]:
    if PG_BASE is None:
        if os.environ.get(PG_ENV):
            pytest.fail(f"{PG_ENV} is set but PostgreSQL is unreachable")
        pytest.skip("no PostgreSQL server (set CHANNEL_LEDGER_TEST_POSTGRES to make these mandatory)")
    schema = "t_" + uuid.uuid4().hex[:12]
    yield pg_url(schema)
    drop_schema(schema)


@pytest.fixture
def sqlite_store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store on each backend (the contract suite runs on both)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        yield request.getfixturevalue("pg_store_url")


@pytest.fixture
def store(store_url: str):
    from ledger.store import LedgerStore

    s = LedgerStore(store_url)
    yield s
    s.close()
