"""Conversation persistence and privacy of logs: chat state beside the memory, no contents at INFO."""

from __future__ import annotations

import logging
import os
import stat

import torch

from app.memory import Memory, MemoryConfig
from hydralm import HydraConfig, HydraLM

SMALL = MemoryConfig(fact_key_dim=1 << 10, fact_value_dim=32, passage_key_dim=1 << 10, passage_value_dim=32, semantic=False)


def tiny_config(**overrides) -> HydraConfig:
    fields = dict(
        vocab_size=64, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, sliding_window=32, num_sink_tokens=4, chunk_size=64,
    )
    fields.update(overrides)
    return HydraConfig(**fields)


def test_chat_state_survives_reopen(tmp_path):
    torch.manual_seed(0)
    model = HydraLM(tiny_config()).eval()
    with torch.no_grad():
        state = model(torch.randint(0, 64, (1, 40)), state=model.init_state(1)).state
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as memory:
        assert memory.load_chat_state(model.config) is None
        memory.save_chat_state(state)
    mode = stat.S_IMODE(os.stat(folder / "chat_state.safetensors").st_mode)
    assert mode == 0o600
    with Memory.open(folder, config=SMALL) as memory:
        loaded = memory.load_chat_state(model.config)
    assert loaded is not None
    for name, tensor in state.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name


def test_chat_state_of_other_model_is_not_used(tmp_path):
    model = HydraLM(tiny_config()).eval()
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as memory:
        memory.save_chat_state(model.init_state(1))
        assert memory.load_chat_state(tiny_config(hidden_size=32)) is None


def test_info_logs_hold_no_memory_contents(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with Memory.open(tmp_path / "mem", config=SMALL) as memory:
        memory.teach("secret vault combination", "31-41-59")
        memory.recall("What is the secret vault combination?")
        memory.forget("secret vault combination")
        memory.log_turn("user", "tell me the secret vault combination")
    assert "vault" not in caplog.text
    assert "31-41-59" not in caplog.text
