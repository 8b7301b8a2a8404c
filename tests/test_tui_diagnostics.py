"""The diagnostics screen: the claim checks at smoke budget, details, plots, export and cancel."""

from __future__ import annotations

import time

import pytest

from textual.widgets import DataTable, Label, Markdown

from app.tui.app import HydraChatApp
from app.tui.screens.diagnostics import DiagnosticsScreen

pytest.importorskip("hydralm.claims.drop_in", reason="the claim checks are not all installed")

SIZE = (120, 40)


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.1)


async def open_diagnostics(pilot, app) -> DiagnosticsScreen:
    await pilot.press("f5")
    await wait_for(pilot, lambda: isinstance(app.screen, DiagnosticsScreen), what="the diagnostics screen")
    return app.screen


def rows(screen) -> list[list[str]]:
    table = screen.query_one("#claims", DataTable)
    return [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]


def analytic_gates():
    """The reference gates computed from cost formulas (claims 1, 3 and 4): real checks that take a second."""
    from hydralm.claims import default_checks

    return [check for check in default_checks() if check.kind == "analytic"]


async def test_analytic_gates_pass_with_details_plot_and_export(tmp_path):
    checks = analytic_gates()
    app = HydraChatApp(load_chat_model=False, claim_checks=checks)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_diagnostics(pilot, app)
        await pilot.press("r")
        await wait_for(pilot, lambda: screen.cancel is None and screen.results, timeout=300, what="the run")

        table = rows(screen)
        assert [row[1] for row in table] == [check.title for check in checks]
        assert {row[0] for row in table} == {"1", "3", "4"}
        failed = [row for row in table if "PASS" not in row[4]]
        assert not failed, f"checks that did not pass: {failed}"
        assert all(row[3].strip() for row in table), "a row has no key measurement"
        state = str(screen.query_one("#diagnostics-state", Label).render())
        assert state.startswith(f"done: {len(checks)} of {len(checks)} checks PASS at budget smoke"), state

        # Moving the cursor shows that check's details.
        table_widget = screen.query_one("#claims", DataTable)
        table_widget.focus()
        await pilot.press(*["down"] * (len(table) - 1))
        await pilot.pause(0.2)
        details = screen.query_one("#claim-details", Markdown).source
        assert details.startswith(f"## Claim {screen.results[-1].claim}: {screen.results[-1].title}")
        assert "**Measured**" in details

        # The cost plot has both models, from claim 1's FLOP counts.
        assert set(screen.cost_points) == {"HydraLM", "Transformer"}
        assert all(len(points) >= 2 for points in screen.cost_points.values())

        # Export the Markdown report.
        report = tmp_path / "RESULTS.md"
        screen.query_one("#export-path").value = str(report)
        table_widget.focus()
        await pilot.press("e")
        await wait_for(pilot, report.exists, timeout=10, what="the exported report")
        text = report.read_text(encoding="utf-8")
        assert text.startswith("# HydraLM claim checks")
        assert text.count("**PASS**") == len(table)


def memory_engine_twin():
    """The product's twin of claim 6 on the memory engine.

    The chat-model twins are left out: loading that model takes longer than
    the rest of the smoke run, and tests/test_diagnostics.py runs them.
    """
    from app.diagnostics import app_checks

    return [check for check in app_checks("cpu") if check.name == "memory_engine_recall"]


async def test_smoke_run_passes_all_six_claims():
    from claims_smoke import shared_smoke_checks

    from hydralm.claims import get_budget

    checks = shared_smoke_checks(memory_engine_twin)
    expected = [check for check in sorted(checks, key=lambda c: c.claim) if check.applies(get_budget("smoke"))]
    app = HydraChatApp(load_chat_model=False, claim_checks=checks)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_diagnostics(pilot, app)
        await pilot.press("r")
        await wait_for(pilot, lambda: screen.cancel is None and screen.results, timeout=900, what="the smoke run")

        table = rows(screen)
        assert {row[0] for row in table} == {"1", "2", "3", "4", "5", "6"}
        assert [row[1] for row in table] == [check.title for check in expected]
        failed = [row for row in table if "PASS" not in row[4]]
        assert not failed, f"checks that did not pass: {failed}"
        state = str(screen.query_one("#diagnostics-state", Label).render())
        assert state.startswith(f"done: {len(expected)} of {len(expected)} checks PASS at budget smoke"), state
        assert screen.recall_points, "the recall curve was not measured"
        assert all(0.0 <= top1 <= 1.0 for top1 in screen.recall_points.values())
        assert set(screen.cost_points) == {"HydraLM", "Transformer"}


async def test_cancel_stops_the_run():
    from hydralm.claims import default_checks

    slow = [check for check in default_checks() if check.claim == 2]
    app = HydraChatApp(load_chat_model=False, claim_checks=slow)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_diagnostics(pilot, app)
        await pilot.press("r")
        await wait_for(pilot, lambda: screen.cancel is not None, timeout=10, what="the run to start")
        await pilot.pause(0.5)
        started = time.monotonic()
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.cancel is None, timeout=120, what="the cancelled run")
        assert time.monotonic() - started < 120
        state = str(screen.query_one("#diagnostics-state", Label).render())
        assert state.startswith("cancelled"), state
        assert any("cancelled" in result.notes for result in screen.results)
