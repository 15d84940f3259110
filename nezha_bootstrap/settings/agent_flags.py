"""The v0 agent's own flags (`--agent-flag`): the switches and valued flags `service install` keeps."""

from __future__ import annotations

# Agent v0.20.5 flags (installer-v0.md). Value: None for a switch, else a validator of its argument.
_SWITCHES = {
    "-d", "--debug", "--skip-conn", "--skip-procs", "--disable-command-execute",
    "--disable-auto-update", "--disable-force-update", "--use-ipv6-countrycode", "--gpu", "--gitee",
}
_VALUED = {"--report-delay": (1, 4), "-u": (1, 86400 * 30), "--ip-report-period": (1, 86400 * 30)}
# `service install` rewrites the unit from a fixed table and silently drops these.
_DROPPED = {"-k", "--insecure", "--disable-nat", "--disable-send-query", "--temperature"}


def split_agent_flags(values: tuple[str, ...]) -> list[str]:
    """Flags from repeated options and the space-separated env var, one item each."""
    words: list[str] = []
    for value in values:
        words.extend(value.split())
    return words


def validate_agent_flags(raw: tuple[str, ...], problems: list[str]) -> tuple[str, ...]:
    words = split_agent_flags(raw)
    flags: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if name in ("--tls", "-s", "--server", "-p", "--password"):
            problems.append(f"agent flag {name} is set by the tool itself (use --tls/--no-tls, --probe-*)")
        elif name in _DROPPED:
            problems.append(f"agent flag {name} is refused: `service install` silently drops it from the unit")
        elif name in _SWITCHES and not eq:
            flags.append(name)
        elif name in _VALUED:
            if not eq:
                i += 1
                value = words[i] if i < len(words) else ""
            low, high = _VALUED[name]
            if value.isascii() and value.isdigit() and low <= int(value) <= high:
                flags.extend([name, value])
            else:
                problems.append(f"agent flag {name} needs a whole number from {low} to {high}, got {value!r}")
        else:
            problems.append(f"unknown agent flag {word!r}; allowed: " + ", ".join(sorted(_SWITCHES | set(_VALUED))))
        i += 1
    return tuple(flags)
