"""The claim checks at smoke budget, each run at most once per test session.

Several tests need the verdicts of the real checks at smoke budget: the
library's end-to-end tests read them directly and the diagnostics screen test
runs them through the screen. A full smoke run takes about a minute on a
2-core CPU, so `shared_smoke_checks` returns checks that run the real check
the first time and hand back its verdict afterwards. The runner, the
progress messages and the screen still run every time; only the measuring
inside a check is shared.
"""

from __future__ import annotations

import threading
from typing import Callable

from hydralm.claims import Budget, Check, CheckContext, Verdict, default_checks

_verdicts: dict[str, Verdict] = {}
_lock = threading.Lock()


def _shared(check: Check) -> Check:
    """Return `check` with a `run` that measures once per session at smoke budget."""

    def run(budget: Budget, ctx: CheckContext) -> Verdict:
        if budget.name != "smoke":
            return check.run(budget, ctx)
        with _lock:
            if check.name not in _verdicts:
                _verdicts[check.name] = check.run(budget, ctx)
            ctx.step(1.0, "measured once per test session")
            return _verdicts[check.name]

    return Check(
        name=check.name, title=check.title, claim=check.claim, kind=check.kind, run=run, applies=check.applies
    )


def shared_smoke_checks(extra: Callable[[], list[Check]] | None = None) -> list[Check]:
    """Return the library's checks plus `extra()` checks, each measured once per session at smoke budget."""
    checks = default_checks() + (extra() if extra is not None else [])
    return [_shared(check) for check in checks]
