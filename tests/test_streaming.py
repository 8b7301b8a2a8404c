"""Streaming contract: one call, any chunking and step() give the same logits."""

from __future__ import annotations

import pytest
import torch

from hydralm import HydraConfig, HydraLM

TOLERANCE = 1e-4


def tiny_config(**overrides) -> HydraConfig:
    fields = dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        sliding_window=8,
        num_sink_tokens=2,
        chunk_size=16,
        layer_types=["deltanet", "swa", "deltanet", "swa"],
    )
    fields.update(overrides)
    return HydraConfig(**fields)


def make_model(config: HydraConfig, seed: int = 0) -> HydraLM:
    torch.manual_seed(seed)
    model = HydraLM(config).eval()
    # Stronger gates than the default init, so every layer moves the logits.
    with torch.no_grad():
        for layer in model.model.layers:
            mixer = layer.mixer
            if hasattr(mixer, "A_log"):
                mixer.A_log.fill_(0.0)
                mixer.b_proj.weight.normal_(0, 0.5)
    return model


def run_in_chunks(model: HydraLM, input_ids: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state, logits, start = None, [], 0
    for size in sizes:
        output = model(input_ids[:, start : start + size], state=state)
        state = output.state
        logits.append(output.logits)
        start += size
    assert start == input_ids.shape[1]
    return torch.cat(logits, dim=1)


def run_by_steps(model: HydraLM, input_ids: torch.Tensor) -> torch.Tensor:
    state = model.init_state(input_ids.shape[0])
    logits = []
    for t in range(input_ids.shape[1]):
        step_logits, state = model.step(input_ids[:, t], state)
        logits.append(step_logits)
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_sink_tokens": 0},
        {"num_key_value_heads": 1, "sliding_window": 5, "num_sink_tokens": 3},
        {"num_key_value_heads": 4, "sliding_window": 1, "num_sink_tokens": 1},
        {"tie_word_embeddings": False, "attention_bias": True},
    ],
    ids=["gqa-sinks", "no-sinks", "mqa-odd-window", "mha-window-1", "untied-bias"],
)
def test_whole_chunked_and_step_logits_agree(overrides):
    config = tiny_config(**overrides)
    model = make_model(config)
    input_ids = torch.randint(0, config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))

    with torch.no_grad():
        whole = model(input_ids).logits
        mixed = run_in_chunks(model, input_ids, [1, 1, 2, 3, 9, 32])  # 9 and 32 exceed the window
        halves = run_in_chunks(model, input_ids, [24, 24])
        stepped = run_by_steps(model, input_ids)

    assert whole.abs().max() > 0.1, "logits too small for the comparison to mean anything"
    for name, logits in [("mixed", mixed), ("halves", halves), ("steps", stepped)]:
        assert (logits - whole).abs().max() < TOLERANCE, name


