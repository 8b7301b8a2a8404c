"""Tests of the transformers adapter: config, weights, generate() on the recurrent state, save/load."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast, TextIteratorStreamer

from hydralm import HydraConfig, HydraLM
from hydralm.hf import HydraCache, HydraLMConfig, HydraLMForCausalLM

CONFIG = HydraConfig(
    vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=128, sliding_window=8, num_sink_tokens=2, chunk_size=8,
)


@pytest.fixture(scope="module")
def native():
    torch.manual_seed(0)
    return HydraLM(CONFIG).eval()


@pytest.fixture(scope="module")
def model(native):
    return HydraLMForCausalLM.from_native(native).eval()


def greedy_by_steps(native: HydraLM, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Prefill then ``native.step`` one token at a time, taking the argmax each time."""
    with torch.no_grad():
        output = native(prompt)
        logits, state = output.logits[:, -1], output.state
        tokens = []
        for _ in range(new_tokens):
            next_ids = logits.argmax(dim=-1)
            tokens.append(next_ids)
            logits, state = native.step(next_ids, state)
    return torch.stack(tokens, dim=1)


def count_embedded_tokens(model: HydraLMForCausalLM) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    counts: list[int] = []
    handle = model.model.embed_tokens.register_forward_pre_hook(lambda module, args: counts.append(args[0].numel()))
    return counts, handle


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(CONFIG.vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w0", pad_token="w0", eos_token="w2")


def test_config_converts_both_ways():
    for config in (CONFIG, HydraConfig.smollm2_135m(), HydraConfig(tie_word_embeddings=False, attention_bias=True)):
        hf_config = HydraLMConfig.from_hydra_config(config)

        assert hf_config.model_type == "hydralm"
        assert hf_config.to_hydra_config() == config
        assert hf_config.mixer_types == config.layer_types
        assert not hasattr(hf_config, "layer_types")


def test_config_accepts_layer_types_keyword():
    config = HydraLMConfig(num_hidden_layers=2, layer_types=["swa", "deltanet"])

    assert config.mixer_types == ["swa", "deltanet"]
    assert config.to_hydra_config().layer_types == ["swa", "deltanet"]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="hidden_size=30 is not divisible by num_attention_heads=4"):
        HydraLMConfig(hidden_size=30)
    with pytest.raises(ValueError, match="'mamba' is not a known layer type"):
        HydraLMConfig(num_hidden_layers=1, mixer_types=["mamba"])
    with pytest.raises(ValueError, match="disagree; pass only one of them"):
        HydraLMConfig(num_hidden_layers=1, mixer_types=["swa"], layer_types=["deltanet"])
    with pytest.raises(ValueError, match="from_hydra_config needs a HydraConfig"):
        HydraLMConfig.from_hydra_config({"hidden_size": 64})


def test_auto_classes_know_hydralm():
    assert type(AutoConfig.for_model("hydralm")) is HydraLMConfig
    assert type(AutoModelForCausalLM.from_config(HydraLMConfig(num_hidden_layers=1))) is HydraLMForCausalLM


def test_state_dict_moves_unchanged(native, model):
    native_state = native.state_dict()
    hf_state = model.state_dict()

    assert list(hf_state) == list(native_state)
    assert all(torch.equal(hf_state[name], native_state[name]) for name in native_state)
    back = model.to_native()
    assert all(torch.equal(back.state_dict()[name], native_state[name]) for name in native_state)


def test_untied_head_keeps_lm_head_name():
    torch.manual_seed(1)
    native = HydraLM(HydraConfig(num_hidden_layers=1, tie_word_embeddings=False))

    model = HydraLMForCausalLM.from_native(native)

    assert "lm_head.weight" in model.state_dict()
    assert torch.equal(model.lm_head.weight, native.lm_head.weight)


