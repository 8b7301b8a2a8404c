"""Claim checks: the runner's contract, the report, and each gate broken on purpose."""

from __future__ import annotations

import json
import threading

import pytest

from hydralm.claims import (
    BUDGETS,
    Check,
    ClaimResult,
    Verdict,
    get_budget,
    render_markdown,
    run_claims,
    run_metadata,
    write_reports,
)

SMOKE = get_budget("smoke")


def _check(name: str, run, claim: int = 1, kind: str = "measured") -> Check:
    return Check(name=name, title=name.replace("_", " "), claim=claim, kind=kind, run=run)


def _passing(budget, ctx):
    ctx.step(0.5, "half way")
    return Verdict(passed=True, thresholds={"x_min": 1}, measured={"x": 2.0}, notes="fine", summary="x = 2")


# Runner contract


def test_unknown_budget_lists_legal_names():
    with pytest.raises(ValueError) as info:
        run_claims("huge", checks=[])
    assert "'huge'" in str(info.value)
    for name in BUDGETS:
        assert name in str(info.value)


def test_unknown_budget_runs_nothing():
    calls = []
    with pytest.raises(ValueError):
        run_claims("fast", checks=[_check("spy", lambda b, c: calls.append(1) or Verdict(True))])
    assert calls == []


def test_exception_becomes_fail_with_error_text():
    def broken(budget, ctx):
        raise RuntimeError("kernel exploded at N=4096")

    [result] = run_claims("smoke", checks=[_check("broken", broken)])
    assert result.passed is False
    assert "RuntimeError" in result.notes
    assert "kernel exploded at N=4096" in result.notes


def test_wrong_return_type_becomes_fail():
    [result] = run_claims("smoke", checks=[_check("sloppy", lambda b, c: True)])
    assert result.passed is False
    assert "expected Verdict" in result.notes


def test_progress_reports_fraction_and_done():
    events = []
    run_claims("smoke", checks=[_check("ok", _passing)], progress=lambda *e: events.append(e))
    assert ("ok", 0.5, "half way") in events
    assert events[-1] == ("ok", 1.0, "done")


def test_cancel_between_steps_fails_running_and_later_checks():
    cancel = threading.Event()
    reached = []

    def first(budget, ctx):
        ctx.step(0.1, "step one")
        cancel.set()
        ctx.step(0.2, "step two")
        reached.append("after cancel")
        return Verdict(True)

    results = run_claims("smoke", checks=[_check("first", first), _check("second", _passing, claim=2)], cancel=cancel)
    assert reached == []
    assert [r.passed for r in results] == [False, False]
    assert [r.notes for r in results] == ["cancelled", "cancelled"]


def test_results_ordered_by_claim_and_streamed():
    seen = []
    checks = [_check("c3", _passing, claim=3), _check("c1", _passing, claim=1)]
    extra = [_check("c1_twin", _passing, claim=1)]
    results = run_claims("smoke", checks=checks, extra_checks=extra, on_result=lambda r: seen.append(r.name))
    assert [r.name for r in results] == ["c1", "c1_twin", "c3"]
    assert seen == ["c1", "c1_twin", "c3"]


def test_check_rejects_bad_kind_and_claim():
    with pytest.raises(ValueError, match="invalid kind"):
        _check("x", _passing, kind="guessed")
    with pytest.raises(ValueError, match="claim must be 1 to 6"):
        _check("x", _passing, claim=7)


# Report


def test_result_json_round_trip_with_non_finite_values():
    result = ClaimResult("n", "t", True, "measured", {"a": 1}, {"slope": float("nan"), "v": [1, 2]}, "", 0.5, 1, "s")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["measured"]["slope"] == "nan"
    assert ClaimResult.from_dict(data).measured["v"] == [1, 2]


def test_markdown_and_json_reports(tmp_path):
    results = run_claims("smoke", checks=[_check("ok", _passing), _check("bad", lambda b, c: Verdict(False), claim=4)])
    meta = run_metadata("smoke", 1.5, results)
    md_path, json_path = tmp_path / "RESULTS.md", tmp_path / "results.json"
    write_reports(results, meta, md_path, json_path)

    text = md_path.read_text()
    assert "| # | Claim | Check | Kind | Key measurement | Result | Time (s) |" in text
    assert "| x = 2 | **PASS** |" in text
    assert "**FAIL**" in text
    assert "1 of 2 checks PASS" in text
    assert '"x_min": 1' in text

    data = json.loads(json_path.read_text())
    assert data["meta"]["budget"] == "smoke"
    assert [r["name"] for r in data["results"]] == ["ok", "bad"]
    assert data["results"][1]["passed"] is False


def test_markdown_escapes_table_pipes():
    results = run_claims("smoke", checks=[_check("p", lambda b, c: Verdict(True, summary="a | b"))])
    assert "a \\| b" in render_markdown(results, run_metadata("smoke", 0.0, results))
