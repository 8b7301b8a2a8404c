"""The diagnostics screen: run the six claim checks, read each result, see the curves."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Markdown, ProgressBar, RadioButton, RadioSet
from textual_plotext import PlotextPlot

from app.tui.services import MissingPart, error_text, import_part
from app.tui.widgets.status_bar import StatusBar

RECALL_CURVE_FACTS = (64, 128, 256, 512, 1024, 2048)
"""Numbers of stored facts at which the recall curve is measured when no check reports one."""
RECALL_CURVE_WIDTH = 128
"""Key and value width of the fact bank the recall curve is measured on.

The claim-6 check uses width 1024, where recall stays at 1.0 up to about 4,096
facts and each point takes tens of seconds on a laptop CPU. At width 128 the
same fall-off shows at an eighth of the facts, within seconds.
"""


class DiagnosticsScreen(Screen):
    """Run the claim checks in a worker and show PASS/FAIL, details and plots.

    | Key    | Action |
    |--------|--------|
    | r      | Run the checks at the chosen budget. |
    | escape | Cancel the run; the running check and later ones report FAIL "cancelled". |
    | e      | Export the Markdown report to the path in the export field. |
    """

    BINDINGS = [
        Binding("r", "run_checks", "Run"),
        Binding("escape", "cancel_checks", "Cancel run"),
        Binding("e", "export_report", "Export report"),
    ]

    class Progress(Message):
        """Progress of check `name`: `fraction` of it done, with a short message."""

        def __init__(self, name: str, fraction: float, text: str) -> None:
            super().__init__()
            self.name = name
            self.fraction = fraction
            self.text = text

    class CheckFinished(Message):
        """One check returned its result."""

        def __init__(self, result: Any) -> None:
            super().__init__()
            self.result = result

    class RunFinished(Message):
        """Every check ran, or the run failed before any check with `error`."""

        def __init__(self, seconds: float, recall_curve: dict[int, float], error: str | None) -> None:
            super().__init__()
            self.seconds = seconds
            self.recall_curve = recall_curve
            self.error = error

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.results: list[Any] = []
        """Results of the last run, in the order they finished."""
        self.budget = "smoke"
        self.seconds = 0.0
        self.cancel: threading.Event | None = None
        """Set to stop the running checks; None when none run."""
        self.cost_points: dict[str, list[tuple[int, float]]] = {}
        """(sequence length, cost) per model, as plotted."""
        self.recall_points: dict[int, float] = {}
        """Top-1 recall per number of stored facts, as plotted."""
        self._check_names: list[str] = []

    def on_unmount(self) -> None:
        # Stop the background work when the app closes, so the process can exit.
        if self.cancel is not None:
            self.cancel.set()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="diagnostics-controls"):
            with RadioSet(id="budget"):
                yield RadioButton("smoke (about a minute)", value=True, id="budget-smoke")
                yield RadioButton("paper (reference sizes)", id="budget-paper")
            yield Button("Run (r)", id="run", variant="primary")
            yield Button("Cancel (esc)", id="cancel", variant="error", disabled=True)
            yield Input("hydra-chat-diagnostics.md", placeholder="report path", id="export-path")
            yield Button("Export (e)", id="export", disabled=True)
        yield Label("Choose a budget and press r.", id="diagnostics-state")
        yield ProgressBar(total=1, id="claims-progress")
        with Horizontal(id="diagnostics-body"):
            yield DataTable(id="claims", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="claim-details-pane"):
                yield Markdown("Select a check to see its thresholds and measurements.", id="claim-details")
        with Horizontal(id="plots"):
            yield PlotextPlot(id="cost-plot")
            yield PlotextPlot(id="recall-plot")
        yield StatusBar()
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#claims", DataTable)
        table.add_columns("claim", "check", "kind", "key measurement", "result", "seconds")
        for plot_id, title in (("#cost-plot", "cost vs sequence length"), ("#recall-plot", "recall vs stored facts")):
            plt = self.query_one(plot_id, PlotextPlot).plt
            plt.title(f"{title}: run the checks")

    # -- running ----------------------------------------------------------------

    @on(Button.Pressed, "#run")
    def action_run_checks(self) -> None:
        if self.cancel is not None:
            self.notify("The checks are already running.", severity="warning")
            return
        self.budget = "paper" if self.query_one("#budget-paper", RadioButton).value else "smoke"
        self.results = []
        self.cost_points = {}
        self.recall_points = {}
        self._check_names = []
        self.query_one("#claims", DataTable).clear()
        self.query_one("#claims-progress", ProgressBar).update(total=1, progress=0)
        self.query_one("#run", Button).disabled = True
        self.query_one("#cancel", Button).disabled = False
        self.query_one("#export", Button).disabled = True
        self._set_state(f"Running the checks at budget {self.budget} …")
        self.cancel = threading.Event()
        self.run_checks(self.budget, self.cancel)

    @work(thread=True, exclusive=True, group="diagnostics")
    def run_checks(self, budget: str, cancel: threading.Event) -> None:
        started = time.perf_counter()
        try:
            library = import_part("hydralm.claims", "The claim checks")
            selected = self.app.claim_checks
            if selected is None:
                selected = library.default_checks() + _app_checks(self.app.services.device or "auto")
            ordered = sorted(selected, key=lambda check: check.claim)
            self._check_names = [check.name for check in ordered]

            def progress(name: str, fraction: float, text: str) -> None:
                self.post_message(self.Progress(name, fraction, text))

            def on_result(result: Any) -> None:
                self.post_message(self.CheckFinished(result))

            results = library.run_claims(budget, progress=progress, cancel=cancel, on_result=on_result, checks=ordered)
            curve = {} if cancel.is_set() else recall_curve(results)
        except Exception as error:  # noqa: BLE001 - checks never raise; this is a missing or broken library
            self.post_message(self.RunFinished(0.0, {}, error_text(error)))
            return
        self.post_message(self.RunFinished(time.perf_counter() - started, curve, None))

    @on(Progress)
    def show_progress(self, event: Progress) -> None:
        names = self._check_names
        index = names.index(event.name) if event.name in names else len(self.results)
        total = max(len(names), 1)
        self.query_one("#claims-progress", ProgressBar).update(total=total, progress=index + event.fraction)
        self._set_state(f"[{index + 1}/{total}] {event.name}: {event.text}")

    @on(CheckFinished)
    def show_result(self, event: CheckFinished) -> None:
        result = event.result
        self.results.append(result)
        table = self.query_one("#claims", DataTable)
        status = "[b green]PASS[/]" if result.passed else "[b red]FAIL[/]"
        table.add_row(
            str(result.claim),
            result.title,
            result.kind,
            result.summary or result.notes[:60],
            status,
            f"{result.seconds:.1f}",
            key=result.name,
        )
        if len(self.results) == 1:
            self.show_details(result)
        if result.claim == 1:
            self.plot_cost()

    @on(RunFinished)
    def finish_run(self, event: RunFinished) -> None:
        cancelled = self.cancel is not None and self.cancel.is_set()
        self.cancel = None
        self.seconds = event.seconds
        self.query_one("#run", Button).disabled = False
        self.query_one("#cancel", Button).disabled = True
        if event.error is not None:
            self._set_state(f"The checks could not run: {event.error}", error=True)
            return
        self.query_one("#export", Button).disabled = not self.results
        passed = sum(1 for result in self.results if result.passed)
        verdict = "cancelled" if cancelled else "done"
        self._set_state(
            f"{verdict}: {passed} of {len(self.results)} checks PASS at budget {self.budget} in {event.seconds:.0f} s."
        )
        self.query_one("#claims-progress", ProgressBar).update(total=1, progress=1)
        if event.recall_curve:
            self.plot_recall(event.recall_curve)

    @on(Button.Pressed, "#cancel")
    def action_cancel_checks(self) -> None:
        if self.cancel is not None:
            self.cancel.set()
            self._set_state("Cancelling …")

    def _set_state(self, text: str, error: bool = False) -> None:
        label = self.query_one("#diagnostics-state", Label)
        label.update(text)
        label.set_class(error, "-error")

    # -- details and plots ------------------------------------------------------

    @on(DataTable.RowHighlighted, "#claims")
    def select_result(self, event: DataTable.RowHighlighted) -> None:
        name = event.row_key.value if event.row_key is not None else None
        result = next((result for result in self.results if result.name == name), None)
        if result is not None:
            self.show_details(result)

    def show_details(self, result: Any) -> None:
        """Show one check's notes, thresholds and measurements."""
        text = "\n".join(
            [
                f"## Claim {result.claim}: {result.title} — {result.status}",
                "",
                f"`{result.name}`, {result.kind}, {result.seconds:.1f} s",
                "",
                result.notes or "",
                "",
                "**Thresholds**",
                "",
                "```json",
                json.dumps(result.thresholds, indent=2, default=str),
                "```",
                "",
                "**Measured**",
                "",
                "```json",
                json.dumps(result.measured, indent=2, default=str),
                "```",
            ]
        )
        self.query_one("#claim-details", Markdown).update(text)

    def plot_cost(self) -> None:
        """Plot forward cost against sequence length, log-log, for HydraLM and the Transformer."""
        series = cost_series(self.results)
        if not series:
            return
        plt = self.query_one("#cost-plot", PlotextPlot).plt
        plt.clear_data()
        plt.clear_figure()
        unit = series.pop("unit")
        self.cost_points = series
        for label, points in series.items():
            xs = [math.log10(length) for length, _ in points]
            ys = [math.log10(value) for _, value in points]
            plt.plot(xs, ys, label=label, marker="braille")
        plt.title(f"forward cost vs sequence length (log10 {unit} vs log10 N)")
        plt.xlabel("log10 N (tokens)")
        self.query_one("#cost-plot", PlotextPlot).refresh()

    def plot_recall(self, curve: dict[int, float]) -> None:
        """Plot top-1 recall against the number of stored facts."""
        self.recall_points = curve
        plt = self.query_one("#recall-plot", PlotextPlot).plt
        plt.clear_data()
        plt.clear_figure()
        facts = sorted(curve)
        plt.plot([math.log2(count) for count in facts], [curve[count] for count in facts], marker="braille", label="top-1")
        plt.ylim(0, 1.05)
        plt.title(f"fact bank (width {RECALL_CURVE_WIDTH}): top-1 recall vs stored facts")
        plt.xlabel("log2 facts")
        self.query_one("#recall-plot", PlotextPlot).refresh()

    # -- export -----------------------------------------------------------------

    @on(Button.Pressed, "#export")
    def action_export_report(self) -> None:
        if not self.results or self.cancel is not None:
            self.notify("Run the checks to the end before exporting.", severity="warning")
            return
        claims = import_part("hydralm.claims", "The claim checks")
        path_text = self.query_one("#export-path", Input).value.strip()
        try:
            path = claims.check_writable(path_text or "hydra-chat-diagnostics.md")
            meta = claims.run_metadata(self.budget, self.seconds, self.results)
            claims.write_reports(self.results, meta, markdown_path=path)
        except (ValueError, OSError) as error:
            self.notify(f"Export failed: {error}", severity="error")
            return
        self.notify(f"Report written to {Path(path).resolve()}")


