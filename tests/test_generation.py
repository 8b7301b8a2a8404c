"""generate_stream and SamplingSettings."""

from __future__ import annotations

import threading

import pytest
import torch

from hydralm import HydraConfig, HydraLM
from hydralm.generation import SamplingSettings, apply_repetition_penalty, filter_logits, generate_stream


@pytest.fixture(scope="module")
def model() -> HydraLM:
    torch.manual_seed(0)
    config = HydraConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        sliding_window=6,
        num_sink_tokens=2,
        layer_types=["deltanet", "swa"],
        initializer_range=0.4,  # large weights: peaked logits and varied greedy output
    )
    return HydraLM(config).eval()


def run(generator):
    tokens = []
    while True:
        try:
            tokens.append(next(generator))
        except StopIteration as finished:
            return tokens, finished.value


def test_greedy_matches_full_recompute(model):
    prompt = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7]])
    tokens, _ = run(generate_stream(model, prompt, settings=SamplingSettings(temperature=0, max_new_tokens=12)))

    sequence = prompt
    expected = []
    with torch.no_grad():
        for _ in range(12):
            next_id = int(model(sequence).logits[0, -1].argmax())
            expected.append(next_id)
            sequence = torch.cat([sequence, torch.tensor([[next_id]])], dim=1)
    assert tokens == expected
    assert len(set(tokens)) > 1, "greedy output is constant; the check would not catch much"


def test_returned_state_has_read_prompt_and_output(model):
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    tokens, state = run(generate_stream(model, prompt, settings=SamplingSettings(temperature=0, max_new_tokens=5)))
    with torch.no_grad():
        reference = model(torch.cat([prompt, torch.tensor([tokens])], dim=1)).state
    assert int(state.position) == prompt.shape[1] + len(tokens)
    for name, tensor in reference.tensors().items():
        assert (state.tensors()[name].float() - tensor.float()).abs().max() < 1e-4, name


def test_continues_from_given_state(model):
    first, second = torch.tensor([[4, 8, 15]]), torch.tensor([[16, 23, 42]])
    settings = SamplingSettings(temperature=0, max_new_tokens=6)
    with torch.no_grad():
        state = model(first).state
    continued, _ = run(generate_stream(model, second, state=state, settings=settings))
    whole, _ = run(generate_stream(model, torch.cat([first, second], dim=1), settings=settings))
    assert continued == whole
    assert int(state.position) == 3  # the given state is not modified


def test_stop_token_ends_without_being_read(model):
    prompt = torch.tensor([[3, 14, 15, 9]])
    greedy = SamplingSettings(temperature=0, max_new_tokens=8)
    tokens, _ = run(generate_stream(model, prompt, settings=greedy))
    stop_id = tokens[2]
    first_stop = tokens.index(stop_id)
    stopped, state = run(generate_stream(model, prompt, settings=greedy, stop_token_ids=[stop_id]))
    assert stopped == tokens[: first_stop + 1]
    assert int(state.position) == prompt.shape[1] + first_stop


def test_max_new_tokens_limits_output(model):
    tokens, state = run(generate_stream(model, torch.tensor([[1, 2]]), settings=SamplingSettings(max_new_tokens=3, seed=0)))
    assert len(tokens) == 3
    assert int(state.position) == 5


def test_cancel_stops_generation(model):
    cancel = threading.Event()
    stream = generate_stream(model, torch.tensor([[1, 2]]), settings=SamplingSettings(max_new_tokens=50, seed=1), cancel=cancel)
    first = next(stream)
    cancel.set()
    rest, state = run(stream)
    assert isinstance(first, int)
    assert rest == []
    assert int(state.position) == 3


def test_seed_makes_sampling_reproducible(model):
    prompt = torch.tensor([[7, 7, 1]])
    settings = SamplingSettings(temperature=1.5, max_new_tokens=20, seed=1234)
    first, _ = run(generate_stream(model, prompt, settings=settings))
    second, _ = run(generate_stream(model, prompt, settings=settings))
    other, _ = run(generate_stream(model, prompt, settings=SamplingSettings(temperature=1.5, max_new_tokens=20, seed=99)))
    assert first == second
    assert first != other


def test_top_k_one_is_greedy(model):
    prompt = torch.tensor([[9, 8, 7, 6]])
    greedy, _ = run(generate_stream(model, prompt, settings=SamplingSettings(temperature=0, max_new_tokens=8)))
    top1, _ = run(generate_stream(model, prompt, settings=SamplingSettings(temperature=2.0, top_k=1, max_new_tokens=8, seed=5)))
    tiny_p, _ = run(generate_stream(model, prompt, settings=SamplingSettings(temperature=2.0, top_p=1e-6, max_new_tokens=8, seed=5)))
    assert top1 == greedy
    assert tiny_p == greedy


def test_filter_logits_keeps_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = filter_logits(logits, top_k=0, top_p=0.75)
    assert torch.isfinite(kept).tolist() == [True, True, False, False]
    kept = filter_logits(logits, top_k=3, top_p=1.0)
    assert torch.isfinite(kept).tolist() == [True, True, True, False]


def test_repetition_penalty_follows_sign():
    logits = torch.tensor([2.0, -2.0, 1.0])
    penalised = apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)
    assert penalised.tolist() == [1.0, -4.0, 1.0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a number > 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"seed": 1.5}, "seed must be an integer or None"),
    ],
)
def test_invalid_settings_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**fields)


def test_invalid_generation_inputs_raise(model):
    with pytest.raises(ValueError, match=r"shape \(1, T\), got \(2, 3\)"):
        next(generate_stream(model, torch.zeros(2, 3, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"stop token id 50 is outside the vocabulary \[0, 50\)"):
        next(generate_stream(model, torch.zeros(1, 3, dtype=torch.long), stop_token_ids=[50]))
    with pytest.raises(ValueError, match="token id 77 is outside the vocabulary"):
        next(generate_stream(model, torch.tensor([[1, 77]])))
