"""HydraModel (the backbone) and HydraLM (backbone + language-model head)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hydralm.config import HydraConfig
from hydralm.layers.block import HydraBlock
from hydralm.layers.mlp import SwiGLU
from hydralm.layers.norm import RMSNorm
from hydralm.layers.packing import make_column_major, packed_linear
from hydralm.layers.sliding_window import SlidingWindowAttention
from hydralm.state import HydraState

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

# Tokens per segment of a long forward call. With the model of
# bench/bench_model.py on a shared 2-core CPU, one 65,536-token call in one
# piece took about 2.5x as long as a 32,768-token call; segments keep the
# cost per token flat.
SEGMENT_SIZE = 8192


@dataclass
class HydraOutput:
    """Output of `HydraLM.forward`.

    Attributes:
        logits: (B, T, V), or (B, logits_to_keep, V) when only the last ones were asked for.
        state: the state after the input; pass it to the next call.
        loss: mean shifted cross-entropy over labels != -100, when labels were given.
        last_hidden_state: (B, T, C) output of the final norm, or only its last
            logits_to_keep positions when those were asked for.
    """

    logits: torch.Tensor
    state: HydraState
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class HydraModel(nn.Module):
    """Token embedding, the stack of HydraBlocks and the final RMSNorm."""

    def __init__(self, config: HydraConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(HydraBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HydraState:
        """Return the state of `batch_size` empty sequences.

        `dtype` (default: the embedding dtype) applies to conv tails and SWA
        caches; DeltaNet matrices are always float32.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        weight = self.embed_tokens.weight
        device = torch.device(device) if device is not None else weight.device
        dtype = dtype or weight.dtype
        layers = [layer.init_state(batch_size, device=device, dtype=dtype) for layer in self.layers]
        position = torch.zeros(batch_size, dtype=torch.long, device=device)
        return HydraState(layers, position, self.config.fingerprint())

    def forward(
        self,
        input_ids: torch.Tensor,
        state: HydraState | None = None,
        attention_mask: torch.Tensor | None = None,
        hidden_to_keep: int = 0,
        reuse_state: bool = False,
    ) -> tuple[torch.Tensor, HydraState]:
        """Run input_ids (B, T) from `state`; return hidden states and the new state.

        The hidden states are (B, T, C), or (B, hidden_to_keep, C) for the last
        positions only when hidden_to_keep > 0. With reuse_state=True the
        sliding-window caches of `state` may be updated in place (see
        `HydraLM.step`).
        """
        B, T = check_input_ids(input_ids, self.config.vocab_size)
        if state is None:
            state = self.init_state(B, device=input_ids.device)
        else:
            check_state(state, self.config, B, input_ids.device)
        mask, padded = check_attention_mask(attention_mask, B, T, input_ids.device)

        # Positions count real tokens only, so a left-padded prompt gets the
        # same positions as the prompt alone.
        past_length = state.position  # (B,)
        if padded:
            positions = past_length[:, None] + torch.cumsum(mask.long(), dim=1) - 1  # (B, T)
        else:
            positions = past_length[:, None] + torch.arange(T, device=input_ids.device)  # (B, T)

        # Long inputs run in segments that thread the state, as a caller
        # streaming them would: the result is the same, and the working set
        # per token (activations, score blocks) stays the same for any T.
        layer_states = state.layers
        outputs = []
        for start in range(0, T, SEGMENT_SIZE):
            end = min(start + SEGMENT_SIZE, T)
            segment_past = past_length if start == 0 else past_length + mask[:, :start].sum(dim=1)
            hidden_states = self.embed_tokens(input_ids[:, start:end].long())  # (B, T_seg, C)
            new_layers = []
            plans = {}  # attention block plans, shared by the sliding-window layers
            for layer, layer_state in zip(self.layers, layer_states):
                hidden_states, layer_state = layer(
                    hidden_states,
                    layer_state,
                    positions[:, start:end],
                    mask[:, start:end],
                    segment_past,
                    padded,
                    reuse_state,
                    plans,
                )
                new_layers.append(layer_state)
            layer_states = new_layers
            outputs.append(self.norm(hidden_states))
            if hidden_to_keep and len(outputs) > 1:
                outputs = [torch.cat(outputs, dim=1)[:, -hidden_to_keep:]]
        hidden_states = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)  # (B, T, C)
        if hidden_to_keep:
            hidden_states = hidden_states[:, -hidden_to_keep:]
        new_position = past_length + mask.sum(dim=1)
        return hidden_states, HydraState(layer_states, new_position, state.config_fingerprint)


