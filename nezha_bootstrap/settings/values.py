"""Checks every setting shares: plain numbers, seconds, text that can be sent and written, hashes, versions."""

from __future__ import annotations

import math
import re
import unicodedata

SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")  # a SHA-256 as sha256sum prints it
VERSION_RE = re.compile(r"^\d{1,4}\.\d{1,4}\.\d{1,4}\Z")


def has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def is_encodable(text: str) -> bool:
    """False for lone surrogates: how Python hands over environment bytes that are not UTF-8."""
    return not any("\ud800" <= ch <= "\udfff" for ch in text)


# ASCII digits and nothing else: int() and float() also take "1_0", " 10 ", "+10" and "١٠" (Arabic-Indic
# digits), which no operator means as a port or a count of seconds.
_WHOLE_RE = re.compile(r"-?[0-9]+\Z")
_DECIMAL_RE = re.compile(r"[0-9]+(\.[0-9]+)?\Z")


def plain_number(raw: object, real: bool = False) -> float | int | None:
    """`raw` as an int (with `real`, a float) when it is written in plain ASCII digits (`real`: an
    optional `.digits`, no sign), or is such a number already; None otherwise."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int) or (real and isinstance(raw, float)):
        return raw if not isinstance(raw, float) or math.isfinite(raw) else None
    text = raw if isinstance(raw, str) else ""
    if real:
        return float(text) if _DECIMAL_RE.match(text) else None
    return int(text) if _WHOLE_RE.match(text) else None


def optional_text(what: str, raw: str | None, problems: list[str]) -> str | None:
    if raw is None:
        return None
    if has_control_chars(raw):
        problems.append(f"the {what} must not contain control characters")
        return None
    if not is_encodable(raw):
        problems.append(f"the {what} is not valid UTF-8 text")
        return None
    return raw


def validate_seconds(what: str, raw: float | str, problems: list[str], allow_zero: bool = False) -> float:
    number = plain_number(raw, real=True)
    value = math.nan if number is None else float(number)
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero) or value > 86400:
        problems.append(f"the {what} must be a number of seconds up to 86400, got {raw!r}")
        return 0.0
    return value
