"""Claim 3: HydraLM's streaming state has a constant size.

Reference gate (analytic): the state-size formula gives identical bytes at
1K, 1M, 10M and 100M tokens, and a real prefill of 4096 tokens followed by
512 single-token steps keeps the logits finite with the state at that size.

Measured twin: stream at least 1M tokens through the model in chunks (fewer
at the smoke budget), read the state's real tensor bytes at checkpoints and
record the process RSS, which must stay flat.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from hydralm.claims.budgets import Budget
from hydralm.claims.measure import release_free_memory, rss_bytes
from hydralm.claims.runner import Check, CheckContext, Verdict

logger = logging.getLogger(__name__)

RSS_GROWTH_MAX_BYTES = 64 << 20
"""Largest RSS growth from the first to the last checkpoint of the stream.

A dense KV cache of the small test model grows by several hundred MiB over a
million tokens, while allocator noise stays well below this.
"""


def check_analytic(
    budget: Budget,
    ctx: CheckContext,
    *,
    state_bytes_formula: Callable[[int], int] | None = None,
    make_hydra: Callable[[], torch.nn.Module] | None = None,
) -> Verdict:
    """Evaluate the state-size formula at the reference lengths and run a real prefill plus decode."""
    from hydralm.claims import subjects

    torch.manual_seed(0)
    model = (make_hydra or subjects.make_hydra)()
    model.eval()
    formula = state_bytes_formula or subjects.analytic_state_bytes(model.config)
    lengths = list(budget.analytic_stream_lengths)
    formula_bytes = {n: int(formula(n)) for n in lengths}

    ctx.step(0.1, f"prefill of {budget.prefill_tokens:,} tokens")
    vocab_size = model.config.vocab_size
    generator = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, vocab_size, (1, budget.prefill_tokens), generator=generator)  # (1, T)
    with torch.inference_mode():
        output = model(prompt)
        state = output.state
        finite = bool(torch.isfinite(output.logits).all())
        bytes_after_prefill = state.nbytes()
        token = output.logits[:, -1].argmax(dim=-1)  # (1,)
        for step in range(budget.decode_steps):
            if step % 64 == 0:
                ctx.step(0.2 + 0.8 * step / budget.decode_steps, f"decode step {step} of {budget.decode_steps}")
            logits, state = model.step(token, state)  # (1, V)
            finite = finite and bool(torch.isfinite(logits).all())
            token = logits.argmax(dim=-1)
        bytes_after_decode = state.nbytes()

    constant_formula = len(set(formula_bytes.values())) == 1
    reference_bytes = formula_bytes[lengths[0]]
    real_matches = bytes_after_prefill == bytes_after_decode == reference_bytes
    passed = constant_formula and real_matches and finite
    notes = (
        f"State bytes from the formula at {', '.join(f'{n:,}' for n in lengths)} tokens; then a real "
        f"prefill of {budget.prefill_tokens:,} random tokens and {budget.decode_steps} greedy single-token steps."
    )
    if not real_matches:
        notes += (
            f" The real state ({bytes_after_prefill:,} bytes after prefill, {bytes_after_decode:,} after decode) "
            f"differs from the formula ({reference_bytes:,})."
        )
    return Verdict(
        passed=passed,
        thresholds={"state_bytes": "identical at every length", "logits": "finite", "real_state": "equals formula"},
        measured={
            "formula_bytes": {str(n): b for n, b in formula_bytes.items()},
            "real_bytes_after_prefill": bytes_after_prefill,
            "real_bytes_after_decode": bytes_after_decode,
            "prefill_tokens": budget.prefill_tokens,
            "decode_steps": budget.decode_steps,
            "logits_finite": finite,
        },
        notes=notes,
        summary=f"{reference_bytes:,} bytes at every size",
    )


def stream_and_measure(
    model: Any,
    checkpoints: list[int],
    chunk: int,
    ctx: CheckContext,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """Stream random tokens through `model` in chunks, threading the state.

    At each checkpoint (a cumulative token count) record the state's real
    bytes and the process RSS, read after freed memory is returned to the
    OS. Returns the per-checkpoint numbers and whether every logit was finite.
    """
    vocab_size = vocab_size or model.config.vocab_size
    generator = torch.Generator().manual_seed(4)
    total = max(checkpoints)
    targets = sorted(checkpoints)
    state = None
    streamed = 0
    finite = True
    state_bytes: dict[str, int] = {}
    rss: dict[str, int] = {}
    with torch.inference_mode():
        while streamed < total:
            next_target = next(t for t in targets if t > streamed)
            size = min(chunk, next_target - streamed)
            input_ids = torch.randint(0, vocab_size, (1, size), generator=generator)  # (1, C)
            # Only the last position's logits are computed and checked, to keep the stream cheap.
            output = model(input_ids, state=state, logits_to_keep=1)
            state = output.state
            finite = finite and bool(torch.isfinite(output.logits[:, -1]).all())
            del output
            streamed += size
            if streamed in targets:
                state_bytes[str(streamed)] = int(state.nbytes())
                # Return freed blocks first, so the RSS counts live memory and not the
                # allocator's cache of a larger chunk's (or another thread's) freed buffers.
                release_free_memory()
                rss[str(streamed)] = rss_bytes()
                ctx.step(streamed / total, f"streamed {streamed:,} of {total:,} tokens")
    return {"state_bytes": state_bytes, "rss_bytes": rss, "logits_finite": finite}


def judge_stream(stream: dict[str, Any], rss_growth_max: int = RSS_GROWTH_MAX_BYTES) -> tuple[bool, dict[str, Any]]:
    """Apply the constant-state gates to `stream_and_measure` output."""
    sizes = list(stream["state_bytes"].values())
    rss = list(stream["rss_bytes"].values())
    rss_growth = rss[-1] - rss[0]
    checks = {
        "state_bytes_identical": len(set(sizes)) == 1,
        "rss_growth_within_limit": rss_growth <= rss_growth_max,
        "logits_finite": bool(stream["logits_finite"]),
    }
    return all(checks.values()), {"rss_growth_bytes": rss_growth, "checks": checks}


def check_measured(
    budget: Budget,
    ctx: CheckContext,
    *,
    make_hydra: Callable[[], torch.nn.Module] | None = None,
) -> Verdict:
    """Stream the budget's token count through HydraLM and check that its state and RSS stay flat."""
    from hydralm.claims import subjects

    torch.manual_seed(0)
    model = (make_hydra or subjects.make_hydra)()
    model.eval()
    checkpoints = list(budget.stream_checkpoints)
    stream = stream_and_measure(model, checkpoints, budget.stream_chunk, ctx)
    passed, judged = judge_stream(stream)
    return stream_verdict(passed, stream, judged, checkpoints, budget.stream_chunk, "the small HydraLM")


