"""``serve``: the ledger as an HTTP service for source systems and people (issue #8, `cli.service`)."""

from __future__ import annotations

import copy
import os
import sys
from typing import Annotated

import typer

from cli.common import StoreOption, fail, opened_store, stderr, stdout
from ledger.store import STORE_ENV, store_url_from

app = typer.Typer()

TOKENS_ENV = "CHANNEL_LEDGER_SERVE_TOKENS"


def _log_config(level: str) -> dict:
    """uvicorn's logging, with the service's own access log beside it (uvicorn's is off: it
    would print request paths, and a path can hold a phone number)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["service"] = {"format": "%(asctime)s %(levelname)s %(message)s"}
    config["handlers"]["service"] = {"class": "logging.StreamHandler", "formatter": "service", "stream": "ext://sys.stderr"}
    config["loggers"]["channel_ledger"] = {"handlers": ["service"], "level": level.upper(), "propagate": False}
    return config


def _read_token() -> str:
    if sys.stdin.isatty():
        return typer.prompt("token", hide_input=True)
    return sys.stdin.readline()


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8080,
    tokens: Annotated[
        str | None,
        typer.Option("--tokens", envvar=TOKENS_ENV, help=f"The tokens file (TOML): per source system its name, token_sha256 and the event types it may send. Also ${TOKENS_ENV}.", show_default=False),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes (writes between them are serialised by the store).")] = 1,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info (one line a request, no personal data), warning or error.")] = "info",
    hash_token_: Annotated[bool, typer.Option("--hash-token", help="Read a token from standard input (or a hidden prompt) and print its SHA-256 for the tokens file; serve nothing.")] = False,
    store: StoreOption = None,
) -> None:
    """Serve the ledger over HTTP: POST /events (one event as JSON, or JSON Lines; validated as
    ingest does, all or nothing per request), the reads (/customers/REF/attribution, /trace,
    /statements/MONTH, /liability?as_of=D) as their commands print them with --json, the month's
    report page at /report, and the OpenAPI description at /openapi.json."""
    from cli.service import create_app, hash_token, load_sources  # FastAPI: loaded by this command only

    if hash_token_:
        token = _read_token().strip()
        if not token:
            fail("no token given", hint="e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))' | channel-ledger serve --hash-token")
        stdout.print(hash_token(token))
        return
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("--log-level takes debug, info, warning or error")
    if tokens is None:
        fail("no tokens file", hint=f"--tokens FILE or ${TOKENS_ENV}; see the README (serve) for its format")
    sources = load_sources(tokens)
    url = store_url_from(store)
    with opened_store(url) as ledger:  # a store that cannot be opened is refused now, not at the first request
        position = ledger.position()
        where = ledger.location.display

    import uvicorn

    stderr.print(f"serving {where} (position {position:,}) for {len(sources)} sources on http://{host}:{port} · OpenAPI at /openapi.json", markup=False)
    options = {"host": host, "port": port, "log_config": _log_config(log_level), "log_level": log_level.lower(), "access_log": False}
    if workers == 1:
        uvicorn.run(create_app(url, sources), **options)
        return
    os.environ[STORE_ENV] = url  # each worker builds the application from the environment
    os.environ[TOKENS_ENV] = os.path.abspath(tokens)
    uvicorn.run("cli.service:app_from_env", factory=True, workers=workers, **options)
