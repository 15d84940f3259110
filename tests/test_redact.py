"""The one redaction point: secrets never shown, in any spelling; our own words never garbled."""

from __future__ import annotations

import io
import json

import pytest

from nezha_bootstrap import redact
from nezha_bootstrap.errors import DashboardRefused
from nezha_bootstrap.http import Answer
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.v1.api import classify

SECRET = "Agent5ecretAgent5ecret"


def shell_escaped(value: str) -> str:
    """`value` as written inside a shell's (or systemd's) double quotes."""
    return "".join("\\" + ch if ch in '"\\`$' else ch for ch in value)


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
    escaped = shell_escaped(secret)

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


# --- every spelling is masked, in --json too ---------------------------------------------------

QUOTED_TOKEN = 'Tok"en\\Tok"en\\Tok$en`x'  # one word of visible ASCII, as the API token rule allows


@pytest.mark.parametrize("token", [QUOTED_TOKEN, 'Tok"en\\Tok"en\\'], ids=["quotes inside", "ends in a backslash"])
def test_a_token_holding_quotes_and_backslashes_reaches_json_in_no_spelling(token: str) -> None:
    redact.register(token)
    out = io.StringIO()

    Reporter(as_json=True, out=out).emit_json({
        "error": f"refused {token}",
        "said": f"answer {json.dumps({'token': token})}",
        "env": f'NEZHA_TOKEN="{shell_escaped(token)}"',
    })

    printed = out.getvalue()
    assert [form for form in redact.forms(token) if form in printed] == []
    assert json.loads(printed) == {
        "error": "refused ***", "said": 'answer {"token": "***"}', "env": 'NEZHA_TOKEN="***"',
    }


# --- our phrases never shelter a secret --------------------------------------------------------

PHRASE = "login: wrong username or password"


@pytest.mark.parametrize(("secret", "text", "shown"), [
    pytest.param("Zz" + PHRASE + "Zz", f"error: Zz{PHRASE}Zz.", "error: ***.", id="the secret holds the phrase"),
    pytest.param("password!S3cr3t", f"{PHRASE}!S3cr3t", "login: wrong username or ***", id="crosses its end"),
    pytest.param("S3cr3t:login", f"S3cr3t:{PHRASE}", "***: wrong username or password", id="crosses its start"),
    pytest.param("S3cr3t", f"{PHRASE} S3cr3t", f"{PHRASE} ***", id="follows it"),
])
def test_a_secret_holding_crossing_or_beside_one_of_our_phrases_is_masked(secret: str, text: str, shown: str) -> None:
    redact.register(secret)
    redact.ours(PHRASE)

    assert redact.redact(text) == shown


def test_a_value_remembered_after_our_phrase_was_declared_is_masked_inside_it() -> None:
    redact.ours(PHRASE)
    redact.register("username")

    assert redact.redact(PHRASE) == "login: wrong *** or password"


# --- a dashboard's words are checked whole, then cut ---------------------------------------------

LONG_SECRET = "S3cretS3cretS3cretS3cretS3cret"


@pytest.mark.parametrize(("status", "error"), [
    pytest.param(200, "-" * 190 + LONG_SECRET, id="refusal"),
    pytest.param(403, "-" * 190 + LONG_SECRET, id="HTTP 403"),
    pytest.param(403, "ApiErrorForbidden: api token lacks scope " + "-" * 50 + LONG_SECRET, id="scope"),
])
def test_a_dashboards_words_with_a_secret_across_the_cut_show_none_of_it(status: int, error: str) -> None:
    redact.register(LONG_SECRET)
    answer = Answer(status, "application/json", json.dumps({"success": False, "error": error}).encode())

    with pytest.raises(DashboardRefused) as refused:
        classify(answer, "list servers")

    message = redact.redact(str(refused.value))
    assert "S3cr" not in message
    assert "not shown" in message


def test_a_network_error_is_masked_whole_before_it_is_cut() -> None:
    import httpx

    from nezha_bootstrap.http import _reason

    secret = "S3cretS3cretS3cretS3cret"
    redact.register(secret)
    text = _reason(httpx.ConnectError("x" * 190 + secret))

    assert "S3cr" not in text


# --- each spelling, each boundary, read back whole ------------------------------------------------------

