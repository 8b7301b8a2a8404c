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
    select_checks,
    write_reports,
)
from hydralm.claims.runner import REFERENCE_CHECKS

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


def test_paper_header_times_reference_gates():
    reference = [_check(name, _passing) for name in REFERENCE_CHECKS]
    results = run_claims("smoke", checks=[*reference, _check("twin", _passing)])
    for seconds, result in enumerate(results, start=1):
        result.seconds = float(seconds)
    meta = run_metadata("paper", 30.0, results)
    assert meta["reference_checks_seconds"] == 21.0  # 1 + 2 + ... + 6; the twin's 7 s left out
    header = render_markdown(results, meta)
    assert "Runtime: 30.0 s for all checks; 21.0 s for the 6 reference gates alone (the reference run" in header

    # Without every reference gate there is no like-for-like figure to show.
    meta = run_metadata("paper", 30.0, results[1:])
    partial = render_markdown(results[1:], meta)
    assert "reference gates alone" not in partial
    assert "169 s" not in partial


def test_select_checks_expands_reference():
    checks = [_check("twin", _passing), *(_check(name, _passing) for name in reversed(REFERENCE_CHECKS))]
    selected = select_checks(checks, SMOKE, ["reference"])
    assert sorted(check.name for check in selected) == sorted(REFERENCE_CHECKS)
    assert [check.name for check in select_checks(checks, SMOKE, ["twin", "drop_in"])] == ["twin", "drop_in"]


def test_select_checks_takes_one_name_as_string():
    checks = [_check("twin", _passing), _check("drop_in", _passing)]
    assert [check.name for check in select_checks(checks, SMOKE, "drop_in")] == ["drop_in"]


def test_select_checks_rejects_check_idle_at_budget():
    paper_only = Check(
        name="paper_only", title="t", claim=2, kind="measured", run=_passing, applies=lambda budget: budget.name == "paper"
    )
    assert select_checks([paper_only], SMOKE) == []
    with pytest.raises(ValueError, match="check paper_only does not run at budget 'smoke'; use --budget paper"):
        select_checks([paper_only], SMOKE, ["paper_only"])
    # The names offered after an unknown one are those that run at the budget.
    with pytest.raises(ValueError, match=r"at budget 'smoke' choose from: reference$"):
        select_checks([paper_only], SMOKE, ["nope"])


def test_markdown_escapes_table_pipes():
    results = run_claims("smoke", checks=[_check("p", lambda b, c: Verdict(True, summary="a | b"))])
    assert "a \\| b" in render_markdown(results, run_metadata("smoke", 0.0, results))


# Each gate broken on purpose


import dataclasses
import time
from types import SimpleNamespace

import torch

from hydralm.baselines.transformer import TransformerLM
from hydralm.claims import (
    constant_state,
    cost_reduction,
    drop_in,
    linear_cost,
    mqar_recall,
    subjects,
    zero_gradient,
)
from hydralm.claims.budgets import MQARSetting
from hydralm.claims.measure import time_call, torch_threads
from hydralm.claims.runner import CheckContext
from hydralm.fact_bank import FactBank

CTX = CheckContext("test")


def _tiny(**changes) -> "object":
    return dataclasses.replace(SMOKE, **changes)


class QuadraticModel(torch.nn.Module):
    """A 'linear' model that secretly scores every pair of positions: O(N^2) per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=256)
        self.embed = torch.nn.Embedding(256, 64)

    def forward(self, input_ids, **kwargs):
        hidden = self.embed(input_ids)  # (B, N, C)
        scores = hidden @ hidden.transpose(1, 2)  # (B, N, N)
        return SimpleNamespace(logits=scores.softmax(-1) @ hidden)


def test_linear_cost_analytic_fails_for_quadratic_formula():
    verdict = linear_cost.check_analytic(SMOKE, CTX, hydra_cost=lambda n: n * n + 100 * n)
    assert verdict.passed is False
    assert verdict.measured["hydra_slope"] > 1.5


def test_linear_cost_measured_fails_for_quadratic_model():
    budget = _tiny(measured_lengths=(512, 1024, 2048, 4096), timing_repeats=2)
    verdict = linear_cost.check_measured(budget, CTX, make_hydra=QuadraticModel, make_dense=QuadraticModel)
    assert verdict.passed is False
    assert verdict.measured["hydra_slope"] > linear_cost.MEASURED_HYDRA_SLOPE[1]


def test_time_call_cpu_clock_skips_waiting():
    # A call that only waits, as a forward does while other processes hold
    # the cores: wall time counts the wait, the thread's CPU clock does not.
    with torch_threads(1):
        timing = time_call(lambda: time.sleep(0.02), repeats=2, min_cpu_seconds=1.0, max_runs=4)
    assert timing.runs == 4
    assert timing.wall_seconds >= 0.02
    assert timing.cpu_seconds < 0.01


class OracleMQAR(torch.nn.Module):
    """Oracle that looks every MQAR query up in the input, so its accuracy is 1.0."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, labels=None, **kwargs):
        B, T = input_ids.shape
        V = self.config.vocab_size
        logits = torch.zeros(B, T, V) + self.unused  # (B, T, V)
        for t in range(1, T):
            # The token after an earlier occurrence of input_ids[:, t] is its value.
            for j in range(0, t - 1):
                match = (input_ids[:, j] == input_ids[:, t]) & (input_ids[:, t] != 0)
                logits[match, t, input_ids[match, j + 1]] = 10.0
        loss = logits.sum() * 0.0 + self.unused.sum() if labels is not None else None
        return SimpleNamespace(logits=logits, loss=loss)


