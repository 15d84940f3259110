"""The fleet manifest of `reconcile`: which server (by uuid or machine-id) gets which name, note and group.

JSON everywhere; TOML through the standard library's tomllib (Python 3.11+) or the `tomli` backport
when it is installed. Writing our own TOML reader would be a second parser with its own bugs
(strings, escapes, dates, inline tables) for a file the operator can as well write as JSON.
Validation is pure and collects every problem, as config.py does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from nezha_bootstrap.errors import SettingsError
from nezha_bootstrap.identity import machine_uuid, uuid_problem

MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
INT32 = (-(2**31), 2**31 - 1)  # display_index is an int column on every generation
ATTRIBUTES = ("name", "note", "public_note", "hide_for_guest", "display_index", "group")
KEYS = ("uuid", "machine_id", *ATTRIBUTES)

GroupRef = Union[str, int]  # a group's name, or its id when names are not unique


@dataclass(frozen=True)
class Entry:
    """One server the manifest manages; None: that attribute is left as the dashboard has it."""

    uuid: str
    label: str  # how the manifest names it, for messages: "machine_id 0123..." or "uuid 8d3b..."
    name: str | None = None
    note: str | None = None
    public_note: str | None = None
    hide_for_guest: bool | None = None
    display_index: int | None = None
    groups: tuple[GroupRef, ...] | None = None  # None: memberships not managed for this server


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]

    def by_uuid(self) -> dict[str, Entry]:
        return {entry.uuid: entry for entry in self.entries}


def toml_loads() -> Any:
    """tomllib.loads, or None when neither tomllib (3.11+) nor tomli is available."""
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]  # 3.11+; mypy checks as 3.10

        return tomllib.loads
    except ImportError:
        pass
    try:
        import tomli  # type: ignore[import-not-found,unused-ignore]  # the 3.9/3.10 backport, optional

        return tomli.loads
    except ImportError:
        return None


def load(path: Path) -> Manifest:
    """Read and validate the manifest file (.json, or .toml); SettingsError lists every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError([f"cannot read the manifest {path}: {getattr(exc, 'strerror', None) or exc}"]) from exc
    return parse(text, "toml" if path.suffix.lower() == ".toml" else "json", str(path))


def parse(text: str, fmt: str, where: str = "the manifest") -> Manifest:
    """Parse `text` as `fmt` ("json" or "toml") and validate it."""
    if fmt == "toml":
        loads = toml_loads()
        if loads is None:
            raise SettingsError([
                f"{where}: reading TOML needs Python 3.11 or newer (or the tomli package); "
                "write the manifest as JSON (same keys) or install tomli"
            ])
        try:
            value = loads(text)
        except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
            raise SettingsError([f"{where} is not valid TOML: {exc}"]) from exc
        except RecursionError:  # "a = [[[[...": the parsers recurse once per level
            raise SettingsError([f"{where} is nested too deeply to read"]) from None
    else:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise SettingsError([f"{where} is not valid JSON: {exc}"]) from exc
        except RecursionError:
            raise SettingsError([f"{where} is nested too deeply to read"]) from None
    return validate(value, where)


def validate(value: Any, where: str = "the manifest") -> Manifest:
    """A Manifest from parsed JSON/TOML, or SettingsError with every problem found."""
    problems: list[str] = []
    if not isinstance(value, dict):
        raise SettingsError([f"{where}: the top level must be a table/object with a 'servers' list"])
    for key in sorted(set(value) - {"servers", "defaults"}):
        problems.append(f"{where}: unknown top-level key {key!r} (expected 'servers' and optionally 'defaults')")
    defaults = _defaults(value.get("defaults", {}), where, problems)
    items = value.get("servers")
    if not isinstance(items, list):
        problems.append(f"{where}: 'servers' must be a list of tables/objects ([[servers]] in TOML)")
        items = []
    entries = [_entry(item, i, defaults, where, problems) for i, item in enumerate(items)]
    kept = [entry for entry in entries if entry is not None]
    _check_duplicates(kept, problems, where)
    if problems:
        raise SettingsError(problems)
    return Manifest(tuple(kept))


