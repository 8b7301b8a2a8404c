"""Markdown and JSON reports of a claims run, laid out like a results page."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from hydralm.claims.measure import CHECK_TORCH_THREADS
from hydralm.claims.result import ClaimResult, _jsonable, results_to_json
from hydralm.claims.runner import REFERENCE_CHECKS

CLAIM_TITLES = {
    1: "Linear complexity O(N)",
    2: "Lossless accuracy on MQAR",
    3: "Constant streaming state",
    4: "At least 90% cost reduction at long context",
    5: "Drop-in Transformer replacement",
    6: "Zero-gradient test-time learning",
}

REFERENCE_PAPER_SECONDS = 169
"""Runtime of the reference report (RESULTS.md of the HydraLM research code, budget "paper", CPU)."""


def machine_info() -> dict[str, Any]:
    """Describe the machine a run happened on: CPU, cores, memory, software versions."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "check_torch_threads": CHECK_TORCH_THREADS,
    }
    if hasattr(os, "getloadavg"):
        # Other processes inflate every wall-clock number; the load average shows by how much.
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_metadata(budget: str, seconds: float, results: list[ClaimResult]) -> dict[str, Any]:
    """Collect what a report header shows: budget, date, runtime, machine, pass count."""
    reference = [result for result in results if result.name in REFERENCE_CHECKS]
    return {
        "budget": budget,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(seconds, 1),
        "reference_checks": len(reference),
        "reference_checks_seconds": round(sum(result.seconds for result in reference), 1),
        "passed": sum(result.passed for result in results),
        "checks": len(results),
        "machine": machine_info(),
    }


def render_markdown(results: list[ClaimResult], meta: dict[str, Any]) -> str:
    """Render the results page: a header, the summary table, then one section per claim."""
    machine = meta.get("machine", {})
    passed = sum(result.passed for result in results)
    lines = [
        "# HydraLM claim checks",
        "",
        f"- Budget: `{meta.get('budget', '?')}`",
        f"- Date: {meta.get('date', '?')}",
        f"- Runtime: {meta.get('seconds', 0):.1f} s for {_checks_run(meta, results)}{_reference_runtime(meta)}",
        f"- Machine: {machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} cores, "
        f"{machine.get('memory_gib', '?')} GiB, {machine.get('platform', '?')}, "
        f"Python {machine.get('python', '?')}, torch {machine.get('torch', '?')} ({_threads(machine)})",
        f"- Load average (1 min): {_load_averages(meta, machine)}",
        f"- Result: {passed} of {len(results)} checks PASS",
        "",
        "`analytic` checks evaluate cost formulas; `measured` checks run the models on this machine.",
        "",
    ]
    if meta.get("context"):
        lines += [str(meta["context"]), ""]
    lines += [
        "## Summary",
        "",
        "| # | Claim | Check | Kind | Key measurement | Result | Time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        claim_title = CLAIM_TITLES.get(result.claim, "")
        summary = _table_cell(result.summary or result.notes)
        lines.append(
            f"| {result.claim} | {claim_title} | {result.title} (`{result.name}`) | {result.kind} | "
            f"{summary} | **{result.status}** | {result.seconds:.1f} |"
        )

    for claim in sorted({result.claim for result in results}):
        lines += ["", f"## {claim}. {CLAIM_TITLES.get(claim, 'Other checks')}"]
        for result in (r for r in results if r.claim == claim):
            lines += [
                "",
                f"### {result.title}: {result.status}",
                "",
                f"`{result.name}`, {result.kind}, {result.seconds:.1f} s.",
            ]
            if result.notes:
                lines += ["", result.notes]
            lines += ["", "Thresholds:", "", "```json", _pretty(result.thresholds), "```"]
            lines += ["", "Measured:", "", "```json", _pretty(result.measured), "```"]
    return "\n".join(lines) + "\n"


def _threads(machine: dict[str, Any]) -> str:
    if "check_torch_threads" in machine:
        count = machine["check_torch_threads"]
        return f"{count} torch thread{'' if count == 1 else 's'} per check, {machine.get('torch_threads', '?')} outside"
    return f"{machine.get('torch_threads', '?')} threads"


def _checks_run(meta: dict[str, Any], results: list[ClaimResult]) -> str:
    """Say which checks the runtime covers: all of them, or the selection the run was given."""
    if meta.get("only"):
        count = f"{len(results)} check" if len(results) == 1 else f"{len(results)} checks"
        return f"the {count} selected with `--only {','.join(meta['only'])}`"
    return "all checks"


def _reference_runtime(meta: dict[str, Any]) -> str:
    """Return the reference run's time for comparison, or "" at other budgets or without all six gates.

    The reference run made only the reference gates, so their own time is
    the like-for-like figure; the measured twins come on top.
    """
    if meta.get("budget") != "paper" or meta.get("reference_checks") != len(REFERENCE_CHECKS):
        return ""
    return (
        f"; {meta['reference_checks_seconds']:.1f} s for the {len(REFERENCE_CHECKS)} reference gates alone "
        f"(the reference run, which made only those, took {REFERENCE_PAPER_SECONDS} s on a CPU)"
    )


def _load_averages(meta: dict[str, Any], machine: dict[str, Any]) -> str:
    end = f"{machine.get('load_average_1min', '?')} at the end of the run"
    start = meta.get("load_average_1min_at_start")
    return end if start is None else f"{start} at the start, {end}"


def _table_cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _pretty(data: dict[str, Any]) -> str:
    return json.dumps(_jsonable(data), indent=2, allow_nan=False)


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Return `path` as a Path, or raise `ValueError` if a report cannot be written there.

    The check runs before any claim does, so a wrong path costs nothing.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise ValueError(f"output path {str(target)!r} is a directory; pass a file name such as {str(target / 'RESULTS.md')!r}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(target)!r}: folder {str(parent)!r} does not exist; create it first")
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"cannot write {str(target)!r}: the file is not writable")
    if not target.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {str(target)!r}: folder {str(parent)!r} is not writable")
    return target


def write_reports(
    results: list[ClaimResult],
    meta: dict[str, Any],
    markdown_path: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
) -> None:
    """Write the Markdown page and/or the JSON file, each through a temporary file and rename."""
    if markdown_path is not None:
        _atomic_write(Path(markdown_path), render_markdown(results, meta))
    if json_path is not None:
        _atomic_write(Path(json_path), results_to_json(results, **meta) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
