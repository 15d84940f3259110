"""The one redaction point: every line the tool prints, logs or raises passes through `redact`.

Masking a secret inside a sentence would tell the reader which word it was (a password `wrong` turned
"wrong username or password" into "*** username or password"). So messages are built to need no
masking: text of our own words is declared with `ours` and is printed as written, and text that comes
from elsewhere (a dashboard's answer) is quoted with `quote` only when it holds no secret.
"""

from __future__ import annotations

import json
import re
import threading

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_ours: set[str] = set()


def register(*values: str | None) -> None:
    """Remember values that must never be shown (tokens, node secrets, URL passwords), as given and
    stripped: settings strip a value after it was registered (a secret with a trailing newline)."""
    with _lock:
        for value in values:
            for form in (value, value.strip() if value else None):
                if form and len(form) >= 3:
                    _secrets.add(form)


def forget_all() -> None:
    """Drop every remembered value (tests and in-process demo runs)."""
    with _lock:
        _secrets.clear()
        _ours.clear()


def redact(text: str) -> str:
    """Return `text` with every remembered value replaced by a mask, longest first; text declared
    with `ours` is kept as written."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
        ours = sorted((phrase for phrase in _ours if phrase in text), key=len, reverse=True)
    if ours:
        pieces = re.split("(" + "|".join(re.escape(phrase) for phrase in ours) + ")", text)
        return "".join(piece if i % 2 else _mask(piece, secrets) for i, piece in enumerate(pieces))
    return _mask(text, secrets)


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def ours(text: str) -> str:
    """Declare `text` our own words, printed as written: only for text made of constants and of values
    that passed `quote` (never a secret, so there is nothing to mask and nothing to give away)."""
    with _lock:
        _ours.add(text)
    return text


def quote(text: str, instead: str) -> str:
    """`text` (a dashboard's answer) when it holds no secret in any form, else `instead` (our words)."""
    return instead if holds_secret(text) else text


def holds_secret(text: str) -> bool:
    """Whether `text` holds a remembered value as written or escaped for JSON, YAML or a shell."""
    with _lock:
        secrets = list(_secrets)
    return any(form in text for secret in secrets for form in forms(secret))


def forms(secret: str) -> set[str]:
    """The spellings of `secret` in what we write: as is, stripped, JSON/YAML-escaped, shell-escaped."""
    found = set()
    for value in (secret, secret.strip()):
        if len(value) < 3:
            continue
        escaped = "".join("\\" + ch if ch in '"\\`$' else ch for ch in value)
        found.update({value, json.dumps(value)[1:-1], escaped, json.dumps(escaped)[1:-1]})
    return found
