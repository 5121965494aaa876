"""``forget``: the right to deletion, by crypto-shredding one customer's personal data (SPEC §10)."""

from __future__ import annotations

import getpass
from datetime import datetime, timezone
from typing import Annotated

import typer

from cli.common import JsonOption, StoreOption, emit_json, fail, stdout
from ledger.privacy import ForgetRefused, forget
from ledger.sealing import KeyConfigError, MasterKey
from ledger.store import LedgerStore, store_url_from

app = typer.Typer()


@app.command(name="forget")
def forget_cmd(
    ref: Annotated[str, typer.Argument(help="Phone, WeChat id, platform user or customer id (C-…) of the customer to forget.", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: the personal data cannot be brought back afterwards.")] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who asks, for the shredding log (default: the login name).", show_default=False)] = None,
    key_file: Annotated[
        str | None, typer.Option("--key-file", help="A file holding the master key (else $CHANNEL_LEDGER_KEY or $CHANNEL_LEDGER_KEY_FILE).", show_default=False)
    ] = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Forget a customer: shred the data keys of its events, so that its names, phones, WeChat ids,
    intake answers and notes can never be decrypted again, not even with the master key. The
    events stay: attribution, commission, closed statements and liability keep every figure, and
    verify still passes. Needs a store that encrypts personal data at rest (a master key)."""
    if not yes:
        fail("forget cannot be undone: the customer's personal data becomes unrecoverable", hint="add --yes to confirm")
    try:
        key = MasterKey.from_file(key_file) if key_file else MasterKey.from_env()
    except KeyConfigError as error:
        fail(str(error))
    if key is None:
        fail(
            "forget needs the master key: crypto-shredding deletes data keys, which only a store that encrypts personal data at rest has",
            hint="set CHANNEL_LEDGER_KEY or CHANNEL_LEDGER_KEY_FILE (or pass --key-file)",
        )
    who = by or getpass.getuser()
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with LedgerStore(store_url_from(store), key=key) as ledger:
        try:
            done = forget(ledger, ref, who, at)
        except ForgetRefused as refused:
            fail(str(refused), hint=refused.hint)
    payload = {
        "customer_id": done.customer_id,
        "merged_customers": [m for m in done.members if m != done.customer_id],
        "events": done.events,
        "sealed_events": done.sealed,
        "keys_shredded": done.shredded,
        "position": done.position,
        "by": who,
        "at": at,
    }
    if json:
        emit_json(payload)
        return
    merged = f" (with merged {', '.join(payload['merged_customers'])})" if payload["merged_customers"] else ""
    stdout.print(f"forgot customer {done.customer_id}{merged}: shredded {done.shredded} data keys", markup=False)
    stdout.print(f"{done.sealed} of its {done.events} events held personal data; they now show it as [forgotten]", markup=False)
    if done.shredded < done.sealed:
        stdout.print(f"{done.sealed - done.shredded} were already forgotten", markup=False)
    stdout.print("every figure stays as it was: attribution, commission, closed statements, liability; verify still passes", markup=False)
