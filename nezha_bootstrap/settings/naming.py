"""Naming the node: the name's template, and the v2.1+ token mode's settings (note, index, group)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from nezha_bootstrap.settings.values import has_control_chars, is_encodable, plain_number

if TYPE_CHECKING:
    from nezha_bootstrap.facts import Facts  # facts.py loads socket: `--help` needs neither


DEFAULT_ENROLL_TIMEOUT = 120.0
_PLACEHOLDER_RE = re.compile(r"\{(hostname|ip|machine_id)\}")


def validate_name(raw: str | None, facts: Facts, problems: list[str]) -> str | None:
    template = raw if raw else "{hostname}"
    values = {
        "hostname": facts.hostname,
        "ip": facts.primary_ipv4,
        "machine_id": facts.machine_id[:8] if facts.machine_id else None,
    }
    missing = sorted({m for m in _PLACEHOLDER_RE.findall(template) if not values[m]})
    if missing:
        problems.append(
            "the node name uses "
            + ", ".join("{" + m + "}" for m in missing)
            + " but this host has no value for it"
        )
        return None
    name = _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)] or "", template)
    if has_control_chars(name):
        problems.append("the node name must not contain control characters (newlines, tabs, ...)")
        return None
    if not is_encodable(name):
        problems.append("the node name is not valid UTF-8 text")
        return None
    if not name.strip():
        problems.append("the node name is empty")
        return None
    return name


def is_access_token(token: str | None) -> bool:
    """Whether the token is a v2.1+ personal access token (by its `nzp_` prefix)."""
    return bool(token) and str(token).startswith("nzp_")


class NamingSettings:
    """The token-mode settings as click resolved them (text: validated below). A plain class, as Naming."""

    def __init__(self, public_note: str | None = None, display_index: str | None = None, group: str | None = None,
                 group_id: str | None = None, create_group: bool = False,
                 enroll_timeout: str | float = DEFAULT_ENROLL_TIMEOUT) -> None:
        self.public_note: Final = public_note
        self.display_index: Final = display_index
        self.group: Final = group
        self.group_id: Final = group_id
        self.create_group: Final = create_group
        self.enroll_timeout: Final = enroll_timeout


class Naming:
    """The validated token-mode settings. A plain class, its fields Final (never compared, hashed, replaced or
    printed): a frozen dataclass costs ~1 ms of every run's start."""

    def __init__(self, public_note: str | None = None, display_index: int | None = None, group: str | None = None,
                 group_id: int | None = None, create_group: bool = False,
                 enroll_timeout: float = DEFAULT_ENROLL_TIMEOUT) -> None:
        self.public_note: Final = public_note
        self.display_index: Final = display_index
        self.group: Final = group
        self.group_id: Final = group_id
        self.create_group: Final = create_group
        self.enroll_timeout: Final = enroll_timeout


def validate_naming(raw: NamingSettings, problems: list[str]) -> Naming:
    """Check the token-mode settings, appending every problem (pure; the token's shape is settings/v0.py's)."""
    public_note = raw.public_note
    if public_note is not None and (has_control_chars(public_note) or not is_encodable(public_note)):
        problems.append("the public note must be UTF-8 text without control characters")
    index = _whole(raw.display_index, "--display-index", problems, low=-(2 ** 31), high=2 ** 31 - 1)
    group_id = _whole(raw.group_id, "--group-id", problems, low=1, high=2 ** 63 - 1)
    group = raw.group if raw.group else None
    if group is not None and (has_control_chars(group) or not is_encodable(group)):
        problems.append("the group name must be UTF-8 text without control characters")
    if raw.create_group and not group:
        problems.append("--create-group needs --group NAME")
    if raw.create_group and group_id is not None:
        problems.append("--create-group makes a new group: it cannot go with --group-id")
    timeout = _whole(str(raw.enroll_timeout), "--enroll-timeout", problems, low=1, high=86400, real=True)
    return Naming(public_note=public_note, display_index=index, group=group, group_id=group_id,
                  create_group=raw.create_group,
                  enroll_timeout=DEFAULT_ENROLL_TIMEOUT if timeout is None else float(timeout))


def _whole(raw: str | None, what: str, problems: list[str], *, low: float, high: float,
           real: bool = False) -> Any:
    if raw is None or str(raw).strip() == "":
        return None
    value = plain_number(raw, real=real)
    if value is None or not low <= value <= high:
        kind = f"a number from {low:g} to {high:g}" if real else f"an integer from {int(low)} to {int(high)}"
        problems.append(f"{what} must be {kind}, got {raw!r}")
        return None
    return value