def stream_verdict(
    passed: bool, stream: dict[str, Any], judged: dict[str, Any], checkpoints: list[int], chunk: int, subject: str
) -> Verdict:
    """Build the verdict of a streaming run from `stream_and_measure` and `judge_stream` output."""
    sizes = stream["state_bytes"]
    first, last = str(checkpoints[0]), str(checkpoints[-1])
    growth_mib = judged["rss_growth_bytes"] / 2**20
    notes = (
        f"Streamed {checkpoints[-1]:,} random tokens through {subject} in chunks of {chunk:,}, "
        f"reading state.nbytes() and the process RSS at {', '.join(f'{n:,}' for n in checkpoints)} tokens. "
        f"RSS grew {growth_mib:+.1f} MiB from the first to the last checkpoint."
    )
    failed = [name for name, ok in judged["checks"].items() if not ok]
    if failed:
        notes += " Failed gates: " + ", ".join(failed) + "."
    return Verdict(
        passed=passed,
        thresholds={
            "state_bytes": "identical at every checkpoint",
            "rss_growth_max_bytes": RSS_GROWTH_MAX_BYTES,
            "logits": "finite",
        },
        measured={**stream, **judged, "chunk": chunk},
        notes=notes,
        summary=(
            f"{sizes[first]:,} B at {int(first):,} and {sizes[last]:,} B at {int(last):,} tokens; "
            f"RSS {growth_mib:+.1f} MiB"
        ),
    )


CHECKS = [
    Check(name="constant_state", title="State size formula and real decode", claim=3, kind="analytic", run=check_analytic),
    Check(
        name="constant_state_measured",
        title="Streamed state bytes and RSS",
        claim=3,
        kind="measured",
        run=check_measured,
    ),
]