def _app_checks(device: str) -> list[Any]:
    """Return the product's twins of the claims (memory engine, chat model), or none when missing."""
    try:
        diagnostics = import_part("app.diagnostics", "The diagnostics")
    except MissingPart:
        return []
    return diagnostics.app_checks(device)


def cost_series(results: list[Any]) -> dict[str, Any]:
    """Pick (N, cost) points per model from the claim-1 results: measured CPU seconds when present, else FLOPs."""
    for result in results:
        measured = result.measured
        if result.claim == 1 and "hydra_seconds" in measured and "dense_seconds" in measured:
            return {
                "unit": "CPU seconds",
                "HydraLM": _points(measured["hydra_seconds"]),
                "Transformer": _points(measured["dense_seconds"]),
            }
    for result in results:
        measured = result.measured
        if result.claim == 1 and "hydra_flops" in measured and "dense_flops" in measured:
            lengths = measured["lengths"]
            return {
                "unit": "FLOPs",
                "HydraLM": [(n, f) for n, f in zip(lengths, measured["hydra_flops"]) if f > 0],
                "Transformer": [(n, f) for n, f in zip(lengths, measured["dense_flops"]) if f > 0],
            }
    return {}


def _points(values: dict[str, float]) -> list[tuple[int, float]]:
    points = [(int(length), float(value)) for length, value in values.items() if float(value) > 0]
    return sorted(points)


def recall_curve(results: list[Any]) -> dict[int, float]:
    """Return top-1 recall per number of stored facts.

    A claim-6 check that reports `recall_by_facts` is used as it is. Otherwise
    the curve is measured here on the library's fact bank, with random keys
    and values, at `RECALL_CURVE_WIDTH` and that check's head count.
    """
    for result in results:
        curve = result.measured.get("recall_by_facts") if result.claim == 6 else None
        if curve:
            return {int(count): float(top1) for count, top1 in curve.items()}
    reference = next((result for result in results if result.claim == 6 and "heads" in result.measured), None)
    if reference is None:
        return {}

    import torch

    from hydralm.fact_bank import FactBank, top1_accuracy

    width, heads = RECALL_CURVE_WIDTH, int(reference.measured["heads"])
    generator = torch.Generator().manual_seed(0)
    curve = {}
    for count in RECALL_CURVE_FACTS:
        keys = torch.randn(count, width, generator=generator)  # (N, K)
        values = torch.randn(count, width, generator=generator)  # (N, V)
        bank = FactBank(width, width, heads)
        bank.memorize(keys, values)
        curve[count] = float(top1_accuracy(bank.recall(keys), values, torch.arange(count)))
    return curve