class BiasOnlyMQAR(torch.nn.Module):
    """Ignores its input: the same logits at every position, so it cannot recall."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.bias = torch.nn.Parameter(torch.zeros(vocab_size))

    def forward(self, input_ids, labels=None, **kwargs):
        logits = self.bias.expand(*input_ids.shape, -1)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return SimpleNamespace(logits=logits, loss=loss)


MQAR_TINY = MQARSetting(vocab_size=64, seq_len=16, num_kv_pairs=2, steps=3, eval_examples=64)


def test_mqar_fails_when_hydra_cannot_recall():
    budget = _tiny(mqar=MQAR_TINY)
    verdict = mqar_recall.check_reference(budget, CTX, make_hydra=BiasOnlyMQAR, make_dense=OracleMQAR)
    assert verdict.measured["dense"]["accuracy"] == 1.0
    assert verdict.passed is False


def test_mqar_fails_when_dense_does_not_learn():
    budget = _tiny(mqar=MQAR_TINY)
    verdict = mqar_recall.check_reference(budget, CTX, make_hydra=OracleMQAR, make_dense=BiasOnlyMQAR)
    assert verdict.measured["dense"]["accuracy"] <= mqar_recall.DENSE_ACCURACY_MIN
    assert verdict.passed is False


def test_mqar_harder_setting_reports_hydra_loss_but_passes():
    budget = _tiny(mqar_hard=MQAR_TINY)
    verdict = mqar_recall.check_harder(budget, CTX, make_hydra=BiasOnlyMQAR, make_dense=OracleMQAR)
    assert verdict.passed is True
    assert verdict.measured["hydra_over_dense"] < mqar_recall.RATIO_MIN
    assert "falls short of" in verdict.notes


def test_mqar_harder_stops_at_target():
    # Held-out accuracy is scored every 50 steps: the oracle stops at the first score.
    setting = dataclasses.replace(MQAR_TINY, steps=100, target_accuracy=0.99)
    verdict = mqar_recall.check_harder(_tiny(mqar_hard=setting), CTX, make_hydra=BiasOnlyMQAR, make_dense=OracleMQAR)
    assert verdict.passed is True
    assert verdict.measured["dense"]["steps_trained"] == 50
    assert verdict.measured["dense"]["reached_target"] is True
    assert verdict.measured["hydra"]["steps_trained"] == 100
    assert verdict.measured["hydra"]["reached_target"] is False
    assert "HydraLM trained 100 steps, the Transformer 50" in verdict.notes
    assert "stops once held-out accuracy reaches 0.99" in verdict.notes


def test_mqar_harder_fails_without_dense_learning():
    verdict = mqar_recall.check_harder(_tiny(mqar_hard=MQAR_TINY), CTX, make_hydra=OracleMQAR, make_dense=BiasOnlyMQAR)
    assert verdict.passed is False
    assert "did not learn the task in 3 steps" in verdict.notes
    assert "HydraLM's 1.000 is not compared" in verdict.notes
    assert "reference ratio" not in verdict.notes


def _tiny_dense() -> TransformerLM:
    return TransformerLM.matched_to(subjects.claim_config())


def test_constant_state_analytic_fails_for_growing_state():
    budget = _tiny(prefill_tokens=64, decode_steps=4)
    verdict = constant_state.check_analytic(budget, CTX, make_hydra=_tiny_dense, state_bytes_formula=lambda n: 1000)
    assert verdict.passed is False
    assert verdict.measured["real_bytes_after_decode"] > verdict.measured["real_bytes_after_prefill"]


def test_constant_state_measured_fails_for_growing_state():
    budget = _tiny(stream_checkpoints=(128, 512), stream_chunk=128)
    verdict = constant_state.check_measured(budget, CTX, make_hydra=_tiny_dense)
    assert verdict.passed is False
    assert verdict.measured["checks"]["state_bytes_identical"] is False


def test_constant_state_rss_gate_fails_for_large_growth():
    stream = {"state_bytes": {"1": 10, "2": 10}, "rss_bytes": {"1": 0, "2": 1 << 30}, "logits_finite": True}
    passed, judged = constant_state.judge_stream(stream)
    assert passed is False
    assert judged["checks"]["rss_growth_within_limit"] is False


def test_cost_reduction_analytic_fails_when_memory_grows():
    growing = {"hydra_memory": lambda n: 512 * n, "dense_memory": lambda n: 512 * n}
    verdict = cost_reduction.check_analytic(SMOKE, CTX, costs=growing)
    assert verdict.passed is False
    assert verdict.measured["checks"]["memory_saving_at_131072"] is False
    assert verdict.measured["checks"]["flop_saving_at_131072"] is True


def test_cost_reduction_measured_fails_for_dense_twin():
    budget = _tiny(serve_start_length=1024, serve_max_length=1024, serve_chunk=256, serve_decode_steps=2)
    verdict = cost_reduction.check_measured(budget, CTX, make_hydra=_tiny_dense, make_dense=_tiny_dense)
    assert verdict.passed is False
    assert verdict.measured["checks"]["cache_saving"] is False


def test_drop_in_fails_for_unmatched_size():
    def oversized() -> TransformerLM:
        config = subjects.claim_config()
        return TransformerLM(dataclasses.replace(config, intermediate_size=4 * config.intermediate_size))

    verdict = drop_in.check_drop_in(SMOKE, CTX, make_dense=oversized)
    assert verdict.passed is False
    assert verdict.measured["parameter_ratio"] > drop_in.PARAMETER_RATIO[1]
    assert verdict.measured["checks"]["generate"] is True


class IgnoresOverwrites(FactBank):
    """A memory that keeps the first value written under a key."""

    def memorize(self, keys, values):
        if self.num_writes == 0:
            super().memorize(keys, values)


class LearnsWithGradients(FactBank):
    """A memory whose writes keep the autograd graph of their inputs."""

    def memorize(self, keys, values):
        self.state = self.state + (keys.T @ values)[None] / keys.shape[0]  # (H, K, V)
        self.num_writes += keys.shape[0]


FACTS_TINY = {"facts": 100, "fact_dim": 256, "fact_heads": 1}


def test_zero_gradient_fails_when_overwrites_are_ignored():
    verdict = zero_gradient.check_fact_bank(_tiny(**FACTS_TINY), CTX, make_bank=IgnoresOverwrites)
    assert verdict.passed is False
    assert verdict.measured["overwrite_margin"] < zero_gradient.OVERWRITE_MARGIN_MIN


def test_zero_gradient_fails_when_writes_attach_autograd():
    verdict = zero_gradient.check_fact_bank(_tiny(**FACTS_TINY), CTX, make_bank=LearnsWithGradients)
    assert verdict.passed is False
    assert verdict.measured["attaches_autograd_state"] is True


def test_zero_gradient_passes_for_fact_bank():
    verdict = zero_gradient.check_fact_bank(_tiny(**FACTS_TINY), CTX)
    assert verdict.passed is True
    assert verdict.measured["top1"] >= zero_gradient.TOP1_MIN


# The smoke budget end to end


@pytest.fixture(scope="module")
def smoke_results():
    from claims_smoke import shared_smoke_checks

    return run_claims("smoke", checks=shared_smoke_checks())


def test_smoke_budget_covers_six_claims(smoke_results):
    assert sorted({r.claim for r in smoke_results}) == [1, 2, 3, 4, 5, 6]
    assert {r.kind for r in smoke_results} == {"analytic", "measured"}


@pytest.mark.parametrize(
    "name",
    [
        "linear_cost",
        "linear_cost_measured",
        "mqar_recall",
        "constant_state",
        "constant_state_measured",
        "cost_reduction",
        "cost_reduction_measured",
        "drop_in",
        "zero_gradient",
    ],
)
def test_smoke_budget_check_passes(smoke_results, name):
    result = next(r for r in smoke_results if r.name == name)
    assert result.passed, f"{name}: {result.notes} {result.measured}"


def test_smoke_budget_skips_harder_mqar(smoke_results):
    assert "mqar_recall_hard" not in {r.name for r in smoke_results}