def _defaults(value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        problems.append(f"{where}: 'defaults' must be a table/object")
        return {}
    for key in sorted(set(value) - set(ATTRIBUTES)):
        problems.append(f"{where}: defaults: unknown key {key!r} (one of {', '.join(ATTRIBUTES)})")
    return {key: val for key, val in value.items() if key in ATTRIBUTES}


def _entry(item: Any, index: int, defaults: dict[str, Any], where: str, problems: list[str]) -> Entry | None:
    at = f"{where}: servers[{index}]"
    if not isinstance(item, dict):
        problems.append(f"{at} must be a table/object")
        return None
    before = len(problems)
    for key in sorted(set(item) - set(KEYS)):
        problems.append(f"{at}: unknown key {key!r} (one of {', '.join(KEYS)})")
    identity = _identity(item, at, problems)
    if identity is not None:
        at = f"{at} ({identity[1]})"
    merged = {**defaults, **{k: v for k, v in item.items() if k in ATTRIBUTES}}
    attributes = {key: _attribute(key, merged[key], at, problems) for key in ATTRIBUTES if key in merged}
    if identity is None or len(problems) > before:
        return None
    groups = attributes.pop("group", None)
    return Entry(uuid=identity[0], label=identity[1], groups=groups, **attributes)


def _identity(item: dict[str, Any], at: str, problems: list[str]) -> tuple[str, str] | None:
    """(uuid, label) from exactly one of `uuid` and `machine_id`."""
    if ("uuid" in item) == ("machine_id" in item):
        problems.append(f"{at}: give exactly one of 'uuid' and 'machine_id'")
        return None
    if "uuid" in item:
        value = item["uuid"]
        problem = uuid_problem(value) if isinstance(value, str) else "the uuid must be a string"
        if problem:
            problems.append(f"{at}: {problem}")
            return None
        return value, f"uuid {value}"
    value = item["machine_id"]
    if not isinstance(value, str) or not MACHINE_ID_RE.match(value):
        problems.append(f"{at}: the machine_id must be 32 lower-case hexadecimal digits, as in /etc/machine-id")
        return None
    return machine_uuid(value), f"machine_id {value}"


def _attribute(key: str, value: Any, at: str, problems: list[str]) -> Any:
    """The checked value of one attribute (a problem is added when it is wrong)."""
    problem = _attribute_problem(key, value)
    if problem:
        problems.append(f"{at}: {key} {problem}")
        return None
    if key == "group":
        return tuple(value) if isinstance(value, list) else (value,)
    return value


def _attribute_problem(key: str, value: Any) -> str | None:
    if key == "name":
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty string"
        return "must not hold control characters (newlines, tabs)" if CONTROL_RE.search(value) else None
    if key in ("note", "public_note"):
        return None if isinstance(value, str) else "must be a string"
    if key == "hide_for_guest":
        return None if isinstance(value, bool) else "must be true or false"
    if key == "display_index":
        ok = isinstance(value, int) and not isinstance(value, bool) and INT32[0] <= value <= INT32[1]
        return None if ok else "must be an integer (a 32-bit one)"
    refs = value if isinstance(value, list) else [value]
    if not refs or not all(_group_ref_ok(ref) for ref in refs):
        return "must be a group name, a group id (a positive integer), or a non-empty list of them"
    return "names the same group twice" if len(set(refs)) != len(refs) else None


def _group_ref_ok(ref: Any) -> bool:
    if isinstance(ref, bool):
        return False
    if isinstance(ref, int):
        return ref > 0
    return isinstance(ref, str) and bool(ref.strip()) and not CONTROL_RE.search(ref)


def _check_duplicates(entries: list[Entry], problems: list[str], where: str) -> None:
    seen: dict[str, Entry] = {}
    for entry in entries:
        first = seen.setdefault(entry.uuid, entry)
        if first is not entry:
            problems.append(
                f"{where}: {first.label} and {entry.label} are the same server (uuid {entry.uuid}); keep one entry"
            )
