"""systemd's EnvironmentFile= parser, rewritten from src/basic/env-file.c (systemd 252) for the tests.

`parse` follows parse_env_file_internal() state by state, then does what the service manager does
with the result (exec_context_load_environment: strv_env_clean): names that are not valid
environment names are dropped, and a later assignment replaces an earlier one.
systemd 252 (Debian 12, RHEL 9) treats a backslash at the end of a comment line as a continuation
that swallows the next line; systemd 254 stopped doing that. The templates never end a comment
with a backslash, so both agree on them.
"""

from __future__ import annotations

import re

COMMENTS = "#;"
WHITESPACE = " \t\n\r"
NEWLINE = "\n\r"
SHELL_NEED_ESCAPE = '"\\`$'
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """Every (key, value) assignment in file order, as parse_env_file_internal() pushes them."""
    parser = _Parser()
    for ch in text:
        parser.feed(ch)
    return parser.finish()


def parse(text: str) -> dict[str, str]:
    """The environment a service gets from this file."""
    environment: dict[str, str] = {}
    for key, value in parse_pairs(text):
        if _NAME_RE.match(key):
            environment[key] = value
    return environment


class _Parser:
    """One character at a time, the states and transitions of env-file.c."""

    def __init__(self) -> None:
        self.state = "PRE_KEY"
        self.key: list[str] = []
        self.value: list[str] = []
        self.last_key_whitespace: int | None = None
        self.last_value_whitespace: int | None = None
        self.pairs: list[tuple[str, str]] = []

    def feed(self, c: str) -> None:
        getattr(self, "_" + self.state.lower())(c)

    def finish(self) -> list[tuple[str, str]]:
        if self.state in ("PRE_VALUE", "VALUE", "VALUE_ESCAPE", "SINGLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE",
                          "DOUBLE_QUOTE_VALUE_ESCAPE"):
            self._push(chomp=self.state == "VALUE")
        return self.pairs

    def _push(self, chomp: bool) -> None:
        value = self.value
        if chomp and self.last_value_whitespace is not None:
            value = value[: self.last_value_whitespace]
        key = self.key
        if self.last_key_whitespace is not None:
            key = key[: self.last_key_whitespace]
        self.pairs.append(("".join(key), "".join(value)))
        self.key, self.value = [], []

    def _pre_key(self, c: str) -> None:
        if c in COMMENTS:
            self.state = "COMMENT"
        elif c not in WHITESPACE:
            self.state = "KEY"
            self.last_key_whitespace = None
            self.key.append(c)

    def _key(self, c: str) -> None:
        if c in NEWLINE:
            self.state = "PRE_KEY"
            self.key = []
        elif c == "=":
            self.state = "PRE_VALUE"
            self.last_value_whitespace = None
        else:
            if c not in WHITESPACE:
                self.last_key_whitespace = None
            elif self.last_key_whitespace is None:
                self.last_key_whitespace = len(self.key)
            self.key.append(c)

    def _pre_value(self, c: str) -> None:
        if c in NEWLINE:
            self.state = "PRE_KEY"
            self._push(chomp=False)
        elif c == "'":
            self.state = "SINGLE_QUOTE_VALUE"
        elif c == '"':
            self.state = "DOUBLE_QUOTE_VALUE"
        elif c == "\\":
            self.state = "VALUE_ESCAPE"
        elif c not in WHITESPACE:
            self.state = "VALUE"
            self.value.append(c)

    def _value(self, c: str) -> None:
        if c in NEWLINE:
            self.state = "PRE_KEY"
            self._push(chomp=True)
        elif c == "\\":
            self.state = "VALUE_ESCAPE"
            self.last_value_whitespace = None
        else:
            if c not in WHITESPACE:
                self.last_value_whitespace = None
            elif self.last_value_whitespace is None:
                self.last_value_whitespace = len(self.value)
            self.value.append(c)

    def _value_escape(self, c: str) -> None:
        self.state = "VALUE"
        if c not in NEWLINE:  # an escaped newline is eaten entirely
            self.value.append(c)

    def _single_quote_value(self, c: str) -> None:
        if c == "'":
            self.state = "PRE_VALUE"
        else:
            self.value.append(c)

    def _double_quote_value(self, c: str) -> None:
        if c == '"':
            self.state = "PRE_VALUE"
        elif c == "\\":
            self.state = "DOUBLE_QUOTE_VALUE_ESCAPE"
        else:
            self.value.append(c)

    def _double_quote_value_escape(self, c: str) -> None:
        self.state = "DOUBLE_QUOTE_VALUE"
        if c in SHELL_NEED_ESCAPE:
            self.value.append(c)
        elif c != "\n":  # another character keeps its backslash, like the shell; "\\\n" continues the line
            self.value += ["\\", c]

    def _comment(self, c: str) -> None:
        if c == "\\":
            self.state = "COMMENT_ESCAPE"
        elif c in NEWLINE:
            self.state = "PRE_KEY"

    def _comment_escape(self, c: str) -> None:
        self.state = "COMMENT"  # systemd 252: the escaped character, a newline too, stays in the comment
