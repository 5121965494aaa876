"""Personal data at the edges (SPEC §10): how phones and other keys are shown when masked.

At rest, personal data is encrypted when a master key is configured (`ledger.sealing`); a
customer is forgotten by shredding its events' data keys (`forget`)."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.events import normalise_phone
from ledger.identity import Identity, canonical_key
from ledger.neighbourhood import neighbourhood
from ledger.sealing import MARKERS, holds_personal_data
from ledger.store import LedgerStore


def mask_phone(phone: str) -> str:
    """``+8613812348000`` → ``138****8000``; other numbers keep their first 3 and last 4 digits."""
    if phone in MARKERS:
        return phone
    digits = phone.removeprefix("+86") if phone.startswith("+86") else phone.lstrip("+")
    if len(digits) <= 7:
        return "*" * len(digits)
    return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


def mask_key(key: str) -> str:
    """An identity key as shown in a masked listing: phones masked, ids shortened; a keyed hash
    (``phone:#…``, `ledger.sealing`) is shortened too (it is a pseudonym, not the key)."""
    kind, _, value = key.partition(":")
    if value.startswith("#"):
        return f"{kind}:{value[:9]}…"
    if kind.startswith("phone"):
        return f"{kind}:{mask_phone(value)}"
    if len(value) <= 4:
        return f"{kind}:{'*' * len(value)}"
    return f"{kind}:{value[:2]}***{value[-2:]}"


def mask_ref(ref: str) -> str:
    """A command's customer reference as an error message may repeat it: a phone masked, a
    WeChat id or platform user shortened, a customer id (``C-…``, no personal data) as given."""
    ref = ref.strip()
    if ref.startswith("C-"):
        return ref
    phone, valid = normalise_phone(ref)
    if valid:
        return mask_phone(phone)
    return mask_key("ref:" + ref).removeprefix("ref:")


def masked_person(person: dict, unmasked: bool = False) -> dict:
    """A wire ``person`` object for display: phone masked unless asked otherwise."""
    if unmasked:
        return dict(person)
    shown = dict(person)
    if shown.get("phone"):
        shown["phone"] = mask_phone(shown["phone"])
    return shown


# --- the right to deletion -------------------------------------------------------------------


class ForgetRefused(Exception):
    """``forget`` cannot do what it was asked; the message is one line for a person."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Forgotten:
    """What `forget` did: whose data keys it shredded, how many, over how many events."""

    customer_id: str
    members: tuple[str, ...]  # the customer and every customer merged into it
    events: int  # the customer's events
    sealed: int  # of which carried personal data (sealed)
    shredded: int  # data keys deleted now (0 when forgotten before)
    position: int


def forget(store: LedgerStore, ref: str, by: str, at: str) -> Forgotten:
    """Crypto-shred one customer (the right to deletion): delete the data keys of every event of
    the customer ``ref`` names (merged customers included), so that their personal data can no
    longer be decrypted, even with the master key. The events stay, and with them every figure:
    they keep their keyed identity hashes, so they fold into the same customers, owners,
    commission lines and liability; the hash chain is untouched (`verify` passes). ``by`` and
    ``at`` (an ISO time) go into the shredding log with the customer id, without personal data."""
    if not store.sealed:
        raise ForgetRefused(
            "this store does not encrypt personal data at rest, so it cannot forget anyone: crypto-shredding "
            "deletes a customer's data keys, and its events hold their personal data in the clear",
            hint="record into a store created with CHANNEL_LEDGER_KEY (or CHANNEL_LEDGER_KEY_FILE) set",
        )
    if store.key is None:
        raise ForgetRefused("no master key is configured", hint="set CHANNEL_LEDGER_KEY or CHANNEL_LEDGER_KEY_FILE to the store's key")
    position = store.position()
    recorded = [r for r in neighbourhood(store, ref) if r.position <= position]
    identity = Identity()
    for r in sorted(recorded, key=lambda r: canonical_key(r.event)):
        identity.observe(r.event)
    customer = identity.lookup(ref)
    if customer is None:
        raise ForgetRefused(
            f"no customer known by {mask_ref(ref)}",
            hint="use a phone, WeChat id, platform user or customer id (C-…); a forgotten customer is found by its customer id",
        )
    root = identity.root(customer)
    mine = [r for r in recorded if identity.customer_of(r.event) == root]
    sealed = [r.position for r in mine if r.mac is not None]
    plaintext = [r for r in mine if r.mac is None and holds_personal_data(r.event)]
    if plaintext:
        raise ForgetRefused(
            f"{len(plaintext)} events of {root} hold personal data recorded without encryption; shredding keys cannot erase them",
            hint="nothing was shredded",
        )
    shredded = store.forget_positions(sealed, root, by, at) if sealed else 0
    return Forgotten(root, tuple(identity.members(root)), len(mine), len(sealed), shredded, position)

