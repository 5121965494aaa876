"""Personal data at the edges (SPEC §10): how phones and other keys are shown when masked."""

from __future__ import annotations


def mask_phone(phone: str) -> str:
    """``+8613812348000`` → ``138****8000``; other numbers keep their first 3 and last 4 digits."""
    digits = phone.removeprefix("+86") if phone.startswith("+86") else phone.lstrip("+")
    if len(digits) <= 7:
        return "*" * len(digits)
    return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


def mask_key(key: str) -> str:
    """An identity key as shown in a masked listing: phones masked, ids shortened."""
    kind, _, value = key.partition(":")
    if kind.startswith("phone"):
        return f"{kind}:{mask_phone(value)}"
    if len(value) <= 4:
        return f"{kind}:{'*' * len(value)}"
    return f"{kind}:{value[:2]}***{value[-2:]}"


def masked_person(person: dict, unmasked: bool = False) -> dict:
    """A wire ``person`` object for display: phone masked unless asked otherwise."""
    if unmasked:
        return dict(person)
    shown = dict(person)
    if shown.get("phone"):
        shown["phone"] = mask_phone(shown["phone"])
    return shown
