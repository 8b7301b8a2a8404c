"""Run claim checks with progress reporting and cooperative cancellation.

A check is a plain function `run(budget, ctx) -> Verdict`. The runner runs
it with `CHECK_TORCH_THREADS` torch threads, times it, turns an exception into a FAIL result carrying the error text, and turns
a cancellation into a FAIL result whose notes read "cancelled". It never
raises for a failing check, so a UI can always show one row per check.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from hydralm.claims.budgets import BUDGETS, Budget, get_budget
from hydralm.claims.measure import CHECK_TORCH_THREADS, torch_threads
from hydralm.claims.result import KINDS, ClaimResult

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float, str], None]
"""`progress(check_name, fraction, message)` with `fraction` in [0, 1]."""


class CheckCancelled(Exception):
    """Raised inside a check when its cancel flag is set between two steps."""


@dataclass
class Verdict:
    """Outcome of a check function: its gate, its numbers and the decision."""

    passed: bool
    thresholds: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    summary: str = ""
    """The key measurement, one short line for the summary table."""


class CheckContext:
    """Handle a check uses to report progress and to notice cancellation."""

    def __init__(
        self,
        name: str,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.name = name
        self._progress = progress
        self._cancel = cancel

    def step(self, fraction: float, message: str) -> None:
        """Report progress, then raise `CheckCancelled` if cancel is set."""
        self.raise_if_cancelled()
        if self._progress is not None:
            self._progress(self.name, min(max(float(fraction), 0.0), 1.0), message)

    def raise_if_cancelled(self) -> None:
        """Raise `CheckCancelled` if the cancel flag is set."""
        if self._cancel is not None and self._cancel.is_set():
            raise CheckCancelled(self.name)

    @property
    def cancelled(self) -> bool:
        """Whether the cancel flag is set."""
        return self._cancel is not None and self._cancel.is_set()


@dataclass(frozen=True)
class Check:
    """One gate of one claim: what the runner calls and how it is labelled."""

    name: str
    title: str
    claim: int
    kind: str
    run: Callable[[Budget, CheckContext], Verdict]
    applies: Callable[[Budget], bool] = lambda budget: True
    """Whether the check runs at a budget (a check too costly for smoke skips it)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"check {self.name!r}: invalid kind {self.kind!r}; expected one of {KINDS}")
        if not 1 <= self.claim <= 6:
            raise ValueError(f"check {self.name!r}: claim must be 1 to 6, got {self.claim}")


