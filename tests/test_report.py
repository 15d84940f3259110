"""The run's result (report.RunResult): a plain class, so the one copy it makes is checked field by field."""

from __future__ import annotations

from nezha_bootstrap.report import RunResult


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
