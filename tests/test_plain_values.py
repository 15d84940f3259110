"""Values that are plain classes, not dataclasses (a frozen dataclass costs ~1 ms of every run's start): the
copies they make by hand are checked field by field."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from nezha_bootstrap.command import Command
from nezha_bootstrap.config import Settings, build, v1_config
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.node import ThisNode
from nezha_bootstrap.online import Look, Online, Outcome
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter, RunResult
from nezha_bootstrap.v0.script import InstallPlan


def test_with_plan_changes_the_plan_and_keeps_every_other_field() -> None:
    result = RunResult("dry_run", "v1", "https://dash.example.com", "direct", reason="why", name="web-1",
                       uuid="u-1", plan=("old",), notes=("a note",), details={"probes": 2}, online=True,
                       online_after_s=1.5)

    wrapped = result.with_plan(["probe", "  old"])

    assert wrapped.plan == ("probe", "  old")
    assert {**vars(wrapped), "plan": result.plan} == vars(result)


def test_a_result_made_without_details_gets_its_own_dict() -> None:
    first, second = RunResult("installed", "v0", "d", "script"), RunResult("installed", "v0", "d", "script")

    first.details["probes"] = 1

    assert second.details == {}
    assert second.as_json() == {"outcome": "installed", "generation": "v0", "dashboard": "d", "method": "script",
                                "online": None, "online_after_s": None}


def test_with_config_changes_the_config_and_keeps_the_facts_paths_and_reporter(tmp_path: Path) -> None:
    facts = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id="0123456789abcdef", systemd_running=False)
    config = build(Settings(dashboard_url="http://dash.example.com", token="T" * 32), facts).config
    this = ThisNode(config, facts, Paths(tmp_path), Reporter(verbosity=-1))
    changed = v1_config(config)

    other = this.with_config(changed)

    assert other.config is changed
    assert {**vars(other), "config": config} == vars(this)


def test_replace_copies_a_config_with_only_the_changes(tmp_path: Path) -> None:
    facts = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id="0123456789abcdef", systemd_running=False)
    config = build(Settings(dashboard_url="http://dash.example.com", token="T" * 32), facts).config

    changed = config.replace(probe_port=443, tls=False)

    assert (changed.probe_port, changed.tls, config.probe_port, config.tls) == (443, False, 5555, True)
    assert {**vars(changed), "probe_port": 5555, "tls": True} == vars(config)


def test_a_command_equals_another_by_its_fields_but_the_environment_and_never_shows_its_argv() -> None:
    secret = "nodeSecret18chars0"
    command = Command(("install.sh", "-s", secret), cwd=Path("/opt"), name="install.sh", environ={"A": "1"})

    assert command == Command(("install.sh", "-s", secret), cwd=Path("/opt"), name="install.sh", environ={})
    assert command != Command(("install.sh", "-s", "other"), cwd=Path("/opt"), name="install.sh")
    assert command != Command(("install.sh", "-s", secret), cwd=Path("/opt"), name="install.sh", must_succeed=False)
    assert hash(command) == hash(Command(("install.sh", "-s", secret), cwd=Path("/opt"), name="install.sh"))
    assert secret not in repr(command) and "environ" not in repr(command)
    assert repr(command).startswith("Command(cwd=PosixPath('/opt'), must_succeed=True, timeout=")


def test_looks_and_online_compare_and_show_by_their_fields() -> None:
    assert Look(Outcome.PORT_REFUSED, "refused") == Look(Outcome.PORT_REFUSED, "refused") != Look(None, "refused")
    class Seen(Look):
        pass

    assert Look(None, "x") != Seen(None, "x")  # another class is never equal, a subclass neither (as a dataclass)
    assert len({Look(None, "x"), Look(None, "x"), Look(None, "y")}) == 2
    assert repr(Look(None, "x")) == "Look(outcome=None, evidence='x')"
    assert Online(1.0, "log", "seen") == Online(1.0, "log", "seen") != Online(1.0, "log", "")
    assert repr(Online(1.0, "log")) == "Online(seconds=1.0, by='log', evidence='')"


def test_facts_replace_changes_only_what_it_is_given_and_compare_without_the_environment() -> None:
    facts = Facts(hostname="web-1", primary_ipv4=None, machine_id="m", systemd_running=True, environ={"T": "s3cret"})

    changed = facts.replace(instance_id="i-1")

    assert {**vars(changed), "instance_id": None} == vars(facts)
    assert changed.environ is facts.environ
    assert facts == facts.replace(environ={}) != changed
    assert "s3cret" not in repr(facts) and repr(facts).startswith("Facts(hostname='web-1', primary_ipv4=None, ")


# --- every Record names each of its fields: compared (or kept out on purpose), shown (or a secret) ---------


NOT_COMPARED = {(Command, "environ"), (Facts, "environ")}  # the process environment: not what a value is
NOT_SHOWN = {(Command, "argv"), (Command, "environ"), (InstallPlan, "argv"), (Facts, "environ")}  # secrets


@pytest.mark.parametrize("kind", [Look, Online, Command, Facts, InstallPlan], ids=lambda kind: kind.__name__)
def test_a_record_compares_and_shows_every_field_but_the_ones_kept_out_on_purpose(kind: type) -> None:
    fields = set(inspect.signature(kind.__init__).parameters) - {"self"}

    assert set(kind.compared) == {name for name in fields if (kind, name) not in NOT_COMPARED}
    assert set(kind.shown) == {name for name in fields if (kind, name) not in NOT_SHOWN}
