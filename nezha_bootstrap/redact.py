"""The one redaction point: every line the tool prints, logs or raises passes through `redact`.

Masking a secret inside a sentence would tell the reader which word it was (a password `wrong` turned
"wrong username or password" into "*** username or password"). So messages are built to need no
masking: text of our own words is declared with `ours` and is printed as written, and text that comes
from elsewhere (a dashboard's answer) is quoted with `quote` only when it holds no secret.

A secret is masked in every spelling `forms` gives, wherever it appears, except where it lies wholly
inside one of our phrases and was already known when that phrase was declared: a secret that
contains, crosses or merely follows one of our phrases is always masked.
"""

from __future__ import annotations

import json
import threading
from functools import partial

MASK = "***"

_lock = threading.Lock()
_spellings: list[str] = []  # every form of every secret, longest first
_ours: dict[str, frozenset[str]] = {}  # our phrase -> the spellings it held when declared (our words)


def register(*values: str | None) -> None:
    """Remember values that must never be shown (tokens, node secrets, URL passwords), as given and
    stripped (`forms`): settings strip a value after it was registered (a secret with a trailing newline)."""
    with _lock:
        for value in values:
            if value:  # `forms` leaves out what is under three characters, stripped or not
                # sorted for reading only: every spelling is searched for, whatever the order
                _spellings[:] = sorted(set(_spellings) | forms(value), key=len, reverse=True)  # pragma: no mutate


def forget_all() -> None:
    """Drop every remembered value (tests and in-process demo runs)."""
    with _lock:
        _spellings.clear()
        _ours.clear()


def redact(text: str) -> str:
    """Return `text` with every spelling of every remembered value masked; a spelling lying wholly
    inside a phrase declared with `ours` (and known when it was declared) is our words and kept."""
    with _lock:
        spellings, declared = list(_spellings), list(_ours.items())
    ours = {phrase: held for phrase, held in declared if held and phrase in text}  # pragma: no mutate - a filter
    hidden = _occurrences(text, spellings)
    if not hidden or not ours:  # pragma: no mutate - a shortcut: the general path gives the same
        return _mask(text, [span for span, _ in hidden])
    kept = [(span, ours[phrase]) for span, phrase in _occurrences(text, list(ours))]
    return _mask(text, [span for span, spelling in hidden if not _inside(span, spelling, kept)])


def _occurrences(text: str, needles: list[str]) -> list[tuple[tuple[int, int], str]]:
    """Every (start, end) of every needle in `text`, overlapping ones too, with the needle found there."""
    found = []
    for needle in needles:
        start = text.find(needle)
        while start >= 0:
            found.append(((start, start + len(needle)), needle))
            start = text.find(needle, start + 1)
    return found


def _inside(span: tuple[int, int], spelling: str, kept: list[tuple[tuple[int, int], frozenset[str]]]) -> bool:
    return any(start <= span[0] and span[1] <= end and spelling in held for (start, end), held in kept)


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span, and each run of overlapping spans, replaced by one mask."""
    pieces, at = [], 0
    for start, end in sorted(spans):
        if start >= at:
            pieces += [text[at:start], MASK]
        at = max(at, end)
    pieces.append(text[at:])
    return "".join(pieces)


def ours(text: str) -> str:
    """Declare `text` our own words, printed as written: only for text made of constants and of values
    that passed `quote`. A remembered value it holds now is one of our words there (a password `wrong`
    in "wrong username or password"); one remembered later is masked in it like anywhere else."""
    with _lock:
        held = frozenset(spelling for spelling in _spellings if spelling in text)
        _ours[text] = held  # spellings are only ever added: what it held before, it holds now too
    return text


def quote(text: str, instead: str) -> str:
    """`text` (a dashboard's answer) when it holds no secret in any form, else `instead` (our words)."""
    return instead if holds_secret(text) else text


def holds_secret(text: str) -> bool:
    """Whether `text` holds a remembered value as written or escaped for JSON, YAML or a shell."""
    with _lock:
        spellings = list(_spellings)
    return any(spelling in text for spelling in spellings)


def forms(secret: str) -> set[str]:
    """The spellings of `secret` in what we write: as is and stripped, each also escaped for JSON (ASCII
    or not), YAML or a shell (in double quotes) or Python's repr, and each of those once more for JSON
    (a message holding one, inside --json)."""
    found: set[str] = set()
    for value in (secret, secret.strip()):
        if len(value) < 3:
            continue  # pragma: no mutate - `break` is the same: the stripped value, last, is never longer
        once = {value, *(escape(value) for escape in _ESCAPES)}
        found.update(once, (_json(form) for form in once), (_json_text(form) for form in once))
    return found


def _json(value: str, ascii: bool = True) -> str:
    return json.dumps(value, ensure_ascii=ascii)[1:-1]


def _shell(value: str) -> str:
    return "".join("\\" + ch if ch in '"\\`$' else ch for ch in value)


def _repr(value: str) -> str:
    return repr(value)[1:-1]


_json_text = partial(_json, ascii=False)  # JSON keeping non-ASCII characters as they are
_ESCAPES = (_json, _json_text, _shell, _repr)