def test_fresh_model_initialises_like_native():
    torch.manual_seed(2)
    hf_state = HydraLMForCausalLM(HydraLMConfig.from_hydra_config(CONFIG)).state_dict()
    native_state = HydraLM(CONFIG).state_dict()

    for name in ("model.layers.0.mixer.q_conv.weight", "model.layers.0.mixer.q_proj.weight"):
        ratio = hf_state[name].std() / native_state[name].std()
        assert 0.8 < ratio < 1.25, (name, ratio)
    assert torch.equal(hf_state["model.norm.weight"], torch.ones(CONFIG.hidden_size))
    assert hf_state["model.layers.0.mixer.A_log"].max() <= torch.log(torch.tensor(16.0))
    assert (hf_state["model.layers.0.mixer.dt_bias"] < 0).all()  # softplus^-1 of dt <= 0.1


def test_logits_and_loss_match_native(native, model):
    ids = torch.randint(3, 256, (2, 20))
    labels = ids.clone()
    labels[:, :5] = -100

    with torch.no_grad():
        expected = native(ids, labels=labels)
        actual = model(ids, labels=labels)

    assert torch.allclose(actual.logits, expected.logits, atol=1e-6)
    assert torch.allclose(actual.loss, expected.loss, atol=1e-6)
    assert isinstance(actual.cache, HydraCache)
    assert actual.cache.get_seq_length() == 20
    # Same autograd mode as above: attention kernels may differ in the last
    # bit between grad-enabled and no-grad calls.
    with torch.no_grad():
        as_tuple = model(ids, labels=labels, return_dict=False)
    assert torch.equal(as_tuple[1], actual.logits)
    assert isinstance(as_tuple[2], HydraCache)


def test_greedy_generate_equals_step_loop(native, model):
    prompt = torch.randint(3, 256, (2, 16))

    output = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)

    assert output.shape == (2, 24)
    assert torch.equal(output[:, :16], prompt)
    assert torch.equal(output[:, 16:], greedy_by_steps(native, prompt, 8))


def test_generate_never_recomputes_prefix(model):
    prompt = torch.randint(3, 256, (2, 16))
    counts, handle = count_embedded_tokens(model)
    try:
        model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    finally:
        handle.remove()

    # One prefill of 2 x 16 tokens, then one token per sequence per step;
    # the eighth token needs no forward call.
    assert counts == [32] + [2] * 7


def test_generate_returns_constant_size_cache(model):
    prompt = torch.randint(3, 256, (1, 12))

    short = model.generate(prompt, max_new_tokens=2, do_sample=False, eos_token_id=None,
                           pad_token_id=0, return_dict_in_generate=True)
    long = model.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None,
                          pad_token_id=0, return_dict_in_generate=True)

    assert isinstance(long.cache, HydraCache)
    assert long.cache.nbytes() == short.cache.nbytes() > 0
    assert long.cache.get_seq_length() == 12 + 39


def test_continued_generate_reuses_returned_cache(model):
    first_prompt = torch.randint(3, 256, (1, 10))
    second_prompt = torch.randint(3, 256, (1, 6))
    settings = {"max_new_tokens": 5, "do_sample": False, "eos_token_id": None, "pad_token_id": 0,
                "return_dict_in_generate": True, "output_scores": True}
    first = model.generate(first_prompt, **settings)
    conversation = torch.cat([first.sequences, second_prompt], dim=1)
    counts, handle = count_embedded_tokens(model)
    try:
        continued = model.generate(conversation, cache=first.cache, **settings)
    finally:
        handle.remove()
    fresh = model.generate(conversation, **settings)

    # Only the tokens the cache has not read are prefilled: the last
    # generated token of the first turn and the second prompt.
    assert counts == [1 + 6] + [1] * 4
    assert torch.equal(continued.sequences, fresh.sequences)
    for continued_scores, fresh_scores in zip(continued.scores, fresh.scores):
        assert torch.allclose(continued_scores, fresh_scores, atol=1e-4)


