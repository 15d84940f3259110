"""The one redaction point: secrets never shown, in any spelling; our own words never garbled."""

from __future__ import annotations

import json

import pytest

from nezha_bootstrap import redact

SECRET = "Agent5ecretAgent5ecret"


def test_a_value_registered_with_surrounding_whitespace_is_masked_stripped_too() -> None:
    redact.register(SECRET + "  \n")

    assert redact.redact(f"secret: {SECRET}!") == "secret: ***!"


@pytest.mark.parametrize("spelling", [
    pytest.param(SECRET, id="as is"),
    pytest.param(json.dumps(SECRET + "\n")[1:-1], id="json-escaped with its newline"),
])
def test_holds_secret_finds_every_spelling(spelling: str) -> None:
    redact.register(SECRET + "\n")

    assert redact.holds_secret(f"KEY={spelling}")


@pytest.mark.parametrize("secret", ['pa"ss$word`x', "back\\slash"])
def test_holds_secret_finds_shell_and_yaml_escaped_forms(secret: str) -> None:
    redact.register(secret)
    escaped = "".join("\\" + ch if ch in '"\\`$' else ch for ch in secret)

    assert redact.holds_secret(f'NEZHA_AGENT_SECRET="{escaped}"')
    assert redact.holds_secret(json.dumps(f'NEZHA_AGENT_SECRET="{escaped}"'))


def test_our_words_are_printed_as_written_while_a_secret_beside_them_is_masked() -> None:
    redact.register("wrong", "Tok3nTok3nTok3n")
    message = redact.ours("login: wrong username or password")

    assert redact.redact(f"error: {message}; token Tok3nTok3nTok3n wrong") == (
        "error: login: wrong username or password; token *** ***"
    )


@pytest.mark.parametrize(("said", "shown"), [
    ("server not found", "server not found"),
    ("bad password hunter22", "(not shown)"),
])
def test_quote_keeps_a_dashboards_words_only_without_a_secret(said: str, shown: str) -> None:
    redact.register("hunter22")

    assert redact.quote(said, "(not shown)") == shown
