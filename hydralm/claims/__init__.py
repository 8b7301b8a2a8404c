"""The six headline claims of HydraLM as runnable checks.

Each claim has its reference gate (the sizes and thresholds of the original
research report, kept for parity) and a measured twin that runs the models on
this machine. `run_claims` runs them all at a budget and returns one
`ClaimResult` per check; `write_reports` writes the Markdown and JSON pages.

Example:
    >>> from hydralm.claims import run_claims
    >>> results = run_claims("smoke", progress=lambda name, f, msg: None)
    >>> all(result.passed for result in results)
    True
"""

from __future__ import annotations

from hydralm.claims.budgets import BUDGETS, Budget, MQARSetting, get_budget
from hydralm.claims.report import check_writable, render_markdown, run_metadata, write_reports
from hydralm.claims.result import ClaimResult, results_to_json
from hydralm.claims.runner import (
    REFERENCE_CHECKS,
    Check,
    CheckCancelled,
    CheckContext,
    Verdict,
    run_check,
    run_claims,
    select_checks,
)

__all__ = [
    "BUDGETS",
    "REFERENCE_CHECKS",
    "Budget",
    "Check",
    "CheckCancelled",
    "CheckContext",
    "ClaimResult",
    "MQARSetting",
    "Verdict",
    "check_writable",
    "default_checks",
    "get_budget",
    "render_markdown",
    "results_to_json",
    "run_check",
    "run_claims",
    "run_metadata",
    "select_checks",
    "write_reports",
]


def default_checks() -> list[Check]:
    """Return the library's checks for all six claims, in claim order."""
    from hydralm.claims import (
        constant_state,
        cost_reduction,
        drop_in,
        linear_cost,
        mqar_recall,
        zero_gradient,
    )

    modules = (linear_cost, mqar_recall, constant_state, cost_reduction, drop_in, zero_gradient)
    return [check for module in modules for check in module.CHECKS]
