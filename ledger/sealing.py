"""Personal data at rest (SPEC §10, issue 7): sealed fields, keyed identity hashes, shreddable keys.

Off unless a master key is configured (``CHANNEL_LEDGER_KEY``: 32 bytes as base64 or hex, or
``CHANNEL_LEDGER_KEY_FILE``: a file holding that text or the 32 raw bytes). The key never goes into
the store. From it HKDF-SHA256 derives three keys, one per job:

* the *wrap* key (AES-256-GCM) encrypts each event's own random **data key**; the wrapped data
  keys live in a table of their own (``channel_ledger_keys``, by ledger position) — deleting an
  event's row makes its personal fields unrecoverable, even with the master key (crypto-shredding:
  the event itself is immutable and stays in the hash chain);
* the *lookup* key (HMAC-SHA256) turns each normalised identity key (``phone:+8613812348000``)
  into its stored form ``phone:#<32 hex>``: identity folds, the index's ``k:`` terms and lookups
  by phone or WeChat id use these, so they work the same before and after a customer is
  forgotten, with or without the master key at hand;
* the *content* key (HMAC-SHA256) makes a keyed digest of an event's plaintext interchange form:
  a re-sent ``event_id`` is compared with what was recorded without decrypting it.

What is sealed (`SEALED_FIELDS`): every person (``person``, ``survivor``, ``merged``: names,
phones, WeChat ids, platform users), the intake answers and tags of a triage, and the free-text
notes and reasons of tickets and merges. The stored body keeps every other field in the clear
and carries the sealed ones under ``"~sealed"``: ``box`` (AES-GCM of their canonical JSON under
the data key, bound to the event id and type), ``keys`` (the keyed identity hashes per person
field) and ``mac`` (the keyed content digest). The chain digest covers that stored body, so
``verify`` needs no key and a changed ciphertext or hash is tampering like any other.

An event that cannot be opened — its data key shredded (`FORGOTTEN`) or no master key configured
(`SEALED`) — is decoded with those markers in place of its personal fields; its identity keys are
the stored hashes, so every fold (customers, owners, commission, liability) is unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ledger.events import (
    EVENT_CLASSES,
    CustomersMerged,
    Intake,
    LeadTriaged,
    LedgerEvent,
    Person,
    Tags,
    TransferDecided,
    TransferRequested,
)

KEY_ENV = "CHANNEL_LEDGER_KEY"
KEY_FILE_ENV = "CHANNEL_LEDGER_KEY_FILE"
SEALED = "~sealed"  # the stored body's field that holds the sealed fields
FORGOTTEN = "[forgotten]"  # shown for personal data whose data key was shredded
WITHHELD = "[sealed]"  # shown for personal data when no master key is configured
MARKERS = (FORGOTTEN, WITHHELD)
PERSON_FIELDS = ("person", "survivor", "merged")
NEEDS_KEY = f"this store encrypts personal data at rest: set {KEY_ENV} or {KEY_FILE_ENV} to record or compare it"


class KeyConfigError(ValueError):
    """A configured master key cannot be read; the message never holds the key."""


def _sealed_fields(cls: type[LedgerEvent]) -> tuple[str, ...]:
    fields = [name for name in PERSON_FIELDS if name in cls.model_fields]
    if issubclass(cls, LeadTriaged):
        fields += ["intake", "tags"]
    if issubclass(cls, (TransferRequested, TransferDecided)):
        fields.append("note")
    if issubclass(cls, CustomersMerged):
        fields.append("reason")
    return tuple(fields)


SEALED_FIELDS: dict[type[LedgerEvent], tuple[str, ...]] = {cls: _sealed_fields(cls) for cls in EVENT_CLASSES}


def holds_personal_data(event: LedgerEvent) -> bool:
    return bool(SEALED_FIELDS[type(event)])


# --- the master key ----------------------------------------------------------------------------


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"channel-ledger", info=purpose).derive(master)


def parse_key_text(text: bytes) -> bytes:
    """32 key bytes from a key's text (base64 or hex) or the raw 32 bytes."""
    stripped = text.strip()
    if len(stripped) == 64:
        try:
            return bytes.fromhex(stripped.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        decoded = base64.b64decode(stripped, validate=True)
        if len(decoded) == 32:
            return decoded
    except (binascii.Error, ValueError):
        pass
    if len(text) == 32:
        return text
    raise KeyConfigError("the master key must be 32 bytes, written as base64 (44 characters) or hex (64 digits)")


class MasterKey:
    """The configured master key and the keys derived from it (never stored, never printed)."""

    def __init__(self, secret: bytes):
        if len(secret) != 32:
            raise KeyConfigError("the master key must be 32 bytes")
        self._wrap = AESGCM(_derive(secret, b"wrap data keys v1"))
        self._lookup = _derive(secret, b"identity lookup v1")
        self._content = _derive(secret, b"content digest v1")
        self.check = hmac.new(_derive(secret, b"key check v1"), b"channel-ledger", hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "MasterKey(…)"

    @classmethod
    def generate(cls) -> tuple[MasterKey, str]:
        """A fresh key and its base64 text (for ``CHANNEL_LEDGER_KEY``)."""
        secret = os.urandom(32)
        return cls(secret), base64.b64encode(secret).decode()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MasterKey | None:
        """The key named by ``CHANNEL_LEDGER_KEY`` or ``CHANNEL_LEDGER_KEY_FILE``; None when neither is set."""
        env = os.environ if env is None else env
        if env.get(KEY_ENV):
            try:
                return cls(parse_key_text(env[KEY_ENV].encode()))
            except KeyConfigError as error:
                raise KeyConfigError(f"{KEY_ENV}: {error}") from None
        if env.get(KEY_FILE_ENV):
            return cls.from_file(env[KEY_FILE_ENV])
        return None

    @classmethod
    def from_file(cls, path: str) -> MasterKey:
        try:
            with open(path, "rb") as handle:
                text = handle.read(4096)
        except OSError as error:
            raise KeyConfigError(f"cannot read the key file {path}: {error.strerror or 'unreadable'}") from None
        try:
            return cls(parse_key_text(text))
        except KeyConfigError as error:
            raise KeyConfigError(f"key file {path}: {error}") from None

    # identity and content -------------------------------------------------------------------

    def key_form(self, identity_key: str) -> str:
        """``phone:+8613812348000`` → ``phone:#<32 hex>``: the stored form of an identity key."""
        kind, _, _value = identity_key.partition(":")
        return f"{kind}:#{hmac.new(self._lookup, identity_key.encode(), hashlib.sha256).hexdigest()[:32]}"

    def content_mac(self, digest: str) -> str:
        """The keyed digest of an event's plaintext content digest (re-sends are compared by it)."""
        return hmac.new(self._content, bytes.fromhex(digest), hashlib.sha256).hexdigest()

    # data keys ------------------------------------------------------------------------------

    def new_data_key(self, event_id: str) -> tuple[bytes, bytes]:
        """A fresh data key for one event and its wrapped form (bound to the event id)."""
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        return key, nonce + self._wrap.encrypt(nonce, key, b"data key\x00" + event_id.encode())

    def unwrap(self, event_id: str, wrapped: bytes) -> bytes:
        try:
            return self._wrap.decrypt(wrapped[:12], wrapped[12:], b"data key\x00" + event_id.encode())
        except InvalidTag:
            raise SealError(f"the data key of event {event_id} does not open with this master key: the key table was altered") from None


class SealError(Exception):
    """A sealed event or its data key does not open although it should: the store was altered."""


# --- sealing and opening -----------------------------------------------------------------------


def _aad(event_id: str, event_type: str) -> bytes:
    return f"{event_id}\x00{event_type}".encode()


@dataclass(frozen=True)
class Sealed:
    """An event ready to store: its stored body (wire without type), and its wrapped data key."""

    body: dict[str, Any]
    wrapped: bytes
    keys: dict[str, tuple[str, ...]]  # person field -> stored identity keys


def seal(key: MasterKey, event: LedgerEvent, wire: dict[str, Any], digest: str) -> Sealed | None:
    """Move ``event``'s personal fields out of ``wire`` (its interchange form, without ``type``)
    into a sealed box; None when the event holds no personal data."""
    fields = SEALED_FIELDS[type(event)]
    if not fields:
        return None
    body = dict(wire)
    secret = {name: body.pop(name) for name in fields if name in body}
    keys = {
        name: tuple(key.key_form(k) for k in getattr(event, name).plain_identity_keys())
        for name in PERSON_FIELDS
        if name in secret
    }
    data_key, wrapped = key.new_data_key(event.event_id)
    nonce = os.urandom(12)
    box = nonce + AESGCM(data_key).encrypt(nonce, orjson.dumps(secret, option=orjson.OPT_SORT_KEYS), _aad(event.event_id, event.type))
    body[SEALED] = {"box": base64.b64encode(box).decode(), "keys": {k: list(v) for k, v in keys.items()}, "mac": key.content_mac(digest)}
    return Sealed(body, wrapped, keys)


def open_body(
    cls: type[LedgerEvent], body: dict[str, Any], data_key: bytes | str | None
) -> tuple[dict[str, Any], str | None, dict[str, list[str]]]:
    """A stored body made ready for ``cls.model_validate``: the sealed fields back in place —
    decrypted when ``data_key`` is the event's key, else as markers (``data_key`` is the marker
    to show, `FORGOTTEN` or `WITHHELD`; None means `WITHHELD`). Returns the body, the marker used
    (None when opened) and the stored keyed hashes per person field: a decrypted person is to
    identify by them (`Person._keys`, set once the event is validated); a withheld one already
    does."""
    sealed = body.pop(SEALED)
    keys: dict[str, list[str]] = sealed.get("keys", {})
    event_id, event_type = body["event_id"], cls.type
    if isinstance(data_key, bytes):
        box = base64.b64decode(sealed["box"])
        try:
            plain = AESGCM(data_key).decrypt(box[:12], box[12:], _aad(event_id, event_type))
        except InvalidTag:
            raise SealError(f"event {event_id} does not open with its data key: the key table or the event was altered") from None
        body.update(orjson.loads(plain))
        return body, None, keys
    marker = data_key or WITHHELD
    for name in SEALED_FIELDS[cls]:
        if name in PERSON_FIELDS:
            if name in keys:
                body[name] = withheld_person(tuple(keys[name]), marker)
        elif name == "intake":
            body[name] = Intake.model_construct(pain_site="", duration_days=0, trauma=False, prior_imaging=False, sport="")
        elif name == "tags":
            body[name] = Tags()
        else:
            body[name] = marker
    return body, marker, {}


def withheld_person(stored_keys: tuple[str, ...], marker: str) -> Person:
    """A person whose data cannot be shown: the marker for each key it had, no name; it
    identifies by its stored keys, and its phone counts as valid exactly when it did."""
    kinds = {k.split(":", 1)[0] for k in stored_keys}
    person = Person.model_construct(
        phone=marker if kinds & {"phone", "phone?"} else None,
        wechat_id=marker if "wechat" in kinds else None,
        platform_user=marker if "platform" in kinds else None,
        name=None,
    )
    person.identify_by(stored_keys, withheld=True, phone_valid="phone" in kinds)
    return person


def is_marker(value: Any) -> bool:
    return isinstance(value, str) and value in MARKERS
