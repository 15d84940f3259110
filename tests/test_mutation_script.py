"""scripts/mutation.py: one module, the tests named for it, the score (mutmut itself is not run here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tomllib")  # the script needs Python 3.11+ (mutmut 3 does too)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mutation.py"
PYPROJECT = SCRIPT.parent.parent / "pyproject.toml"


@pytest.fixture
def mutation(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("nezha_mutation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "nezha_mutation", module)
    spec.loader.exec_module(module)
    return module


def configured(mutation: Any) -> dict[str, list[str]]:
    import tomllib

    return mutation.modules(tomllib.loads(PYPROJECT.read_text()))  # type: ignore[no-any-return]


def test_every_configured_module_and_test_file_exists(mutation: Any) -> None:
    known = configured(mutation)

    assert len(known) == 10
    assert [m for m in known if not (PYPROJECT.parent / m).is_file()] == []
    assert [t for tests in known.values() for t in tests if not (PYPROJECT.parent / t).is_file()] == []


@pytest.mark.parametrize("name", ["nezha_bootstrap/v0/api.py", "v0/api.py", "v0.api", "nezha_bootstrap.v0.api"])
def test_a_module_may_be_named_by_path_or_dotted_name(mutation: Any, name: str) -> None:
    assert mutation.resolve(name, configured(mutation)) == "nezha_bootstrap/v0/api.py"


def test_an_unknown_module_is_refused_naming_the_known_ones(mutation: Any) -> None:
    with pytest.raises(SystemExit, match="unknown module 'cli'; known: nezha_bootstrap/redact.py, "):
        mutation.resolve("cli", configured(mutation))


def test_the_run_mutates_only_the_module_with_only_its_tests(mutation: Any) -> None:
    import tomllib

    text = mutation.narrowed(PYPROJECT.read_text(), "nezha_bootstrap/state.py", ["tests/test_state.py"])

    mutmut = tomllib.loads(text)["tool"]["mutmut"]
    assert mutmut["only_mutate"] == ["nezha_bootstrap/state.py"]
    assert mutmut["pytest_add_cli_args_test_selection"] == ["tests/test_state.py"]
    assert mutmut["source_paths"] == ["nezha_bootstrap"]


@pytest.mark.parametrize(("counts", "percent"), [
    ({"killed": 90, "timeout": 0, "survived": 10}, 90.0),
    ({"killed": 80, "timeout": 10, "survived": 10}, 90.0),  # a timeout: the tests did notice
    ({"killed": 89, "timeout": 0, "survived": 11}, 89.0),
])
def test_the_score_counts_killed_and_timed_out_mutants(mutation: Any, counts: dict[str, int], percent: float) -> None:
    score = mutation.Score(suspicious=0, no_tests=0, skipped=0, total=100, **counts)

    assert score.percent == percent
    assert score.line("m.py").endswith(f": {percent:.1f}% caught")


def test_a_resumed_run_keeps_the_verdicts_and_drops_the_stale_copies_of_the_tests(mutation: Any,
                                                                                   tmp_path: Path) -> None:
    mutants = tmp_path / "mutants"
    (mutants / "nezha_bootstrap" / "v0").mkdir(parents=True)
    (mutants / "nezha_bootstrap" / "v0" / "flow.py.meta").write_text("{}")
    (mutants / "mutmut-stats.json").write_text("{}")
    (mutants / "tests").mkdir()
    (mutants / "tests" / "test_run.py").write_text("# an earlier run's copy")
    (mutants / "pyproject.toml").write_text("")

    mutation.stale_copies(mutants)

    assert sorted(p.relative_to(mutants).as_posix() for p in mutants.rglob("*")) == [
        "mutmut-stats.json", "nezha_bootstrap", "nezha_bootstrap/v0", "nezha_bootstrap/v0/flow.py.meta"]


def test_resume_needs_the_workdir_of_an_earlier_run(mutation: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        mutation.main(["state", "--resume", "--workdir", str(tmp_path)])

    assert refused.value.code == 2
    assert "--resume needs the --workdir of an earlier run" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing copied


def test_a_resumed_run_tests_every_mutant_not_caught_again_and_keeps_the_caught_verdicts(
        mutation: Any, tmp_path: Path) -> None:
    import json

    meta = tmp_path / "mutants" / "nezha_bootstrap" / "v0" / "flow.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {"m_1": 0, "m_2": 1, "m_3": None, "m_4": 0, "m_5": 33, "m_6": -9, "m_7": -24, "m_8": 3, "m_9": 37,
             "m_10": 35, "m_11": 36}
    meta.write_text(json.dumps({"exit_code_by_key": codes, "durations_by_key": {"m_1": 0.5}}))

    # survived twice, no tests (a new test may reach it), SIGKILLed by a stopped run, suspicious
    assert mutation.not_caught_again(tmp_path / "mutants") == 5

    after = json.loads(meta.read_text())
    assert after["exit_code_by_key"] == {"m_1": None, "m_2": 1, "m_3": None, "m_4": None, "m_5": None, "m_6": None,
                                         "m_7": -24, "m_8": 3, "m_9": 37, "m_10": None, "m_11": 36}
    assert after["durations_by_key"] == {"m_1": 0.5}
