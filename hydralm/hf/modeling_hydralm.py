"""HydraLMForCausalLM: HydraLM as a transformers ``PreTrainedModel`` with ``generate()``.

The model wraps the native modules under the native parameter names
(``model.*`` and, when embeddings are untied, ``lm_head.weight``), so a state
dict moves between ``hydralm.HydraLM`` and ``HydraLMForCausalLM`` unchanged.

Its cache is ``HydraCache``, a ``transformers.Cache`` that carries one
``HydraState``. transformers' ``generate()`` (5.25) passes it as ``cache=``
and reads it back from ``output.cache``. The prompt is prefilled once, then
``generate`` slices its input to the last token (``next_sequence_length =
1``) and the model reads one token per step from the recurrent state, so the
prefix is never computed again.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from hydralm.hf.configuration_hydralm import HydraLMConfig
from hydralm.layers.gated_deltanet import GatedDeltaNet
from hydralm.layers.rope import RotaryEmbedding
from hydralm.layers.short_conv import ShortConvolution
from hydralm.model import IGNORE_INDEX, HydraLM, HydraModel
from hydralm.state import HydraState

logger = logging.getLogger(__name__)

__all__ = ["HydraCache", "HydraLMForCausalLM", "HydraLMPreTrainedModel"]


class HydraCache(Cache):
    """A ``transformers.Cache`` holding HydraLM's constant-size recurrent state.

    Attributes:
        state: the ``HydraState`` after every token read so far, or None before the prefill.
        seen_tokens: input columns read so far, left padding included; this is
            what ``get_seq_length`` returns, so ``generate`` slices a continued
            prompt correctly.

    The cache is updated in place by each forward call, as transformers'
    caches are. Its size never grows with ``seen_tokens``. It cannot be
    cropped, because a recurrent state cannot drop its last tokens.
    """

    def __init__(self, state: HydraState | None = None, seen_tokens: int = 0) -> None:
        super().__init__(layers=[])
        self.state = state
        self.seen_tokens = seen_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # no limit: the state has a fixed size for any length

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def batch_size(self) -> int:
        return -1 if self.state is None else self.state.batch_size

    def nbytes(self) -> int:
        """Bytes of the carried state (0 before the prefill)."""
        return 0 if self.state is None else self.state.nbytes()

    def reset(self) -> None:
        self.state = None
        self.seen_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        raise NotImplementedError(
            "HydraCache cannot be cropped: a recurrent state cannot forget its last tokens; "
            "keep a copy of the state (HydraState.clone()) to return to"
        )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.state is not None:
            self.state = self.state.select(beam_idx.to(self.state.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.state is not None:
            self.state = self.state.select(indices.to(self.state.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            index = torch.arange(self.state.batch_size, device=self.state.device).repeat_interleave(repeats)
            self.state = self.state.select(index)

    def __repr__(self) -> str:
        return f"HydraCache(seen_tokens={self.seen_tokens}, state={self.state!r})"


class HydraLMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading settings shared by HydraLM's transformers classes."""

    config: HydraLMConfig
    config_class = HydraLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["HydraBlock"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        # Linear, Embedding and RMSNorm get transformers' defaults (normal
        # with initializer_range; norms at one), as in the native model.
        super()._init_weights(module)
        if isinstance(module, ShortConvolution):
            # The native model keeps torch's Conv1d default for the short convolutions.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, GatedDeltaNet):
            # The native initialisation (Mamba2's): A ~ U(0, 16), dt ~ logU(1e-3, 1e-1)
            # and dt_bias = softplus^-1(dt). init.copy_ skips loaded weights.
            heads = module.num_heads
            a_log = torch.empty(heads).uniform_(0, 16).clamp_min(1e-4).log()
            log_dt = torch.rand(heads) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)
            dt = log_dt.exp().clamp_min(1e-4)
            init.copy_(module.A_log, a_log)
            init.copy_(module.dt_bias, dt + torch.log(-torch.expm1(-dt)))
        elif isinstance(module, RotaryEmbedding):
            # inv_freq is a non-persistent buffer, so it is never in a checkpoint.
            head_dim = module.inv_freq.shape[0] * 2
            inv_freq = 1.0 / (
                self.config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
            )
            init.copy_(module.inv_freq, inv_freq)


