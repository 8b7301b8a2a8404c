"""Claim 5: HydraLM is a drop-in replacement for a dense Transformer.

Reference gate: both models accept the same calls (`model(input_ids)`,
`labels=`, `init_state`, `step`) and return logits of the same shape. The
dense Transformer matched in shape has between 0.9 and 1.1 times HydraLM's
parameters. transformers' `generate` runs HydraLM through the Hugging Face
adapter (batch 2, 16 prompt tokens, 8 new tokens) and gives the same greedy
tokens as a manual `step` loop.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from hydralm.claims.budgets import Budget
from hydralm.claims.runner import Check, CheckContext, Verdict

logger = logging.getLogger(__name__)

PARAMETER_RATIO = (0.9, 1.1)


def parameter_count(model: torch.nn.Module) -> int:
    """Return the number of distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def compare_call_api(hydra: torch.nn.Module, dense: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, Any]:
    """Call both models the same ways and record the shapes and losses they return."""
    batch_size = input_ids.shape[0]
    shapes: dict[str, Any] = {}
    with torch.no_grad():
        for label, model in (("hydra", hydra), ("dense", dense)):
            output = model(input_ids, labels=input_ids)
            state = model.init_state(batch_size)
            step_logits, _ = model.step(input_ids[:, 0], state)
            shapes[label] = {
                "logits": list(output.logits.shape),
                "loss": float(output.loss),
                "step_logits": list(step_logits.shape),
                "state_type": type(output.state).__name__,
            }
    same = (
        shapes["hydra"]["logits"] == shapes["dense"]["logits"]
        and shapes["hydra"]["step_logits"] == shapes["dense"]["step_logits"]
        and all(torch.isfinite(torch.tensor(shapes[label]["loss"])) for label in shapes)
    )
    return {"same_api": bool(same), "calls": shapes}


def greedy_by_steps(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy-decode `new_tokens` with the model's own `step` loop: (B, T + new_tokens)."""
    with torch.no_grad():
        output = model(input_ids)
        state = output.state
        token = output.logits[:, -1].argmax(dim=-1)  # (B,)
        generated = [token]
        for _ in range(new_tokens - 1):
            logits, state = model.step(token, state)  # (B, V)
            token = logits.argmax(dim=-1)
            generated.append(token)
    return torch.cat([input_ids, torch.stack(generated, dim=1)], dim=1)


def hf_generate(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy-decode through transformers' `generate` on the Hugging Face adapter of `model`."""
    from hydralm.hf import HydraLMForCausalLM

    hf_model = HydraLMForCausalLM.from_native(model).eval()
    with torch.no_grad():
        return hf_model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )


def check_drop_in(
    budget: Budget,
    ctx: CheckContext,
    *,
    make_hydra: Callable[[], torch.nn.Module] | None = None,
    make_dense: Callable[[], torch.nn.Module] | None = None,
) -> Verdict:
    """Compare call signatures, parameter counts and `generate` of HydraLM and its dense twin."""
    from hydralm.claims import subjects

    torch.manual_seed(0)
    hydra = (make_hydra or subjects.make_hydra)().eval()
    dense = (make_dense or subjects.make_dense)().eval()
    vocab_size = hydra.config.vocab_size
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(
        3, vocab_size, (budget.generate_batch, budget.generate_prompt_len), generator=generator
    )  # (B, T)

    ctx.step(0.1, "calling both models the same ways")
    api = compare_call_api(hydra, dense, input_ids)
    hydra_parameters, dense_parameters = parameter_count(hydra), parameter_count(dense)
    ratio = dense_parameters / hydra_parameters

    ctx.step(0.4, "generate through transformers")
    generated = hf_generate(hydra, input_ids, budget.generate_new_tokens)
    ctx.step(0.8, "greedy step loop")
    reference = greedy_by_steps(hydra, input_ids, budget.generate_new_tokens)
    expected_shape = [budget.generate_batch, budget.generate_prompt_len + budget.generate_new_tokens]
    generate_ok = list(generated.shape) == expected_shape and torch.equal(generated, reference)

    low, high = PARAMETER_RATIO
    checks = {
        "same_api": api["same_api"],
        "parameter_ratio": low <= ratio <= high,
        "generate": generate_ok,
    }
    failed = [name for name, ok in checks.items() if not ok]
    notes = (
        f"Both models take `model(input_ids, state=, attention_mask=, labels=)`, `init_state` and `step`. "
        f"`generate` ran greedy on batch {budget.generate_batch} x {budget.generate_prompt_len} tokens for "
        f"{budget.generate_new_tokens} new tokens and was compared token by token with a manual step loop."
    )
    if failed:
        notes += " Failed gates: " + ", ".join(failed) + "."
    return Verdict(
        passed=not failed,
        thresholds={
            "parameter_ratio": [low, high],
            "logits_shape": "identical",
            "generate": f"shape {expected_shape}, tokens equal to the step loop",
        },
        measured={
            **api,
            "hydra_parameters": hydra_parameters,
            "dense_parameters": dense_parameters,
            "parameter_ratio": ratio,
            "generate_shape": list(generated.shape),
            "generate_matches_step_loop": bool(torch.equal(generated, reference))
            if generated.shape == reference.shape
            else False,
            "hydra_config": subjects.describe(hydra.config),
            "checks": checks,
        },
        notes=notes,
        summary=f"ratio {ratio:.3f}, generate {'ok' if generate_ok else 'FAILED'}",
    )


CHECKS = [
    Check(name="drop_in", title="Same API, matched size, HF generate", claim=5, kind="measured", run=check_drop_in),
]