class HydraLM(nn.Module):
    """HydraLM: a hybrid of Gated DeltaNet and sliding-window attention layers.

    The inference state has a fixed size however many tokens the model has
    read. `forward` on a whole sequence, on any split into chunks that threads
    the returned state, and `step` one token at a time give the same logits.

    Example:
        model = HydraLM(HydraConfig())
        out = model(input_ids)                      # out.logits (B, T, V)
        logits, state = model.step(next_ids, out.state)
    """

    def __init__(self, config: HydraConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.model = HydraModel(config)
        # With tied embeddings the head reuses embed_tokens.weight and has no
        # parameter of its own, so `lm_head.weight` is absent from state_dict.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    @property
    def output_weight(self) -> torch.Tensor:
        """(V, C) weight of the output projection: lm_head's, or the embedding when tied."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def pack_weights(self) -> None:
        """Lay the weights out for fast one-token steps, with the same outputs up to float rounding.

        Joins the q/k/v projections of attention layers and the gate/up
        projections of every MLP into one product each and stores every
        weight matrix column-major, so one-row products stream the weights
        faster and run on every thread (see `hydralm.layers.packing`).
        Parameter names, shapes and values do not change. Call it after
        moving the model to its device and dtype: moving it afterwards
        undoes the joining (safely). Training still works, through the
        separate projections. `state_dict()` then returns non-contiguous
        views, which `torch.save` accepts; safetensors' `save_file` needs
        `.contiguous()` copies.
        """
        for module in self.modules():
            if isinstance(module, (SlidingWindowAttention, SwiGLU)):
                module.pack()
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.is_contiguous():
                make_column_major(module)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HydraState:
        """Return the state of `batch_size` empty sequences (see `HydraModel.init_state`)."""
        return self.model.init_state(batch_size, device=device, dtype=dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        state: HydraState | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        reuse_state: bool = False,
    ) -> HydraOutput:
        """Run the model on input_ids (B, T).

        Args:
            input_ids: (B, T) integer token ids in [0, vocab_size).
            state: state from an earlier call, or None to start fresh.
            attention_mask: (B, T) 1 at real tokens, 0 at padding. Padded
                tokens are skipped wherever they sit: they never change the
                state or the positions of the real tokens. Logits at padded
                positions are unspecified.
            labels: (B, T) targets; position t predicts labels[:, t + 1];
                -100 is ignored.
            logits_to_keep: 0 for all logits, k > 0 for the last k only
                (long prefills need only the last).
            reuse_state: let the model write into the sliding-window caches
                of `state` instead of copying them; `state` must not be used
                again afterwards. Decode loops that drop the old state use it.

        Returns:
            HydraOutput with logits, the new state and the loss when labels are given.
        """
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an integer >= 0, got {logits_to_keep!r}")
        if labels is not None:
            if logits_to_keep:
                raise ValueError("labels need every logit; pass logits_to_keep=0 with labels")
            if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
                shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}")

        hidden_states, new_state = self.model(
            input_ids,
            state=state,
            attention_mask=attention_mask,
            hidden_to_keep=logits_to_keep,
            reuse_state=reuse_state,
        )
        logits = packed_linear(hidden_states, self.output_weight)  # (B, T, V)

        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
        return HydraOutput(logits=logits, state=new_state, loss=loss, last_hidden_state=hidden_states)

    def step(
        self, token_ids: torch.Tensor, state: HydraState, reuse_state: bool = False
    ) -> tuple[torch.Tensor, HydraState]:
        """Feed one token per sequence: token_ids (B,) -> (logits (B, V), new state).

        By default `state` is left as it was. With reuse_state=True the new
        token is written into `state`'s sliding-window caches in place, which
        saves copying every window on each token; `state` must then be
        dropped in favour of the returned one.
        """
        if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
            shape = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
            raise ValueError(f"step() takes token_ids of shape (B,), got {shape}")
        if state is None:
            raise ValueError("step() needs a state; create one with model.init_state(batch_size)")
        output = self.forward(token_ids[:, None], state=state, reuse_state=reuse_state)
        return output.logits[:, 0], output.state


def check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> tuple[int, int]:
    """Check input_ids is a non-empty (B, T) integer tensor within the vocabulary; return (B, T)."""
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor of shape (B, T), got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"input_ids must hold at least one token per row, got shape {(B, T)}")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return B, T


def check_attention_mask(
    attention_mask: torch.Tensor | None, batch_size: int, length: int, device: torch.device
) -> tuple[torch.Tensor, bool]:
    """Return the mask as bool (B, T) and whether it has any padding."""
    if attention_mask is None:
        return torch.ones(batch_size, length, dtype=torch.bool, device=device), False
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != (batch_size, length):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch_size, length)} "
            f"to match input_ids"
        )
    if attention_mask.dtype != torch.bool:
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must contain only 0 (padding) and 1 (real token)")
        attention_mask = attention_mask != 0
    mask = attention_mask.to(device)
    return mask, not bool(mask.all())


def check_state(state: HydraState, config: HydraConfig, batch_size: int, device: torch.device) -> None:
    """Raise ValueError when `state` does not belong to this model or this batch."""
    if not isinstance(state, HydraState):
        raise ValueError(f"state must be a HydraState, got {type(state).__name__}")
    fingerprint = config.fingerprint()
    if state.config_fingerprint != fingerprint:
        raise ValueError(
            f"state was made by a model with config fingerprint {state.config_fingerprint!r}, "
            f"but this model's is {fingerprint!r}; use a state from model.init_state()"
        )
    if state.layer_types != config.layer_types:
        raise ValueError(f"state has layer types {state.layer_types}, expected {config.layer_types}")
    if state.batch_size != batch_size:
        raise ValueError(
            f"state has batch size {state.batch_size} but input_ids has {batch_size} rows; "
            f"use a state made with init_state({batch_size})"
        )
    if state.device != device:
        raise ValueError(f"state is on {state.device} but input_ids is on {device}; move one with .to()")
