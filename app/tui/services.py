"""The engine parts the app talks to: memory, chat model and assistant.

`Services` opens or loads each part on first use and turns a missing or
broken part into a `MissingPart` error that the app shows on its error
screen instead of crashing. Every method may block (SQLite, model loading),
so screens call them from thread workers, never from the event loop.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MissingPart(Exception):
    """A part of hydra-chat that cannot be used: what failed, why, and how to fix it."""

    def __init__(self, title: str, message: str, fix: str) -> None:
        super().__init__(f"{title}: {message}")
        self.title = title
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class StatusInfo:
    """Device, model and memory numbers for the status bar on every screen."""

    device: str = "-"
    dtype: str = "-"
    model: str = "chat model not loaded"
    state_bytes: int | None = None
    """Bytes of the memory's persistent state; constant however much it stores."""
    tokens_streamed: int = 0
    facts: int = 0
    documents: int = 0


def error_text(error: BaseException) -> str:
    """Return an error's message for display.

    A plain `KeyError` quotes its argument, so its argument is shown instead;
    subclasses that define their own message keep it.
    """
    if isinstance(error, MissingPart):
        return f"{error.message}. Fix: {error.fix}"
    if isinstance(error, KeyError) and type(error).__str__ is KeyError.__str__ and error.args:
        return str(error.args[0])
    return str(error) or type(error).__name__


