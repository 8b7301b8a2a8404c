"""The `hydra-chat diagnostics` command: the six claim checks plus the product's twins.

The library (`hydralm.claims`) checks the claims on small models it builds
itself. This module adds the twins that need the product:

- claims 3 and 5 on the default chat model (SmolLM2-135M-Instruct in HydraLM
  blocks), when its weights package is installed. Its state keeps the same
  size while tokens stream past the window. Its parameter count equals the
  Llama original's in the GGUF file, and transformers' `generate` runs it.
- claim 6 with the memory engine itself (its key features, value codes,
  delta-rule state and log) on the sentences of the evaluation fact set.

`run_diagnostics` checks the budget and the output paths before any work,
prints one line per check as it finishes, writes the Markdown and JSON
reports and returns the exit status (0 when every check passes, else 1).

Example:
    hydra-chat diagnostics --budget paper --out RESULTS.md --json results.json
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import torch

from hydralm.claims import (
    Budget,
    Check,
    CheckContext,
    ClaimResult,
    Verdict,
    check_writable,
    default_checks,
    get_budget,
    run_claims,
    run_metadata,
    select_checks,
    write_reports,
)

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1

MEMORY_TOP1_MIN = 0.9
FACTS_FILE = "facts_dev.jsonl"


# ---------------------------------------------------------------------------
# Request validation


def validate_request(
    budget: str,
    out: str | Path | None,
    json_path: str | Path | None,
    only: Sequence[str] | None = None,
    checks: list[Check] | None = None,
) -> tuple[Budget, Path | None, Path | None]:
    """Check the budget name, the selected checks and both output paths before any work starts.

    `checks` is every check the run could make (default: the library's and
    the app's); `only` names those to run, as `hydralm.claims.select_checks` reads it.

    Raises:
        ValueError: an unknown budget (listing the legal ones), an unknown
            check or one that does not run at the budget, an output path
            that cannot be written, or the same file for both reports.
    """
    selected = get_budget(budget)
    if only is not None:
        if checks is None:
            checks = [*default_checks(), *app_checks()]
            names = set([only] if isinstance(only, str) else only)
            missing = sorted(names & set(CHAT_MODEL_CHECKS) - {check.name for check in checks})
            if missing:
                from app.chat_model import INSTALL_HINT

                raise ValueError(
                    f"check {', '.join(missing)} needs the default chat model, whose weights are not installed; "
                    f"{INSTALL_HINT}"
                )
        select_checks(checks, selected, only)
    markdown = check_writable(out) if out is not None else None
    json_file = check_writable(json_path) if json_path is not None else None
    if markdown is not None and json_file is not None and markdown.resolve() == json_file.resolve():
        raise ValueError(f"--out and --json both name {str(markdown)!r}; give the two reports different files")
    return selected, markdown, json_file


# ---------------------------------------------------------------------------
# The default chat model's twins


class ChatModelLoader:
    """Load the default chat model on first use, once per window size, for the checks that share it."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._models: dict[int | None, Any] = {}
        self._lock = threading.Lock()

    def get(self, window: int | None = None) -> Any:
        """Return the loaded `app.chat_model.ChatModel`, with `window` or the default window."""
        with self._lock:
            if window not in self._models:
                from app.chat_model import load_chat_model

                options = {} if window is None else {"window": window}
                self._models[window] = load_chat_model(device=self.device, **options)
            return self._models[window]


def check_chat_state(budget: Budget, ctx: CheckContext, *, loader: ChatModelLoader) -> Verdict:
    """Stream tokens past the chat model's window and check its state bytes and RSS stay flat."""
    from hydralm.claims.constant_state import judge_stream, stream_and_measure, stream_verdict

    ctx.step(0.0, "loading the default chat model")
    chat = loader.get(budget.chat_window)
    checkpoints = list(budget.chat_stream_checkpoints)
    stream = stream_and_measure(chat.model, checkpoints, budget.chat_stream_chunk, ctx)
    passed, judged = judge_stream(stream)
    config = chat.model.config
    verdict = stream_verdict(
        passed, stream, judged, checkpoints, budget.chat_stream_chunk, f"the default chat model ({chat.name})"
    )
    span = config.sliding_window + config.num_sink_tokens
    verdict.notes += (
        f" The model attends to {config.sliding_window:,} window tokens plus {config.num_sink_tokens} sinks, "
        f"so the stream passes the window after {span:,} tokens."
    )
    if budget.chat_window is not None:
        verdict.notes += f" This budget shortens the window to {budget.chat_window} tokens to pass it sooner."
    verdict.measured["window_plus_sinks"] = span
    return verdict


def gguf_parameter_count(path: Path) -> int:
    """Return the number of weights stored in a GGUF file (all tensors, quantised or not)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return sum(int(tensor.n_elements) for tensor in reader.tensors)


def check_chat_drop_in(budget: Budget, ctx: CheckContext, *, loader: ChatModelLoader) -> Verdict:
    """Compare the chat model's parameters with the Llama original and run transformers' `generate`."""
    from app.chat_model import find_gguf
    from hydralm.claims.drop_in import greedy_by_steps, hf_generate, parameter_count

    # The budget's window (if any) changes nothing here, because the prompt is
    # shorter than any window; sharing it saves a second load.
    ctx.step(0.0, "loading the default chat model")
    chat = loader.get(budget.chat_window)
    model = chat.model
    gguf_path = find_gguf()
    ctx.step(0.3, "counting the GGUF weights")
    original = gguf_parameter_count(gguf_path)
    converted = parameter_count(model)

    ctx.step(0.5, "generate through transformers")
    messages = [{"role": "user", "content": "Name one planet of the solar system."}]
    prompt = torch.tensor([chat.apply_chat_template(messages)], device=chat.device)  # (1, T)
    generated = hf_generate(model, prompt, budget.generate_new_tokens)
    ctx.step(0.8, "greedy step loop")
    reference = greedy_by_steps(model, prompt, budget.generate_new_tokens)
    matches = generated.shape == reference.shape and torch.equal(generated, reference)
    text = chat.tokenizer.decode(generated[0, prompt.shape[1] :].tolist())

    checks = {"parameters_equal": original == converted, "generate_matches_step_loop": bool(matches)}
    failed = [name for name, ok in checks.items() if not ok]
    notes = (
        f"{chat.name} imported into HydraLM sliding-window attention blocks. The original's count is the "
        f"number of weights in {gguf_path.name}; `generate` ran greedy for {budget.generate_new_tokens} "
        f"tokens on a chat prompt and was compared with a manual step loop."
    )
    if failed:
        notes += " Failed gates: " + ", ".join(failed) + "."
    return Verdict(
        passed=not failed,
        thresholds={"parameters": "equal to the GGUF original", "generate": "tokens equal to the step loop"},
        measured={
            "original_parameters": original,
            "hydra_parameters": converted,
            "prompt_tokens": int(prompt.shape[1]),
            "generated_text": text,
            "checks": checks,
        },
        notes=notes,
        summary=f"{converted:,} parameters ({'=' if original == converted else '!='} original), generate "
        f"{'ok' if matches else 'FAILED'}",
    )


# ---------------------------------------------------------------------------
# The memory engine's twin


def load_facts(limit: int) -> list[dict[str, Any]]:
    """Read the first `limit` fact records of the evaluation set."""
    from app.paths import eval_dir

    path = eval_dir() / FACTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"evaluation facts not found at {path}; set HYDRA_EVAL_DIR to the folder with {FACTS_FILE}")
    facts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("kind") == "fact":
                facts.append(record)
                if len(facts) == limit:
                    break
    if len(facts) < 2:
        raise ValueError(f"{path} has {len(facts)} fact records; the check needs at least 2")
    return facts


def check_memory_recall(
    budget: Budget,
    ctx: CheckContext,
    *,
    open_memory: Callable[[Path], Any] | None = None,
) -> Verdict:
    """Teach real facts to a fresh memory, ask paraphrased questions, overwrite every fact, ask again.

    Runs the memory engine itself (`app.memory.engine.Memory`) in a
    temporary folder: its hashed key features, value codes, delta-rule
    state and SQLite log. `open_memory(folder)` replaces the engine in tests.
    """
    import tempfile

    if open_memory is None:
        from app.memory.engine import Memory

        open_memory = Memory.open
    facts = load_facts(budget.real_facts)
    questions = [(index, question) for index, fact in enumerate(facts) for question in fact["questions"]]

    with tempfile.TemporaryDirectory(prefix="hydra-diagnostics-") as folder:
        memory = open_memory(Path(folder))
        try:
            bytes_before = memory.state_nbytes()
            ctx.step(0.05, f"teaching {len(facts)} facts")
            for fact in facts:
                memory.teach(fact["subject"], fact["value"], source="diagnostics")
            attached = _attaches_autograd(memory)

            ctx.step(0.3, f"asking {len(questions)} questions")
            top1, _ = _top1(memory, facts, questions)

            # Re-teaching a subject is the engine's overwrite; the new value must win.
            ctx.step(0.5, f"overwriting {len(facts)} facts")
            for fact in facts:
                memory.teach(fact["subject"], _new_value(fact["value"]), source="diagnostics")
            ctx.step(0.75, "asking again after the overwrite")
            stale, newest = _top1(memory, facts, questions)
            attached = attached or _attaches_autograd(memory)
            bytes_after = memory.state_nbytes()
        finally:
            memory.close()

    checks = {
        "top1": top1 >= MEMORY_TOP1_MIN,
        "newest_value_after_overwrite": newest >= MEMORY_TOP1_MIN,
        "no_autograd_state": not attached,
        "constant_state_bytes": bytes_before == bytes_after,
    }
    failed = [name for name, ok in checks.items() if not ok]
    notes = (
        f"{len(facts)} facts of {FACTS_FILE} taught to a fresh memory with the engine's own key features, "
        f"then asked with {len(questions)} paraphrased questions. "
        f"A question counts when the top recalled item carries the expected value. Every subject was then "
        f"taught a new value; {stale:.1%} of the questions still returned the old one."
    )
    if failed:
        notes += " Failed gates: " + ", ".join(failed) + "."
    return Verdict(
        passed=not failed,
        thresholds={
            "top1_min": MEMORY_TOP1_MIN,
            "newest_value_after_overwrite_min": MEMORY_TOP1_MIN,
            "autograd_state": "none",
            "state_bytes": "unchanged by writes",
        },
        measured={
            "facts": len(facts),
            "questions": len(questions),
            "top1": top1,
            "newest_value_after_overwrite": newest,
            "old_value_after_overwrite": stale,
            "attaches_autograd_state": attached,
            "state_bytes": bytes_after,
            "state_bytes_before_writes": bytes_before,
            "checks": checks,
        },
        notes=notes,
        summary=f"top-1 {top1:.1%}, newest value after overwrite {newest:.1%}",
    )


def _new_value(value: str) -> str:
    return f"{value} (revised)"


def _top1(memory: Any, facts: list[dict[str, Any]], questions: list[tuple[int, str]]) -> tuple[float, float]:
    """Ask every question once and return the fractions whose top recalled item carries (the value, the revised value)."""
    original = revised = 0
    for index, question in questions:
        recall = memory.recall(question, k=1)
        top = recall.items[0].value if recall.items else None
        original += int(top == facts[index]["value"])
        revised += int(top == _new_value(facts[index]["value"]))
    return original / len(questions), revised / len(questions)


def _attaches_autograd(memory: Any) -> bool:
    return any(t.requires_grad or t.grad_fn is not None for t in memory.state_tensors().values())


CHAT_MODEL_CHECKS = ("chat_model_state", "chat_model_drop_in")
"""The twins that run on the default chat model, present only when its weights are installed."""


def app_checks(device: str = "auto") -> list[Check]:
    """Return the twins that need the product; the chat-model twins only when its weights are installed."""
    checks = [
        Check(
            name="memory_engine_recall",
            title="Memory engine: real features and sentences",
            claim=6,
            kind="measured",
            run=check_memory_recall,
        ),
    ]
    from app.chat_model import weights_installed

    if weights_installed():
        loader = ChatModelLoader(device)
        checks += [
            Check(
                name="chat_model_state",
                title="Default chat model: streamed state bytes",
                claim=3,
                kind="measured",
                run=partial(check_chat_state, loader=loader),
            ),
            Check(
                name="chat_model_drop_in",
                title="Default chat model: Llama parameters, HF generate",
                claim=5,
                kind="measured",
                run=partial(check_chat_drop_in, loader=loader),
            ),
        ]
    else:
        logger.warning("the default chat model's weights are not installed; its twins of claims 3 and 5 are skipped")
    return checks


# ---------------------------------------------------------------------------
# The command


def format_result_line(result: ClaimResult) -> str:
    """Return the one line printed for a finished check."""
    return (
        f"{result.status}  claim {result.claim}  {result.name:<26} {result.kind:<8}  "
        f"{result.summary or result.notes}  ({result.seconds:.1f} s)"
    )


def run_diagnostics(
    budget: str = "smoke",
    out: str | Path | None = None,
    json_path: str | Path | None = None,
    device: str = "auto",
    *,
    output: TextIO | None = None,
    progress: Callable[[str, float, str], None] | None = None,
    cancel: threading.Event | None = None,
    include_app_checks: bool = True,
    checks: list[Check] | None = None,
    only: Sequence[str] | None = None,
) -> int:
    """Run every check at `budget`, print one line per check, write the reports, return the exit status.

    Args:
        budget: "smoke" or "paper".
        out: Markdown report path, or None for no file.
        json_path: JSON report path, or None for no file.
        device: device of the default chat model ("auto", "cpu", "cuda", "mps").
        output: where the lines go (default: standard output).
        progress, cancel: passed to `hydralm.claims.run_claims`.
        include_app_checks: add the product's twins (memory engine, chat model).
        checks: replaces the library's checks (tests use it).
        only: names of the checks to run ("reference" for the reference run's
            six gates); None runs every check.

    Returns:
        0 when every check passed, 1 otherwise.

    Raises:
        ValueError: an unknown budget or check, or an unwritable output path, before any check runs.
    """
    extra = app_checks(device) if include_app_checks else []
    library = checks if checks is not None else default_checks()
    selected, markdown, json_file = validate_request(budget, out, json_path, only, [*library, *extra])
    stream = output if output is not None else sys.stdout

    def print_line(result: ClaimResult) -> None:
        print(format_result_line(result), file=stream, flush=True)

    load_at_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    results = run_claims(
        selected.name,
        progress=progress,
        cancel=cancel,
        extra_checks=extra,
        on_result=print_line,
        checks=library,
        only=only,
    )
    seconds = time.perf_counter() - started
    meta = run_metadata(selected.name, seconds, results)
    if load_at_start is not None:
        meta["load_average_1min_at_start"] = load_at_start
    if only is not None:
        meta["only"] = list(only)
    write_reports(results, meta, markdown, json_file)

    passed = sum(result.passed for result in results)
    print(f"{passed} of {len(results)} checks passed in {seconds:.1f} s at budget {selected.name}", file=stream)
    for path in (markdown, json_file):
        if path is not None:
            print(f"wrote {path}", file=stream)
    return EXIT_OK if passed == len(results) else EXIT_FAILED