def test_long_input_uses_several_attention_blocks():
    # 1100 tokens span three attention blocks of 512 with a 300-token window.
    config = tiny_config(sliding_window=300, num_sink_tokens=4, chunk_size=64)
    model = make_model(config)
    input_ids = torch.randint(0, config.vocab_size, (1, 1100), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = model(input_ids).logits
        chunked = run_in_chunks(model, input_ids, [299, 2, 600, 199])
    assert (chunked - whole).abs().max() < TOLERANCE


def test_state_is_not_modified_in_place():
    config = tiny_config()
    model = make_model(config)
    input_ids = torch.randint(0, config.vocab_size, (1, 12))
    with torch.no_grad():
        state = model(input_ids).state
        before = {name: t.clone() for name, t in state.tensors().items()}
        first = model(input_ids[:, :3], state=state).logits
        model.step(input_ids[:, 5], state)
        again = model(input_ids[:, :3], state=state).logits
    for name, tensor in state.tensors().items():
        assert torch.equal(tensor, before[name]), name
    assert torch.equal(first, again)


def test_reused_state_steps_match_functional_steps():
    # 60 steps cross the window (8) several times, so the cached keys move to
    # a new angle origin mid-stream; the second row starts later (padding).
    config = tiny_config()
    model = make_model(config)
    generator = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, config.vocab_size, (2, 5), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    tokens = torch.randint(0, config.vocab_size, (60, 2), generator=generator)
    with torch.no_grad():
        start = model(prompt, attention_mask=mask).state
        functional, reused = start, start.clone()
        for token_ids in tokens:
            expected, functional = model.step(token_ids, functional)
            window_keys = reused.layers[1].window_keys
            got, reused = model.step(token_ids, reused, reuse_state=True)
            assert (got - expected).abs().max() < TOLERANCE
    # The last step wrote into the ring buffer it was given (no origin move
    # at step 60: 5 + 60 is not a multiple of the window for row 0).
    assert reused.layers[1].window_keys is window_keys
    for name, tensor in functional.tensors().items():
        assert torch.allclose(tensor, reused.tensors()[name], atol=1e-5), name


def test_position_offset_gives_identical_logits():
    # The window content is the same at position 0 + n and 10^7 + n; only the
    # absolute position differs. 10^7 is a multiple of the window (16), so
    # the ring buffer slots line up.
    config = tiny_config(sliding_window=16, num_sink_tokens=4)
    model = make_model(config)
    generator = torch.Generator().manual_seed(5)
    prefix = torch.randint(0, config.vocab_size, (2, 40), generator=generator)
    continuation = torch.randint(0, config.vocab_size, (2, 30), generator=generator)
    offset = 10**7
    with torch.no_grad():
        state = model(prefix).state
        shifted = state.clone()
        shifted.position = state.position + offset
        near = model(continuation, state=state)
        far = model(continuation, state=shifted)
        near_step, _ = model.step(continuation[:, 0], state)
        far_step, _ = model.step(continuation[:, 0], shifted)

    assert torch.equal(far.state.position, near.state.position + offset)
    assert (far.logits - near.logits).abs().max() < TOLERANCE
    assert (far_step - near_step).abs().max() < TOLERANCE


def test_batch_rows_are_independent():
    config = tiny_config()
    model = make_model(config)
    generator = torch.Generator().manual_seed(6)
    batch = torch.randint(0, config.vocab_size, (3, 40), generator=generator)
    with torch.no_grad():
        together = model(batch).logits
        for row in range(3):
            alone = model(batch[row : row + 1]).logits
            assert (together[row : row + 1] - alone).abs().max() < TOLERANCE, row
        # Changing one row leaves the others untouched.
        changed = batch.clone()
        changed[1] = torch.randint(0, config.vocab_size, (40,), generator=generator)
        after = model(changed).logits
    assert (after[0] - together[0]).abs().max() < TOLERANCE
    assert (after[2] - together[2]).abs().max() < TOLERANCE
    assert (after[1] - together[1]).abs().max() > 1e-3


def test_left_padding_matches_each_prompt_alone():
    config = tiny_config()
    model = make_model(config)
    generator = torch.Generator().manual_seed(7)
    lengths = [25, 9, 17]
    prompts = [torch.randint(3, config.vocab_size, (n,), generator=generator) for n in lengths]
    T = max(lengths)
    padded = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        padded[row, T - len(prompt) :] = prompt
        mask[row, T - len(prompt) :] = 1
    continuation = torch.randint(3, config.vocab_size, (len(prompts), 12), generator=generator)

    with torch.no_grad():
        batched = model(padded, attention_mask=mask)
        batched_next = model(continuation, state=batched.state)
        for row, prompt in enumerate(prompts):
            alone = model(prompt[None])
            n = len(prompt)
            assert (batched.logits[row, T - n :] - alone.logits[0]).abs().max() < TOLERANCE, row
            assert int(batched.state.position[row]) == n
            alone_next = model(continuation[row : row + 1], state=alone.state)
            assert (batched_next.logits[row] - alone_next.logits[0]).abs().max() < TOLERANCE, row
            for layer_index, (layer_b, layer_a) in enumerate(zip(batched.state.layers, alone.state.layers)):
                for name, tensor in layer_a.tensors().items():
                    difference = (layer_b.tensors()[name][row] - tensor[0]).abs().max()
                    assert difference < TOLERANCE, (row, layer_index, name)
    assert torch.isfinite(batched.logits).all()


def test_all_padding_chunk_leaves_state_unchanged():
    config = tiny_config()
    model = make_model(config)
    input_ids = torch.randint(0, config.vocab_size, (1, 20))
    with torch.no_grad():
        state = model(input_ids).state
        output = model(torch.zeros(1, 6, dtype=torch.long), state=state, attention_mask=torch.zeros(1, 6))
    for name, tensor in state.tensors().items():
        assert torch.equal(output.state.tensors()[name], tensor), name
    assert torch.isfinite(output.logits).all()


def test_one_token_steps_skip_padded_row():
    # Row 1 pads every other step, so one-token blocks mix a row that
    # writes its ring slot with one that must put its slot back; 30 steps
    # wrap the ring (window 8) several times.
    config = tiny_config()
    model = make_model(config)
    generator = torch.Generator().manual_seed(9)
    prompt = torch.randint(0, config.vocab_size, (2, 6), generator=generator)
    tokens = torch.randint(0, config.vocab_size, (30, 2), generator=generator)
    with torch.no_grad():
        state = model(prompt).state
        alone = [model(prompt[row : row + 1]).state for row in range(2)]
        for step, token_ids in enumerate(tokens):
            row_mask = torch.tensor([[1], [step % 2]])
            output = model(token_ids[:, None], state=state, attention_mask=row_mask, reuse_state=True)
            state = output.state
            for row in range(2):
                if row_mask[row, 0]:
                    expected = model(token_ids[row : row + 1, None], state=alone[row])
                    alone[row] = expected.state
                    assert (output.logits[row] - expected.logits[0]).abs().max() < TOLERANCE, (step, row)
            assert torch.isfinite(output.logits).all()
    for row in range(2):
        for name, tensor in alone[row].tensors().items():
            assert (state.tensors()[name][row] - tensor[0]).abs().max() < TOLERANCE, (row, name)


def test_padding_anywhere_is_skipped():
    config = tiny_config()
    model = make_model(config)
    generator = torch.Generator().manual_seed(8)
    real = torch.randint(3, config.vocab_size, (1, 20), generator=generator)
    mask = torch.ones(1, 29, dtype=torch.bool)
    mask[0, [0, 1, 6, 7, 8, 15, 22, 27, 28]] = False
    padded = torch.zeros(1, 29, dtype=torch.long)
    padded[mask] = real[0]
    with torch.no_grad():
        expected = model(real)
        actual = model(padded, attention_mask=mask.long())
    assert (actual.logits[mask] - expected.logits[0]).abs().max() < TOLERANCE
    for name, tensor in expected.state.tensors().items():
        assert (actual.state.tensors()[name].float() - tensor.float()).abs().max() < TOLERANCE, name


def test_long_call_runs_in_segments(monkeypatch):
    # Shrink the segment so a short input crosses two boundaries; padding
    # inside the input checks the positions handed to later segments.
    import hydralm.model

    monkeypatch.setattr(hydralm.model, "SEGMENT_SIZE", 16)
    config = tiny_config()
    model = make_model(config)
    input_ids = torch.randint(0, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(9))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :5] = 0
    with torch.no_grad():
        segmented = model(input_ids, attention_mask=mask)
        last = model(input_ids, attention_mask=mask, logits_to_keep=3)
        monkeypatch.setattr(hydralm.model, "SEGMENT_SIZE", 8192)
        whole = model(input_ids, attention_mask=mask)
    real = mask.bool()  # outputs at pads are unspecified
    assert (segmented.logits[real] - whole.logits[real]).abs().max() < TOLERANCE
    assert (last.logits - whole.logits[:, -3:]).abs().max() < TOLERANCE
    assert last.last_hidden_state.shape == (2, 3, config.hidden_size)
    for name, tensor in whole.state.tensors().items():
        assert (segmented.state.tensors()[name].float() - tensor.float()).abs().max() < TOLERANCE, name