def test_generate_without_cache_matches_cached(model):
    prompt = torch.randint(3, 256, (2, 9))
    settings = {"max_new_tokens": 4, "do_sample": False, "eos_token_id": None, "pad_token_id": 0,
                "return_dict_in_generate": True, "output_scores": True}

    cached = model.generate(prompt, **settings)
    uncached = model.generate(prompt, use_cache=False, **settings)

    assert torch.equal(cached.sequences, uncached.sequences)
    for cached_scores, uncached_scores in zip(cached.scores, uncached.scores):
        assert torch.allclose(cached_scores, uncached_scores, atol=1e-4)


def test_left_padded_batch_equals_each_prompt_alone(native, model):
    long_prompt = torch.randint(3, 256, (16,))
    short_prompt = torch.randint(3, 256, (10,))
    batch = torch.zeros(2, 16, dtype=torch.long)
    batch[0] = long_prompt
    batch[1, 6:] = short_prompt
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :6] = 0

    output = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False,
                            eos_token_id=None, pad_token_id=0)

    assert torch.equal(output[0, 16:], greedy_by_steps(native, long_prompt[None], 8)[0])
    assert torch.equal(output[1, 16:], greedy_by_steps(native, short_prompt[None], 8)[0])


def test_sampling_is_seeded_and_in_vocabulary(model):
    prompt = torch.randint(3, 256, (2, 8))
    settings = {"max_new_tokens": 12, "do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 0.95,
                "eos_token_id": None, "pad_token_id": 0}

    torch.manual_seed(123)
    first = model.generate(prompt, **settings)
    torch.manual_seed(123)
    again = model.generate(prompt, **settings)
    torch.manual_seed(321)
    other = model.generate(prompt, **settings)

    assert first.shape == (2, 20)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert int(first.max()) < CONFIG.vocab_size


def test_eos_stops_generation(native, model):
    prompt = torch.randint(3, 256, (1, 16))
    greedy = greedy_by_steps(native, prompt, 6)[0]
    eos = int(greedy[2])

    output = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)

    new_tokens = output[0, 16:].tolist()
    assert new_tokens[-1] == eos
    assert new_tokens == greedy[: greedy.tolist().index(eos) + 1].tolist()


def test_text_iterator_streamer_yields_tokens(native, model):
    tokenizer = tiny_tokenizer()
    prompt = torch.randint(3, 256, (1, 10))
    expected = greedy_by_steps(native, prompt, 6)[0]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)

    worker = threading.Thread(
        target=model.generate,
        kwargs={"input_ids": prompt, "max_new_tokens": 6, "do_sample": False, "eos_token_id": None,
                "pad_token_id": 0, "streamer": streamer},
    )
    worker.start()
    pieces = list(streamer)
    worker.join(timeout=60)

    assert "".join(pieces).split() == [f"w{token}" for token in expected.tolist()]


def test_save_and_load_round_trip_is_bit_exact(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(3, 256, (2, 20))

    assert (tmp_path / "model.safetensors").is_file()
    assert type(loaded) is HydraLMForCausalLM
    assert loaded.config.to_hydra_config() == model.config.to_hydra_config()
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_bad_inputs_raise_clear_errors(model):
    ids = torch.randint(3, 256, (1, 4))

    with pytest.raises(ValueError, match="does not take inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 4, CONFIG.hidden_size))
    with pytest.raises(ValueError, match="input_ids is missing"):
        model()
    with pytest.raises(ValueError, match="cache must be a HydraCache, got dict"):
        model(ids, cache={})
    with pytest.raises(ValueError, match="labels must have the shape of input_ids"):
        model(ids, labels=ids[:, :2])
    with pytest.raises(ValueError, match="token id 256 is outside the vocabulary"):
        model(torch.full((1, 2), 256))
    with pytest.raises(ValueError, match="from_native needs a hydralm.HydraLM"):
        HydraLMForCausalLM.from_native(model)
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        model(ids).cache.crop(1)