def run_check(
    check: Check,
    budget: Budget,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ClaimResult:
    """Run one check and return its result.

    An exception raised by the check becomes a FAIL result carrying the error
    text. Only an error raised by `progress` after the check ends escapes.
    """
    ctx = CheckContext(check.name, progress, cancel)
    start = time.perf_counter()
    try:
        ctx.raise_if_cancelled()
        with torch_threads(CHECK_TORCH_THREADS):
            verdict = check.run(budget, ctx)
        if not isinstance(verdict, Verdict):
            raise TypeError(f"check {check.name!r} returned {type(verdict).__name__}, expected Verdict")
        passed, thresholds, measured = bool(verdict.passed), verdict.thresholds, verdict.measured
        notes, summary = verdict.notes, verdict.summary
    except CheckCancelled:
        passed, thresholds, measured, notes, summary = False, {}, {}, "cancelled", "cancelled"
    except Exception as error:  # noqa: BLE001 - a failing check becomes a FAIL row, by contract
        logger.warning("check %s raised %s: %s", check.name, type(error).__name__, error)
        where = _error_location(error)
        passed, thresholds, measured = False, {}, {}
        notes = f"error: {type(error).__name__}: {error}{where}"
        summary = f"error: {type(error).__name__}"
    seconds = time.perf_counter() - start
    if progress is not None and notes != "cancelled":
        progress(check.name, 1.0, "done")
    return ClaimResult(
        name=check.name,
        title=check.title,
        passed=passed,
        kind=check.kind,
        thresholds=thresholds,
        measured=measured,
        notes=notes,
        seconds=round(seconds, 3),
        claim=check.claim,
        summary=summary,
    )


def _error_location(error: BaseException) -> str:
    """Return " (at file.py:line)" for the innermost frame of this project, or "" if none."""
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    own = [f for f in frames if "/hydralm/" in f.filename or "/app/" in f.filename] or frames
    if not own:
        return ""
    frame = own[-1]
    return f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"


REFERENCE_CHECKS = ("linear_cost", "mqar_recall", "constant_state", "cost_reduction", "drop_in", "zero_gradient")
"""The checks that apply the reference report's six gates; the others are the measured twins this report adds."""

REFERENCE_SELECTION = "reference"
"""The name that stands for all of `REFERENCE_CHECKS` in a selection of checks."""


def select_checks(checks: Iterable[Check], budget: Budget, only: Iterable[str] | str | None = None) -> list[Check]:
    """Return the checks that run at `budget`, ordered by claim number.

    With `only` (check names, or one name as a string), keep the checks it
    names; "reference" names every check in `REFERENCE_CHECKS`. Raises
    `ValueError` for a name no check has, or for a check that does not run
    at `budget`, before anything runs.
    """
    ordered = sorted(checks, key=lambda check: check.claim)
    if only is not None:
        selection: dict[str, None] = {}  # a dict keeps the names in order, each once
        for name in [only] if isinstance(only, str) else only:
            selection.update(dict.fromkeys(REFERENCE_CHECKS if name == REFERENCE_SELECTION else (name,)))
        known = {check.name for check in ordered}
        unknown = [name for name in selection if name not in known]
        if unknown:
            runnable = [check.name for check in ordered if check.applies(budget)]
            legal = ", ".join([REFERENCE_SELECTION, *runnable])
            raise ValueError(f"unknown check {', '.join(unknown)}; at budget {budget.name!r} choose from: {legal}")
        ordered = [check for check in ordered if check.name in selection]
        for check in ordered:
            if not check.applies(budget):
                elsewhere = [name for name, other in BUDGETS.items() if check.applies(other)]
                hint = f"use --budget {' or '.join(elsewhere)}" if elsewhere else "no budget runs it"
                raise ValueError(f"check {check.name} does not run at budget {budget.name!r}; {hint}")
    skipped = [check.name for check in ordered if not check.applies(budget)]
    if skipped:
        logger.info("checks not run at budget %s: %s", budget.name, ", ".join(skipped))
    return [check for check in ordered if check.applies(budget)]


def run_claims(
    budget: str = "smoke",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    extra_checks: Iterable[Check] = (),
    on_result: Callable[[ClaimResult], None] | None = None,
    checks: Iterable[Check] | None = None,
    only: Iterable[str] | str | None = None,
) -> list[ClaimResult]:
    """Run the six claims' checks at `budget` ("smoke" or "paper").

    Args:
        budget: the name of a budget in `BUDGETS`; an unknown name raises
            `ValueError` listing the legal ones before any check runs.
        progress: called as `progress(check_name, fraction, message)`.
        cancel: checked between steps; once set, the running check and every
            later one report FAIL with notes "cancelled".
        extra_checks: more checks (for example the app's twins on the chat
            model), run after the built-in checks of the same claim.
        on_result: called with each result as soon as its check finishes.
        checks: replaces the built-in checks (tests use it).
        only: names of the checks to run, see `select_checks`; None runs all.

    Returns:
        One `ClaimResult` per check, ordered by claim number.
    """
    selected = get_budget(budget)
    if checks is None:
        from hydralm.claims import default_checks

        checks = default_checks()
    ordered = select_checks([*checks, *extra_checks], selected, only)
    results = []
    for check in ordered:
        logger.info("running check %s at budget %s", check.name, selected.name)
        result = run_check(check, selected, progress, cancel)
        logger.info("check %s: %s in %.1f s", check.name, result.status, result.seconds)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