class HydraLMForCausalLM(HydraLMPreTrainedModel, GenerationMixin):
    """HydraLM with a language-model head, usable with transformers' ``generate()``.

    Example::

        model = HydraLMForCausalLM(HydraLMConfig())
        out = model(input_ids)                          # out.logits, out.cache (HydraCache)
        model.generate(input_ids, max_new_tokens=8)     # prefill once, then one step per token
    """

    def __init__(self, config: HydraLMConfig) -> None:
        super().__init__(config)
        hydra_config = config.to_hydra_config()
        self.model = HydraModel(hydra_config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.post_init()

    # -- conversion ---------------------------------------------------------

    @classmethod
    def from_native(cls, native: HydraLM) -> HydraLMForCausalLM:
        """Build the transformers model with the weights of a native ``HydraLM``."""
        if not isinstance(native, HydraLM):
            raise ValueError(f"from_native needs a hydralm.HydraLM, got {type(native).__name__}")
        weight = native.model.embed_tokens.weight
        # Every parameter is overwritten by the load, so random init is skipped.
        # NOTE: no_init_weights patches torch.nn.init process-wide while it
        # runs, so a module built at the same time in another thread is left
        # uninitialised; transformers' own loading has the same window.
        with init.no_init_weights():
            model = cls(HydraLMConfig.from_hydra_config(native.config))
        model = model.to(device=weight.device, dtype=weight.dtype)
        model.load_state_dict(native.state_dict(), strict=True)
        return model

    def to_native(self) -> HydraLM:
        """Return a native ``HydraLM`` with a copy of these weights."""
        with init.no_init_weights():
            native = HydraLM(self.config.to_hydra_config())
        weight = self.model.embed_tokens.weight
        native = native.to(device=weight.device, dtype=weight.dtype)
        native.load_state_dict(self.state_dict(), strict=True)
        return native

    # -- transformers hooks -------------------------------------------------

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear | None:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a DynamicCache: forward creates a HydraCache
        # on the first call, as transformers' Mamba models do with theirs.
        return False

    @property
    def output_weight(self) -> torch.Tensor:
        """(V, C) weight of the output projection: lm_head's, or the embedding when tied."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, **kwargs):
        # position_ids are derived from the state and the mask inside the
        # model, so generate()'s own copy is dropped.
        kwargs.pop("position_ids", None)
        return super().prepare_inputs_for_generation(input_ids, cache=cache, attention_mask=attention_mask, **kwargs)

    # -- forward ------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: HydraCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        past_key_values: HydraCache | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Run the model on ``input_ids`` (B, T), continuing from ``cache`` when given.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: 1 at real tokens and 0 at left padding. Only its
                last T columns are read, so it may be (B, T) or, as
                ``generate`` passes it, (B, cached columns + T).
            cache: a HydraCache from an earlier call; updated in place and returned.
            labels: (B, T) targets; position t predicts labels[:, t + 1]; -100 is ignored.
            use_cache: return a cache (default ``config.use_cache``).
            inputs_embeds: not supported; the state is driven by token ids.
            logits_to_keep: 0 for all logits, k > 0 for the last k.
            past_key_values: the older name of ``cache``.
            return_dict: False returns the output as a tuple (loss, logits, cache),
                leaving out the entries that are None.
        """
        if inputs_embeds is not None:
            raise ValueError("HydraLMForCausalLM does not take inputs_embeds; pass input_ids")
        if input_ids is None:
            raise ValueError("input_ids is missing: HydraLMForCausalLM needs token ids (B, T)")
        if cache is None and past_key_values is not None:
            cache = past_key_values
        if cache is not None and not isinstance(cache, HydraCache):
            raise ValueError(
                f"cache must be a HydraCache, got {type(cache).__name__}; let generate() create it or pass "
                "the cache returned by an earlier call"
            )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        T = input_ids.shape[-1] if input_ids.dim() == 2 else 0

        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] > T:
            attention_mask = attention_mask[:, -T:]  # generate() passes the mask of the whole sequence

        state = cache.state if cache is not None else None
        # Like transformers' own caches, a HydraCache is updated in place: its
        # old state is replaced below, so its sliding-window buffers can be reused.
        hidden_states, new_state = self.model(
            input_ids, state=state, attention_mask=attention_mask, reuse_state=use_cache and cache is not None
        )
        kept = hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states
        logits = F.linear(kept, self.output_weight)  # (B, T, V)

        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
                )
            if logits_to_keep:
                raise ValueError("labels need every logit; pass logits_to_keep=0 with labels")
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)

        if use_cache:
            cache = cache if cache is not None else HydraCache()
            cache.state = new_state
            cache.seen_tokens += T
        else:
            cache = None
        output = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
        use_return_dict = self.config.use_return_dict if return_dict is None else return_dict
        return output if use_return_dict else output.to_tuple()
