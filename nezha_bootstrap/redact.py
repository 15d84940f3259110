"""The one redaction point: every line the tool prints, logs or raises passes through `redact`."""

from __future__ import annotations

import threading

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()


def register(*values: str | None) -> None:
    """Remember values that must never be shown (tokens, node secrets, URL passwords)."""
    with _lock:
        _secrets.update(v for v in values if v and len(v) >= 3)


def forget_all() -> None:
    """Drop every remembered value (tests and in-process demo runs)."""
    with _lock:
        _secrets.clear()


def redact(text: str) -> str:
    """Return `text` with every remembered value replaced by a mask, longest first."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