def import_part(module: str, what: str) -> Any:
    """Import `module`, or raise `MissingPart` saying which part of the product is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPart(
            f"{what} is missing",
            f"the module {module} cannot be imported: {error}",
            "reinstall hydra-chat with `make setup`, then start it again",
        ) from error


class Services:
    """Memory, chat model and assistant, shared by every screen.

    Parts passed to the constructor are used as they are, which is how tests
    pass a real engine on a temporary folder. The others are opened on first
    use. `chat_ready` is set once the chat model is loaded or has failed to
    load, so answer workers can wait for it.
    """

    def __init__(
        self,
        memory: Any = None,
        chat_model: Any = None,
        assistant: Any = None,
        data_dir: Path | None = None,
        device: str | None = None,
    ) -> None:
        self.memory = memory
        self.chat_model = chat_model
        self.assistant = assistant
        self.data_dir = data_dir
        self.device = device
        self.chat_error: MissingPart | None = None
        self.chat_ready = threading.Event()
        self.tokens_streamed = 0
        self._lock = threading.Lock()
        self._owns_memory = memory is None
        if assistant is not None or chat_model is not None:
            self.chat_ready.set()

    # -- memory -------------------------------------------------------------

    def open_memory(self) -> Any:
        """Open the memory if no one passed it in; raise `MissingPart` when it cannot be opened."""
        with self._lock:
            if self.memory is not None:
                return self.memory
            # The model library is checked first, so a broken install names
            # the library rather than the memory engine that imports it.
            import_part("hydralm", "The model library")
            memory_module = import_part("app.memory", "The memory engine")
            if not hasattr(memory_module, "Memory"):
                raise MissingPart(
                    "The memory engine is missing",
                    "the package app.memory does not export Memory",
                    "reinstall hydra-chat with `make setup`, then start it again",
                )
            try:
                self.memory = memory_module.Memory.open(data_dir=self.data_dir)
            except memory_module.MemoryInUseError as error:
                raise MissingPart(
                    "Memory in use",
                    str(error),
                    "close the other hydra-chat (app or command) that uses this memory, then start again",
                ) from error
            except (memory_module.MemoryError_, OSError) as error:
                raise MissingPart(
                    "Memory cannot be opened",
                    str(error),
                    "check the memory folder named above; move a damaged file aside or pass --data-dir",
                ) from error
            return self.memory

    def require_memory(self) -> Any:
        """Return the open memory, or raise `MissingPart` if it failed to open."""
        if self.memory is None:
            raise MissingPart("Memory is not open", "the memory failed to open at start", "restart hydra-chat")
        return self.memory

    def close(self) -> None:
        """Close the memory if this object opened it."""
        if self.memory is not None and self._owns_memory:
            self.memory.close()
            self.memory = None

    # -- chat model ---------------------------------------------------------

    def chat_model_prepared(self) -> bool:
        """Return whether the default chat model is converted already, so no first-run step is needed."""
        if self.chat_model is not None or self.assistant is not None:
            return True
        chat_module = import_part("app.chat_model", "The chat model")
        return (chat_module.converted_model_dir() / chat_module.MANIFEST_FILE).is_file()

    def prepare_chat_model(self, progress) -> None:
        """Convert the default chat model; `progress(stage, fraction)` reports each step."""
        chat_module = import_part("app.chat_model", "The chat model")
        try:
            chat_module.prepare_chat_model(force=False, progress=progress)
        except chat_module.ChatModelError as error:
            raise MissingPart(
                "The default chat model cannot be prepared",
                str(error),
                "run `hydra-chat prepare --force` in a terminal to see each step",
            ) from error

    def load_chat_model(self) -> None:
        """Load the chat model and build the assistant; failures are kept in `chat_error`."""
        try:
            if self.chat_model is None and self.assistant is None:
                chat_module = import_part("app.chat_model", "The chat model")
                try:
                    self.chat_model = chat_module.load_chat_model(device=self.device or "auto")
                except (OSError, ValueError, RuntimeError, ImportError) as error:
                    raise MissingPart(
                        "Chat model cannot be loaded",
                        str(error),
                        "run `hydra-chat prepare --force` to convert the default model again",
                    ) from error
            if self.assistant is None:
                assistant_module = import_part("app.assistant", "The answer path")
                self.assistant = assistant_module.Assistant(self.require_memory(), self.chat_model)
        except MissingPart as error:
            logger.warning("chat model unavailable: %s", error)
            self.chat_error = error
        finally:
            self.chat_ready.set()

    def require_assistant(self, timeout: float | None = None) -> Any:
        """Wait for the chat model, then return the assistant or raise `MissingPart`."""
        if not self.chat_ready.wait(timeout):
            raise MissingPart("Chat model still loading", "the chat model has not finished loading", "wait a moment")
        if self.chat_error is not None:
            raise self.chat_error
        if self.assistant is None:
            raise MissingPart("Chat model not loaded", "no assistant was set up", "restart hydra-chat")
        return self.assistant

    # -- status -------------------------------------------------------------

    def status(self) -> StatusInfo:
        """Collect what the status bar shows; reads SQLite, so call it from a thread."""
        device, dtype, model = "-", "-", "chat model not loaded"
        if self.chat_error is not None:
            model = "chat model unavailable"
        description = describe_chat_model(self.chat_model)
        if description:
            device = description.get("device", device)
            dtype = description.get("dtype", dtype)
            model = description.get("name", model)

        state_bytes = None
        facts = documents = 0
        tokens = self.tokens_streamed
        if self.memory is not None:
            stats = self.memory.stats()
            state_bytes = stats.state_bytes
            facts = stats.facts
            documents = stats.documents
            tokens = max(tokens, getattr(stats, "tokens_streamed", 0) or 0)
        return StatusInfo(
            device=str(device),
            dtype=str(dtype),
            model=str(model),
            state_bytes=state_bytes,
            tokens_streamed=tokens,
            facts=facts,
            documents=documents,
        )


def describe_chat_model(chat_model: Any) -> dict[str, str]:
    """Return {name, device, dtype} of a chat model, from its attributes or its `describe()`."""
    if chat_model is None:
        return {}
    values = {}
    for key in ("name", "device", "dtype"):
        value = getattr(chat_model, key, None)
        if value is not None:
            values[key] = str(value).removeprefix("torch.")
    if "name" not in values and hasattr(chat_model, "describe"):
        values["name"] = str(chat_model.describe())
    return values
