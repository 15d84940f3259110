"""config.build: every setting's rule from the settings table, all problems reported together."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from nezha_bootstrap.config import (
    DEFAULT_SCRIPT_SHA256,
    DEFAULT_SCRIPT_URL,
    Config,
    Settings,
    Validated,
    build,
    is_valid_host,
    same_dashboard,
)
from nezha_bootstrap.errors import SettingsError
from nezha_bootstrap.facts import Facts
from tests.conftest import TOKEN

FACTS = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id="0123456789abcdef0123456789abcdef",
              systemd_running=False)
DASHBOARD = "https://dash.example.com"
SHA = "ab" * 32
PROBE_REFUSED = (
    "the probe address {!r} must be a host name, an IPv4 or an IPv6 address (the installer passes it through eval)"
)
HTTP_WITH_HOST = "the dashboard URL {!r} must be http:// or https:// with a host"
NO_QUERY = "the dashboard URL {!r} must not have a query or fragment"
BAD_HOST = "the dashboard URL's host {!r} is not a valid host name or address"


CREDENTIAL_REQUIRED = ("a credential is required: the v0 API token or a v2.1+ access token (NEZHA_TOKEN, or "
                       "--token-file FILE, '-' for stdin), or the v1/v2 agent secret (NEZHA_AGENT_SECRET, or "
                       "--agent-secret-file FILE)")


def validate(facts: Facts = FACTS, **overrides: Any) -> Validated:
    values: dict[str, Any] = {"dashboard_url": DASHBOARD, "token": TOKEN}
    values.update(overrides)
    return build(Settings(**values), facts)


def config_of(**overrides: Any) -> Config:
    return validate(**overrides).config


def problems_of(facts: Facts = FACTS, /, **overrides: Any) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        validate(facts, **overrides)
    assert caught.value.exit_code == 2
    return caught.value.problems


# --- the dashboard URL --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "url", "probe"),
    [
        ("https://dash.example.com", "https://dash.example.com", "dash.example.com"),
        ("https://dash.example.com/", "https://dash.example.com", "dash.example.com"),
        ("https://dash.example.com/nezha/", "https://dash.example.com/nezha", "dash.example.com"),
        ("https://Dash.Example.com:8443/a/b//", "https://Dash.Example.com:8443/a/b", "dash.example.com"),
        (" https://dash.example.com ", "https://dash.example.com", "dash.example.com"),
        ("http://127.0.0.1:8008", "http://127.0.0.1:8008", "127.0.0.1"),
        ("http://[::1]:8008/", "http://[::1]:8008", "::1"),
        ("https://[2001:db8::5]/nezha", "https://[2001:db8::5]/nezha", "2001:db8::5"),
    ],
)
def test_the_dashboard_url_keeps_its_path_prefix_drops_the_trailing_slash_and_gives_the_default_probe(
    raw: str, url: str, probe: str
) -> None:
    config = config_of(dashboard_url=raw)

    assert (config.dashboard_url, config.probe_address) == (url, probe)
    assert config.register_url == f"{url}/api/v1/server/register?simple=true"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (None, "the dashboard URL is required (--dashboard-url or NEZHA_DASHBOARD_URL)"),
        ("", "the dashboard URL is required (--dashboard-url or NEZHA_DASHBOARD_URL)"),
        ("ftp://dash.example.com", HTTP_WITH_HOST.format("ftp://dash.example.com")),
        ("dash.example.com", HTTP_WITH_HOST.format("dash.example.com")),
        ("https://", HTTP_WITH_HOST.format("https://")),
        ("https://dash.example.com:99999", "the dashboard URL 'https://dash.example.com:99999' is not a valid URL"),
        ("https://[::1", "the dashboard URL 'https://[::1' is not a valid URL"),
        ("https://dash.example.com/?a=1", NO_QUERY.format("https://dash.example.com/?a=1")),
        ("https://dash.example.com/#x", NO_QUERY.format("https://dash.example.com/#x")),
        ("https://dash_board.example", BAD_HOST.format("dash_board.example")),
        ("https://a;b/", BAD_HOST.format("a;b")),
    ],
)
def test_a_bad_dashboard_url_is_a_problem(raw: str | None, problem: str) -> None:
    assert problems_of(dashboard_url=raw) == [problem]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("https://admin:Pa55word@dash.example.com/", "https://***@dash.example.com/"),
        ("https://Pa55word@dash.example.com", "https://***@dash.example.com"),
        ("https://u:Pa55word@[2001:db8::1]:8443/n", "https://***@[2001:db8::1]:8443/n"),
    ],
)
def test_credentials_in_the_dashboard_url_are_refused_and_never_printed(raw: str, shown: str) -> None:
    with pytest.raises(SettingsError) as caught:
        validate(dashboard_url=raw)

    assert caught.value.problems == [
        f"the dashboard URL {shown!r} carries credentials; remove them "
        "(the API token goes in NEZHA_TOKEN or --token-file)"
    ]
    assert "Pa55word" not in str(caught.value)


@pytest.mark.parametrize("raw", ["https://u:Pa55/word@dash.example.com", "https://u:Pa55word@dash.example.com:x/"])
def test_a_url_that_does_not_parse_still_hides_its_password(raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        validate(dashboard_url=raw)

    assert "Pa55" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "warned"),
    [
        ("http://dash.example.com", True),
        ("http://192.0.2.5:8008", True),
        ("http://127.0.0.1:8008", False),
        ("http://localhost:8008", True),  # a name may resolve anywhere: only loopback literals are exempt
        ("http://[::1]:8008", False),
        ("https://dash.example.com", False),
    ],
)
def test_plain_http_to_a_non_loopback_host_is_warned_about(raw: str, warned: bool) -> None:
    warning = (
        f"the dashboard URL {raw} is plain http to a non-loopback host: "
        "the API token and the node secret cross the network unencrypted"
    )

    assert validate(dashboard_url=raw).warnings == ((warning,) if warned else ())


# --- the token ------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, ""])
def test_a_token_is_required(token: str | None) -> None:
    assert problems_of(token=token) == [
        CREDENTIAL_REQUIRED
    ]


@pytest.mark.parametrize("token", [f"{TOKEN}\n", f"T{TOKEN}ö", f"{TOKEN}\x00", f"{TOKEN} {TOKEN}"])
def test_a_token_that_is_not_one_visible_ascii_word_is_refused_without_showing_it(token: str) -> None:
    with pytest.raises(SettingsError) as caught:
        validate(token=token)

    assert caught.value.problems == ["the API token in NEZHA_TOKEN must be one word of visible ASCII characters"]
    assert "T0ken" not in str(caught.value)


@pytest.mark.parametrize(("token", "word"), [(f"Bearer {TOKEN}", "Bearer"), (f"token {TOKEN}", "token")])
def test_a_token_with_a_scheme_word_says_to_drop_the_word(token: str, word: str) -> None:
    with pytest.raises(SettingsError) as caught:
        validate(token=token, token_source="--token-file /etc/nezha/token")

    assert caught.value.problems == [
        f"the API token in --token-file /etc/nezha/token starts with {word!r}: give the token alone, without that word"
    ]
    assert "T0ken" not in str(caught.value)


def test_an_empty_token_file_says_it_is_empty() -> None:
    assert problems_of(token="", token_source="--token-file /etc/nezha/token") == [
        "the token file /etc/nezha/token is empty"
    ]


def test_an_unreadable_token_file_is_one_problem_not_two() -> None:
    with pytest.raises(SettingsError) as caught:
        build(Settings(dashboard_url=DASHBOARD, token=None, token_source="--token-file /nope"), FACTS,
              problems=["cannot read the token file /nope: No such file or directory"])

    assert caught.value.problems == ["cannot read the token file /nope: No such file or directory"]


def test_a_token_from_the_flag_is_warned_about_and_kept_out_of_repr() -> None:
    validated = validate(token_source="--token")

    assert validated.warnings == (
        "--token puts the token in the process list; use NEZHA_TOKEN or --token-file instead",
    )
    assert validated.config.token == TOKEN
    assert TOKEN not in repr(validated)


def test_the_raw_settings_keep_the_token_out_of_repr_too() -> None:
    settings = Settings(dashboard_url="https://dash.test", token=TOKEN)

    assert settings.token == TOKEN
    assert TOKEN not in repr(settings)


def test_a_token_from_the_environment_gives_no_warning() -> None:
    assert validate().warnings == ()


# --- the probe address and port -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "address", "agent_host"),
    [
        ("probe.example.com", "probe.example.com", "probe.example.com"),
        ("probe.example.com.", "probe.example.com.", "probe.example.com."),
        ("localhost", "localhost", "localhost"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("192.0.2.1", "192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1", "[2001:db8::1]"),
        ("[2001:db8::1]", "2001:db8::1", "[2001:db8::1]"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1", "[::ffff:192.0.2.1]"),
        (None, "dash.example.com", "dash.example.com"),
        ("", "dash.example.com", "dash.example.com"),
    ],
)
def test_a_probe_address_is_a_host_name_or_an_ip_literal(raw: str | None, address: str, agent_host: str) -> None:
    config = config_of(probe_address=raw)

    assert (config.probe_address, config.agent_host) == (address, agent_host)


@pytest.mark.parametrize(
    "raw",
    [
        "probe.example.com;reboot", "$(reboot)", "`reboot`", "probe example.com", " probe.example.com",
        "probe.example.com\n", "probe.example.com\nreboot", "fe80::1%$(reboot)", "fe80::1%eth0",
        "-probe.example.com", "probe-.example.com", "1.2.3", "256.1.1.1", "a..b", "x" * 64 + ".example",
        "probe_1.example.com", "[probe", "[::1", "bücher.example", "probe.example.com:5555", "http://probe",
        "a'b", 'a"b', "a|b", "a&b", "a>b", "*", "~root", ".",
    ],
)
def test_a_probe_address_a_shell_could_misread_is_refused(raw: str) -> None:
    assert problems_of(probe_address=raw) == [PROBE_REFUSED.format(raw)]


@pytest.mark.parametrize(("raw", "port"), [("1", 1), ("65535", 65535), (5555, 5555), ("0443", 443)])
def test_the_probe_port_is_a_number_from_1_to_65535(raw: Any, port: int) -> None:
    assert config_of(probe_port=raw).probe_port == port


def test_the_probe_port_defaults_to_5555() -> None:
    assert config_of().probe_port == 5555


@pytest.mark.parametrize("raw", ["0", "65536", "-1", "abc", "", None, "5555.0", "55 55"])
def test_a_probe_port_out_of_range_is_a_problem(raw: Any) -> None:
    assert problems_of(probe_port=raw) == [f"the probe port must be a number from 1 to 65535, got {raw!r}"]


# int() and float() accept all of these; an operator never means them (issue 18, item 16).
LENIENT_NUMBERS = ["1_0", " 443 ", "443\n", "+10", "\u0661\u0660", "\uff11\uff10", "\u00b2", "0x10", "1e2", True]


@pytest.mark.parametrize("raw", LENIENT_NUMBERS)
def test_a_number_only_int_would_read_is_refused_as_the_probe_port(raw: Any) -> None:
    assert problems_of(probe_port=raw) == [f"the probe port must be a number from 1 to 65535, got {raw!r}"]


@pytest.mark.parametrize("raw", [*LENIENT_NUMBERS, "1_0.5", "nan", "inf", " 10"])
def test_a_number_only_float_would_read_is_refused_as_the_deadline(raw: Any) -> None:
    assert problems_of(deadline=raw) == [f"the deadline must be a number of seconds up to 86400, got {raw!r}"]


# --- the node name, tag and note --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (None, "web-1"),
        ("", "web-1"),
        ("{hostname}", "web-1"),
        ("{hostname}-{ip}", "web-1-192.0.2.10"),
        ("node-{machine_id}", "node-01234567"),
        ("{unknown} {HOSTNAME}", "{unknown} {HOSTNAME}"),
        ('web "1" \'quoted\' \\ 🚀 🇯🇵', 'web "1" \'quoted\' \\ 🚀 🇯🇵'),
        ("  padded  ", "  padded  "),
        ("x" * 10_000, "x" * 10_000),
    ],
)
def test_the_name_fills_its_placeholders_and_keeps_any_text(raw: str | None, name: str) -> None:
    config = config_of(name=raw)

    assert config.name == name
    body = config.register_body()
    assert body == {"Name": name, "HideForGuest": "on"}
    assert json.loads(json.dumps(body, ensure_ascii=False)) == body


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        (FACTS.replace(primary_ipv4=None), "the node name uses {ip} but this host has no value for it"),
        (
            FACTS.replace(primary_ipv4=None, machine_id=None),
            "the node name uses {ip}, {machine_id} but this host has no value for it",
        ),
    ],
)
def test_a_placeholder_without_a_value_on_this_host_is_a_problem(facts: Facts, problem: str) -> None:
    assert problems_of(facts, name="{hostname}-{ip}-{machine_id}") == [problem]


@pytest.mark.parametrize("raw", ["a\nb", "a\rb", "a\tb", "nul\x00", "del\x7f", "c1\x85", "\x1b[31mred"])
def test_control_characters_in_the_name_are_refused(raw: str) -> None:
    assert problems_of(name=raw) == ["the node name must not contain control characters (newlines, tabs, ...)"]


def test_a_host_name_with_a_control_character_is_refused_too() -> None:
    facts = FACTS.replace(hostname="web\n1")

    assert problems_of(facts) == ["the node name must not contain control characters (newlines, tabs, ...)"]


@pytest.mark.parametrize(("what", "field"), [("node name", "name"), ("tag", "tag"), ("note", "note")])
def test_text_that_is_not_utf8_from_the_environment_is_refused(what: str, field: str) -> None:
    undecodable = "caf\udce9"  # os.environ's surrogate escape of the Latin-1 byte 0xE9

    assert problems_of(**{field: undecodable}) == [f"the {what} is not valid UTF-8 text"]


def test_a_blank_name_is_a_problem() -> None:
    assert problems_of(name="   ") == ["the node name is empty"]


@pytest.mark.parametrize(
    ("overrides", "body"),
    [
        ({}, {"Name": "web-1", "HideForGuest": "on"}),
        ({"tag": "prod", "note": 'a "note"'},
         {"Name": "web-1", "Tag": "prod", "Note": 'a "note"', "HideForGuest": "on"}),
        ({"hide_for_guest": False}, {"Name": "web-1", "HideForGuest": "off"}),
        ({"tag": ""}, {"Name": "web-1", "Tag": "", "HideForGuest": "on"}),
    ],
)
def test_the_register_body_sends_only_the_fields_that_were_set(overrides: dict[str, Any], body: dict[str, str]) -> None:
    assert config_of(**overrides).register_body() == body


@pytest.mark.parametrize(("field", "what"), [("tag", "tag"), ("note", "note")])
def test_control_characters_in_tag_and_note_are_refused(field: str, what: str) -> None:
    assert problems_of(**{field: "a\nb"}) == [f"the {what} must not contain control characters"]


# --- agent flags --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "flags"),
    [
        ((), ()),
        (("--gpu",), ("--gpu",)),
        (("--skip-conn --skip-procs", "-d"), ("--skip-conn", "--skip-procs", "-d")),
        (("--report-delay=2",), ("--report-delay", "2")),
        (("--report-delay 4",), ("--report-delay", "4")),
        (("--report-delay", "1"), ("--report-delay", "1")),
        (("-u=60", "--ip-report-period 1800"), ("-u", "60", "--ip-report-period", "1800")),
        (("--disable-command-execute --disable-auto-update --disable-force-update",),
         ("--disable-command-execute", "--disable-auto-update", "--disable-force-update")),
        (("--use-ipv6-countrycode --gitee --debug",), ("--use-ipv6-countrycode", "--gitee", "--debug")),
    ],
)
def test_allowed_agent_flags_are_passed_one_word_each(raw: tuple[str, ...], flags: tuple[str, ...]) -> None:
    assert config_of(agent_flags=raw).agent_flags == flags


ALLOWED = (
    "--debug, --disable-auto-update, --disable-command-execute, --disable-force-update, --gitee, --gpu, "
    "--ip-report-period, --report-delay, --skip-conn, --skip-procs, --use-ipv6-countrycode, -d, -u"
)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("--insecure", "agent flag --insecure is refused: `service install` silently drops it from the unit"),
        ("-k", "agent flag -k is refused: `service install` silently drops it from the unit"),
        ("--disable-nat", "agent flag --disable-nat is refused: `service install` silently drops it from the unit"),
        ("--disable-send-query",
         "agent flag --disable-send-query is refused: `service install` silently drops it from the unit"),
        ("--temperature", "agent flag --temperature is refused: `service install` silently drops it from the unit"),
        ("--tls", "agent flag --tls is set by the tool itself (use --tls/--no-tls, --probe-*)"),
        ("-s=other:1", "agent flag -s is set by the tool itself (use --tls/--no-tls, --probe-*)"),
        ("--password", "agent flag --password is set by the tool itself (use --tls/--no-tls, --probe-*)"),
        ("--evil", f"unknown agent flag '--evil'; allowed: {ALLOWED}"),
        ("--gpu=1", f"unknown agent flag '--gpu=1'; allowed: {ALLOWED}"),
        ("--gpu;reboot", f"unknown agent flag '--gpu;reboot'; allowed: {ALLOWED}"),
        ("$(reboot)", f"unknown agent flag '$(reboot)'; allowed: {ALLOWED}"),
        ("--report-delay=9", "agent flag --report-delay needs a whole number from 1 to 4, got '9'"),
        ("--report-delay=0", "agent flag --report-delay needs a whole number from 1 to 4, got '0'"),
        ("--report-delay", "agent flag --report-delay needs a whole number from 1 to 4, got ''"),
        ("--report-delay=²", "agent flag --report-delay needs a whole number from 1 to 4, got '²'"),
        ("-u=1;reboot", "agent flag -u needs a whole number from 1 to 2592000, got '1;reboot'"),
    ],
)
def test_refused_agent_flags_say_why(raw: str, problem: str) -> None:
    assert problems_of(agent_flags=(raw,)) == [problem]


# --- install script, mirror, deadline, root ------------------------------------------------------

def test_the_default_script_url_comes_with_the_references_hash() -> None:
    validated = validate()

    assert (validated.config.script_url, validated.config.script_sha256) == (DEFAULT_SCRIPT_URL, DEFAULT_SCRIPT_SHA256)
    assert validated.warnings == ()


def test_a_given_hash_is_normalised_to_lower_case() -> None:
    assert config_of(script_sha256=f" {SHA.upper()} ").script_sha256 == SHA


@pytest.mark.parametrize(
    ("url", "sha", "warnings"),
    [
        ("https://mirror.example/install.sh", SHA, ()),
        ("https://mirror.example/install.sh", None, (
            "WARNING: the install script https://mirror.example/install.sh will run as root WITHOUT a hash check; "
            "pin it with --script-sha256",
        )),
        ("http://mirror.example/install.sh", SHA,
         ("the install script is fetched over plain http from mirror.example",)),
        ("http://127.0.0.1:8008/install.sh", SHA, ()),
    ],
)
def test_another_script_url_without_a_hash_is_warned_about_loudly(
    url: str, sha: str | None, warnings: tuple[str, ...]
) -> None:
    validated = validate(script_url=url, script_sha256=sha)

    assert (validated.config.script_url, validated.config.script_sha256) == (url, sha)
    assert validated.warnings == warnings


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"script_sha256": "abc"}, "the install script SHA-256 must be 64 hexadecimal digits"),
        ({"script_sha256": "g" * 64}, "the install script SHA-256 must be 64 hexadecimal digits"),
        ({"script_sha256": SHA + "\n" + SHA}, "the install script SHA-256 must be 64 hexadecimal digits"),
        ({"script_url": "ftp://mirror.example/x"},
         "the install script URL 'ftp://mirror.example/x' must be http:// or https:// with a host"),
        ({"script_url": "https://[::1/x"}, "the install script URL 'https://[::1/x' is not a valid URL"),
        ({"script_url": "https://mirror.example:0x/x"},
         "the install script URL 'https://mirror.example:0x/x' is not a valid URL"),
    ],
)
def test_a_bad_script_url_or_hash_is_a_problem(overrides: dict[str, Any], problem: str) -> None:
    assert problems_of(**overrides) == [problem]


@pytest.mark.parametrize(("raw", "mirror"), [(None, None), ("", None), ("cn", "cn"), ("CN", "cn")])
def test_the_mirror_is_cn_or_unset(raw: str | None, mirror: str | None) -> None:
    assert config_of(mirror=raw).mirror == mirror


def test_another_mirror_is_a_problem() -> None:
    assert problems_of(mirror="us") == ["the mirror must be 'cn' or unset, got 'us'"]


@pytest.mark.parametrize(("raw", "seconds"), [(300.0, 300.0), ("10", 10.0), ("0.5", 0.5), ("86400", 86400.0)])
def test_the_deadline_is_a_positive_number_of_seconds(raw: Any, seconds: float) -> None:
    assert config_of(deadline=raw).deadline == seconds


def test_the_deadline_defaults_to_300_seconds() -> None:
    assert config_of().deadline == 300.0


@pytest.mark.parametrize("raw", [0, "0", -1, "86401", "abc", "nan", "inf", ""])
def test_a_bad_deadline_is_a_problem(raw: Any) -> None:
    assert problems_of(deadline=raw) == [f"the deadline must be a number of seconds up to 86400, got {raw!r}"]


def test_a_zero_lock_timeout_means_do_not_wait() -> None:
    assert config_of(lock_timeout=0).lock_timeout == 0.0


def test_the_root_must_be_absolute() -> None:
    assert problems_of(root="relative/dir") == ["root must be an absolute path, got 'relative/dir'"]


# --- everything together --------------------------------------------------------------------------

def test_every_problem_is_reported_together() -> None:
    with pytest.raises(SettingsError) as caught:
        validate(
            dashboard_url="ftp://x", token=None, probe_address="a;b", probe_port="0", name="a\nb",
            agent_flags=("--insecure",), script_sha256="abc", mirror="us", deadline="0",
        )

    problems = [
        "the dashboard URL 'ftp://x' must be http:// or https:// with a host",
        CREDENTIAL_REQUIRED,
        PROBE_REFUSED.format("a;b"),
        "the probe port must be a number from 1 to 65535, got '0'",
        "the node name must not contain control characters (newlines, tabs, ...)",
        "agent flag --insecure is refused: `service install` silently drops it from the unit",
        "the install script SHA-256 must be 64 hexadecimal digits",
        "the mirror must be 'cn' or unset, got 'us'",
        "the deadline must be a number of seconds up to 86400, got '0'",
    ]
    assert caught.value.problems == problems
    assert str(caught.value) == "invalid settings:\n" + "\n".join(f"  - {p}" for p in problems)


def test_problems_found_earlier_are_reported_with_the_rest() -> None:
    with pytest.raises(SettingsError) as caught:
        build(Settings(dashboard_url=DASHBOARD, token=None), FACTS, problems=["cannot read --token-file x"])

    assert caught.value.problems == [
        "cannot read --token-file x",
        CREDENTIAL_REQUIRED,
    ]


def test_a_valid_config_is_frozen() -> None:
    config = config_of()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.new_field = "other"  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del config.tag  # type: ignore[misc]
    assert config.replace(name="other").name == "other" and config.name != "other"


# --- properties -------------------------------------------------------------------------------------

_SAFE_FOR_EVAL = re.compile(r"[0-9A-Za-z.:-]+")
_hostish = st.text(alphabet="abcxyz019.:-[]%$;` \n_", max_size=40)


@hypothesis_settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=60), _hostish))
def test_a_probe_address_is_either_accepted_as_a_safe_host_or_a_settings_error(raw: str) -> None:
    try:
        config = config_of(probe_address=raw)
    except SettingsError as error:
        assert error.problems == [PROBE_REFUSED.format(raw)]
        return
    assert is_valid_host(config.probe_address)
    assert _SAFE_FOR_EVAL.fullmatch(config.probe_address)


_any_text = st.none() | st.text(max_size=40) | _hostish


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    dashboard_url=_any_text | st.text(max_size=30).map(lambda t: "https://" + t),
    token=_any_text, name=_any_text, tag=_any_text, note=_any_text, probe_port=_any_text,
    agent_flags=st.lists(st.text(max_size=20), max_size=3).map(tuple),
    script_url=_any_text | st.text(max_size=30).map(lambda t: "http://" + t),
    script_sha256=_any_text, mirror=_any_text, deadline=st.text(max_size=10) | st.floats(),
)
def test_build_only_ever_raises_settings_error(**values: Any) -> None:
    try:
        build(Settings(**values), FACTS)
    except SettingsError:
        pass


@pytest.mark.parametrize(("url", "shown"), [
    ("https://admin:hunter2@dash.example.com/x", "https://***@dash.example.com/x"),
    ("https://u:pa/ss@dash.example.com:8443/x", "https://***@dash.example.com:8443/x"),
    ("http:u:Hunter2Hunter2@://", "http:***@://"),  # found by hypothesis: "://" after the '@'
    ("x://a@b@c/d", "x://***@c/d"),
    ("user:pw@host", "user:***@host"),
    ("https://dash.example.com/x", "https://dash.example.com/x"),
])
def test_display_url_masks_everything_up_to_the_last_at(url: str, shown: str) -> None:
    from nezha_bootstrap.config import display_url

    assert display_url(url) == shown


@pytest.mark.parametrize(("first", "second", "same"), [
    ("http://127.0.0.1:8008", "http://127.0.0.1:8008/", True),
    ("http://127.0.0.1:8008", "HTTP://127.0.0.1:8008/./", True),
    ("http://127.0.0.1:8008/nezha", "http://127.0.0.1:8008//nezha//", True),
    ("http://127.0.0.1:8008", "http://[::ffff:127.0.0.1]:8008", True),
    ("http://127.0.0.1", "http://127.0.0.1:80", True),
    ("https://Nezha.Example.com.", "https://nezha.example.com:443/", True),
    ("https://nezha.example.com/a/b/../c", "https://nezha.example.com/a/%63", True),
    ("http://[2001:DB8::1]:8008", "http://[2001:db8:0::1]:8008", True),
    ("http://127.0.0.1:8008", "http://localhost:8008", False),  # a name is not an address: the dashboard tells
    ("http://127.0.0.1:8008", "https://127.0.0.1:8008", False),
    ("http://127.0.0.1:8008", "http://127.0.0.1:8009", False),
    ("https://nezha.example.com/a", "https://nezha.example.com/A", False),
    ("https://nezha.example.com/a%2Fb", "https://nezha.example.com/a/b", False),
])
def test_dashboard_urls_are_compared_in_one_spelling(first: str, second: str, same: bool) -> None:
    assert same_dashboard(first, second) is same
    assert same_dashboard(second, first) is same
