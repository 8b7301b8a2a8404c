"""Claim 1: HydraLM's forward cost grows linearly with sequence length.

Reference gate (analytic): over 13 log-spaced lengths from 2^10 to 2^22 the
log-log slope of HydraLM's forward FLOPs lies in [0.95, 1.05] while the dense
Transformer's exceeds 1.5.

Measured twin: forward time of both models on this CPU over N = 2^10 ...
2^16 (smaller at the smoke budget). The dense model stops at the first
length whose forward takes longer than the budget's time limit, so its slope
covers the lengths it can run here. Each length is timed by two clocks, wall
time and the CPU time of the thread running the forward (see
`hydralm.claims.measure.Timing`), and the fastest run counts. The gate reads
the CPU-time slopes, because on a shared machine wall time also counts the
time other processes hold the cores. The wall-time slopes are reported too.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from hydralm.claims.budgets import Budget
from hydralm.claims.measure import CHECK_TORCH_THREADS, Timing, loglog_slope, time_call, torch_threads
from hydralm.claims.runner import Check, CheckContext, Verdict

logger = logging.getLogger(__name__)

ANALYTIC_HYDRA_SLOPE = (0.95, 1.05)
ANALYTIC_DENSE_SLOPE_MIN = 1.5
MEASURED_HYDRA_SLOPE = (0.8, 1.2)
"""Wider than the analytic band: measured times carry noise and a fixed
per-call overhead that flattens the slope at short lengths."""
MEASURED_DENSE_SLOPE_MIN = 1.5
MIN_DENSE_POINTS = 3
"""A dense slope from fewer lengths than this is not trusted."""
MIN_CPU_SECONDS_PER_LENGTH = 0.25
"""Short forwards repeat until their CPU time adds up to this, so each point rests on enough work."""

CostFunction = Callable[[int], float]


def check_analytic(
    budget: Budget,
    ctx: CheckContext,
    *,
    hydra_cost: CostFunction | None = None,
    dense_cost: CostFunction | None = None,
) -> Verdict:
    """Fit the log-log slope of forward FLOPs for both models from the cost formulas.

    `hydra_cost(N)` and `dense_cost(N)` return forward FLOPs at length N;
    the defaults are `hydralm.accounting`'s formulas for the matched pair of
    `hydralm.claims.subjects`.
    """
    if hydra_cost is None or dense_cost is None:
        from hydralm.claims import subjects

        default_hydra, default_dense = subjects.analytic_forward_flops()
        hydra_cost = hydra_cost or default_hydra
        dense_cost = dense_cost or default_dense
    lengths = list(budget.analytic_lengths)
    ctx.step(0.2, f"evaluating cost formulas at {len(lengths)} lengths")
    hydra = [float(hydra_cost(n)) for n in lengths]
    dense = [float(dense_cost(n)) for n in lengths]
    hydra_slope = loglog_slope(lengths, hydra)
    dense_slope = loglog_slope(lengths, dense)

    low, high = ANALYTIC_HYDRA_SLOPE
    passed = low <= hydra_slope <= high and dense_slope > ANALYTIC_DENSE_SLOPE_MIN
    return Verdict(
        passed=passed,
        thresholds={"hydra_slope": [low, high], "dense_slope_greater_than": ANALYTIC_DENSE_SLOPE_MIN},
        measured={
            "lengths": lengths,
            "hydra_flops": hydra,
            "dense_flops": dense,
            "hydra_slope": hydra_slope,
            "dense_slope": dense_slope,
        },
        notes=(
            f"Forward FLOPs from the cost formulas at {len(lengths)} log-spaced lengths "
            f"from {lengths[0]:,} to {lengths[-1]:,} tokens; slope of log FLOPs against log N."
        ),
        summary=f"slope {hydra_slope:.3f} vs {dense_slope:.3f}",
    )


def time_forward(
    model: torch.nn.Module,
    lengths: list[int],
    repeats: int,
    seconds_limit: float,
    ctx: CheckContext,
    label: str,
    progress_span: tuple[float, float],
) -> dict[int, Timing]:
    """Time one forward pass of a batch of one sequence at each length.

    Stops after the first length whose forward takes more than
    `seconds_limit` seconds of CPU time, and returns {length: fastest run}
    for the lengths run.
    """
    vocab_size = _vocab_size(model)
    generator = torch.Generator().manual_seed(1)
    times: dict[int, Timing] = {}
    start, end = progress_span
    # One torch thread, so the thread's CPU clock counts all of a forward's work.
    with torch_threads(CHECK_TORCH_THREADS), torch.inference_mode():
        warm_up = torch.randint(0, vocab_size, (1, lengths[0]), generator=generator)
        model(warm_up)
        for index, length in enumerate(lengths):
            ctx.step(start + (end - start) * index / len(lengths), f"{label}: forward at N = {length:,}")
            input_ids = torch.randint(0, vocab_size, (1, length), generator=generator)  # (1, N)
            timing = time_call(lambda: model(input_ids), repeats, MIN_CPU_SECONDS_PER_LENGTH)
            times[length] = timing
            logger.debug(
                "%s forward at N=%d: %.4f s CPU, %.4f s wall", label, length, timing.cpu_seconds, timing.wall_seconds
            )
            if timing.cpu_seconds > seconds_limit:
                break
    return times


def _vocab_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "vocab_size", 256))


def check_measured(
    budget: Budget,
    ctx: CheckContext,
    *,
    make_hydra: Callable[[], torch.nn.Module] | None = None,
    make_dense: Callable[[], torch.nn.Module] | None = None,
) -> Verdict:
    """Time both models' forward pass over the budget's lengths and fit both slopes."""
    from hydralm.claims import subjects

    torch.manual_seed(0)
    hydra_model = (make_hydra or subjects.make_hydra)()
    dense_model = (make_dense or subjects.make_dense)()
    lengths = list(budget.measured_lengths)
    hydra_model.eval()
    dense_model.eval()

    # HydraLM runs every length: its time limit is only a guard against a
    # model that is not linear at all.
    hydra_times = time_forward(
        hydra_model, lengths, budget.timing_repeats, 4 * budget.forward_seconds_limit, ctx, "HydraLM", (0.0, 0.5)
    )
    dense_times = time_forward(
        dense_model, lengths, budget.timing_repeats, budget.forward_seconds_limit, ctx, "Transformer", (0.5, 1.0)
    )

    hydra_slope = _slope(hydra_times, "cpu_seconds")
    dense_slope = _slope(dense_times, "cpu_seconds")
    hydra_wall_slope = _slope(hydra_times, "wall_seconds")
    dense_wall_slope = _slope(dense_times, "wall_seconds")
    common = [n for n in dense_times if n in hydra_times]
    largest = max(common) if common else None
    speedup = dense_times[largest].cpu_seconds / hydra_times[largest].cpu_seconds if largest else float("nan")

    low, high = MEASURED_HYDRA_SLOPE
    complete = len(hydra_times) == len(lengths)
    enough_dense = len(dense_times) >= MIN_DENSE_POINTS
    passed = complete and low <= hydra_slope <= high and enough_dense and dense_slope >= MEASURED_DENSE_SLOPE_MIN
    notes = (
        f"Fastest of at least {budget.timing_repeats} forward passes (batch 1, inference mode) per length on "
        f"this CPU with {torch.get_num_threads()} torch thread(s); a length repeats until its runs add up to "
        f"{MIN_CPU_SECONDS_PER_LENGTH:g} s of CPU time. The slopes are fitted to the CPU time of the thread "
        f"running the forward; the wall-time slopes ({hydra_wall_slope:.2f} vs "
        f"{dense_wall_slope:.2f}) also count time spent waiting for other processes and "
        f"are reported, not gated. The Transformer ran {len(dense_times)} of {len(lengths)} lengths (it stops "
        f"after the first forward over {budget.forward_seconds_limit:g} s of CPU time)."
    )
    if not complete:
        notes += f" HydraLM stopped early at N = {max(hydra_times):,}: one forward took too long."
    if not enough_dense:
        notes += f" Too few Transformer lengths for a slope (need {MIN_DENSE_POINTS})."
    return Verdict(
        passed=passed,
        thresholds={
            "clock": "CPU time of the forward's thread",
            "hydra_slope": [low, high],
            "dense_slope_min": MEASURED_DENSE_SLOPE_MIN,
            "dense_lengths_min": MIN_DENSE_POINTS,
        },
        measured={
            "lengths": lengths,
            "hydra_seconds": _keyed(hydra_times, "cpu_seconds"),
            "dense_seconds": _keyed(dense_times, "cpu_seconds"),
            "hydra_wall_seconds": _keyed(hydra_times, "wall_seconds"),
            "dense_wall_seconds": _keyed(dense_times, "wall_seconds"),
            "hydra_runs": {str(n): t.runs for n, t in hydra_times.items()},
            "dense_runs": {str(n): t.runs for n, t in dense_times.items()},
            "hydra_slope": hydra_slope,
            "dense_slope": dense_slope,
            "hydra_wall_slope": hydra_wall_slope,
            "dense_wall_slope": dense_wall_slope,
            "largest_common_length": largest,
            "dense_over_hydra_time_at_largest": speedup,
            "hydra_parameters": _parameters(hydra_model),
            "dense_parameters": _parameters(dense_model),
        },
        notes=notes,
        summary=f"slope {hydra_slope:.2f} vs {dense_slope:.2f}; {speedup:.1f}x faster at N = {largest:,}"
        if largest
        else f"slope {hydra_slope:.2f}",
    )


def _slope(times: dict[int, Timing], clock: str) -> float:
    """Log-log slope of one clock's times, or NaN with fewer than two lengths."""
    if len(times) < 2:
        return float("nan")
    return loglog_slope(list(times), [getattr(timing, clock) for timing in times.values()])


def _keyed(times: dict[int, Timing], clock: str) -> dict[str, Any]:
    return {str(length): round(getattr(timing, clock), 6) for length, timing in times.items()}


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


CHECKS = [
    Check(name="linear_cost", title="Forward FLOPs slope", claim=1, kind="analytic", run=check_analytic),
    Check(
        name="linear_cost_measured",
        title="Forward time slope",
        claim=1,
        kind="measured",
        run=check_measured,
    ),
]