def test_forms_are_the_value_json_escaped_ascii_and_not_shell_escaped_and_repr_and_each_json_once_more() -> None:
    assert redact.forms('é"x') == {
        'é"x',  # as is; repr('é"x')[1:-1] is the same
        r'\u00e9\"x',  # JSON, ASCII only
        r'é\"x',  # JSON keeping non-ASCII; also the shell's double-quoted form
        r'\\u00e9\\\"x', r'\u00e9\\\"x', r'é\\\"x',  # each of those inside a JSON string once more
    }


def test_forms_of_a_padded_value_hold_the_stripped_value_and_its_spellings() -> None:
    assert redact.forms('é"x') | {' é"x '} <= redact.forms(' é"x ')


def test_forms_skip_a_stripped_value_under_three_characters() -> None:
    assert redact.forms(" ab ") == {" ab "}


@pytest.mark.parametrize(("secret", "spelling"), [
    ("tab\there", "tab\\there"),  # repr and JSON
    ("it's\\ok", "it's\\\\ok"),  # repr doubles the backslash
    ("cash$`x`", "cash\\$\\`x\\`"),  # the shell's double quotes
    ("pässwörd", "p\\u00e4ssw\\u00f6rd"),  # JSON, ASCII only
])
def test_each_spelling_is_masked_where_it_is_written(secret: str, spelling: str) -> None:
    redact.register(secret)

    assert redact.redact(f"[{spelling}]") == "[***]"
    assert redact.holds_secret(f"[{spelling}]")


@pytest.mark.parametrize(("value", "masked"), [
    ("abc", True), ("ab", False), (" ab ", True), ("", False), (None, False),
])
def test_values_of_three_characters_or_more_are_remembered(value: str | None, masked: bool) -> None:
    redact.register(value)

    assert (redact.redact("[abc] [ab] [ ab ]") != "[abc] [ab] [ ab ]") is masked
    assert redact.redact("[ab]") == "[ab]"  # two characters are never masked alone: they would garble words


def test_a_value_registered_with_whitespace_is_masked_with_and_without_it() -> None:
    redact.register("  S3cr3tValue\n")

    assert redact.redact("a S3cr3tValue b") == "a *** b"
    assert redact.redact("a:  S3cr3tValue\n:b") == "a:***:b"  # as given: the padding goes with it


def test_overlapping_occurrences_become_one_mask_and_adjacent_ones_two() -> None:
    redact.register("aaa", "bbb")

    assert redact.redact("<aaaa>") == "<***>"
    assert redact.redact("<aaabbb>") == "<******>"


def test_forget_all_drops_every_value_and_every_phrase() -> None:
    redact.register("S3cr3tValue")
    redact.ours("our S3cr3tValue words")

    redact.forget_all()

    assert redact.redact("S3cr3tValue") == "S3cr3tValue"
    assert not redact.holds_secret("S3cr3tValue")
    redact.register("S3cr3tValue")
    assert redact.redact("our S3cr3tValue words") == "our *** words"  # the phrase was forgotten too


def test_a_phrase_declared_again_keeps_what_it_held_before_and_adds_what_it_holds_now() -> None:
    redact.register("wrong")
    redact.ours(PHRASE)
    redact.register("username")
    redact.ours(PHRASE)

    assert redact.redact(PHRASE) == PHRASE


def test_a_secret_exactly_as_long_as_our_phrase_is_kept_inside_it() -> None:
    redact.register(PHRASE)
    redact.ours(PHRASE)

    assert redact.redact(f"x {PHRASE} x") == f"x {PHRASE} x"
    assert redact.redact(f"x {PHRASE}{PHRASE[:5]}") == f"x {PHRASE}{PHRASE[:5]}"


def test_a_secret_at_the_very_start_and_end_of_a_text_is_masked() -> None:
    redact.register("S3cr3tValue")

    assert redact.redact("S3cr3tValue is S3cr3tValue") == "*** is ***"
    assert redact.redact("S3cr3tValue") == "***"


def test_every_occurrence_is_masked_not_only_the_first_and_the_last() -> None:
    redact.register("S3cr3tValue")

    assert redact.redact("S3cr3tValue, S3cr3tValue, S3cr3tValue.") == "***, ***, ***."


def test_an_occurrence_that_starts_before_our_phrase_is_masked_though_the_phrase_holds_the_value() -> None:
    redact.register("wrong")
    redact.ours("wrong username")

    assert redact.redact("wrongwrong username") == "***wrong username"


def test_the_shell_escapes_exactly_quotes_backslashes_backticks_and_dollars() -> None:
    assert redact.forms("AX$") == {"AX$", "AX\\$", "AX\\\\$"}
    assert redact.forms('a"\\`$b') >= {'a\\"\\\\\\`\\$b'}
