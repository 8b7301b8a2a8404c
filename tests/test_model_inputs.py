"""HydraLM inputs: errors that name the value, the loss, logits_to_keep, device choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hydralm import HydraConfig, HydraLM, select_device
from hydralm.device import available_devices


@pytest.fixture(scope="module")
def model() -> HydraLM:
    torch.manual_seed(0)
    config = HydraConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, sliding_window=4, num_sink_tokens=1,
        layer_types=["deltanet", "swa"],
    )
    return HydraLM(config).eval()


def test_loss_is_shifted_cross_entropy_ignoring_minus_100(model):
    input_ids = torch.randint(0, 40, (2, 9))
    labels = input_ids.clone()
    labels[0, 3] = -100
    output = model(input_ids, labels=labels)
    logits = output.logits[:, :-1].reshape(-1, 40)
    targets = labels[:, 1:].reshape(-1)
    keep = targets != -100
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    assert model.model.layers[0].mixer.A_log.grad is not None
    model.zero_grad()


def test_logits_to_keep_returns_last_positions(model):
    input_ids = torch.randint(0, 40, (1, 12))
    with torch.no_grad():
        full = model(input_ids).logits
        last = model(input_ids, logits_to_keep=1).logits
        last3 = model(input_ids, logits_to_keep=3).logits
    assert last.shape == (1, 1, 40)
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(last3, full[:, -3:])


@pytest.mark.parametrize(
    ("input_ids", "message"),
    [
        (torch.tensor([1, 2, 3]), r"input_ids must have shape \(B, T\), got \(3,\)"),
        (torch.zeros(1, 2, 3, dtype=torch.long), r"input_ids must have shape \(B, T\), got \(1, 2, 3\)"),
        (torch.zeros(1, 3), "input_ids must be an integer tensor, got dtype torch.float32"),
        (torch.zeros(1, 3, dtype=torch.bool), "input_ids must be an integer tensor, got dtype torch.bool"),
        (torch.zeros(1, 0, dtype=torch.long), r"at least one token per row, got shape \(1, 0\)"),
        (torch.tensor([[1, 40]]), r"token id 40 is outside the vocabulary \[0, 40\)"),
        (torch.tensor([[-1, 3]]), r"token id -1 is outside the vocabulary \[0, 40\)"),
        ([[1, 2]], "input_ids must be a torch.Tensor of shape"),
    ],
)
def test_bad_input_ids_raise(model, input_ids, message):
    with pytest.raises(ValueError, match=message):
        model(input_ids)


def test_bad_attention_mask_raises(model):
    input_ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\), expected \(2, 5\)"):
        model(input_ids, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        model(input_ids, attention_mask=torch.full((2, 5), 2))
    with pytest.raises(ValueError, match="attention_mask must be a torch.Tensor"):
        model(input_ids, attention_mask=[[1] * 5] * 2)


def test_state_from_other_batch_or_config_raises(model):
    input_ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="state has batch size 3 but input_ids has 2 rows"):
        model(input_ids, state=model.init_state(3))
    other = HydraLM(HydraConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, sliding_window=8, num_sink_tokens=1,
        layer_types=["deltanet", "swa"],
    ))
    with pytest.raises(ValueError, match="config fingerprint"):
        model(input_ids, state=other.init_state(2))
    with pytest.raises(ValueError, match="state must be a HydraState, got dict"):
        model(input_ids, state={})


def test_bad_labels_and_options_raise(model):
    input_ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels must have the shape of input_ids \(1, 4\), got \(1, 3\)"):
        model(input_ids, labels=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels need every logit"):
        model(input_ids, labels=input_ids, logits_to_keep=1)
    with pytest.raises(ValueError, match="logits_to_keep must be an integer >= 0, got -1"):
        model(input_ids, logits_to_keep=-1)


def test_bad_step_arguments_raise(model):
    state = model.init_state(1)
    with pytest.raises(ValueError, match=r"step\(\) takes token_ids of shape \(B,\), got \(1, 1\)"):
        model.step(torch.zeros(1, 1, dtype=torch.long), state)
    with pytest.raises(ValueError, match=r"step\(\) needs a state"):
        model.step(torch.zeros(1, dtype=torch.long), None)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        model.init_state(0)


def test_errors_leave_state_untouched(model):
    input_ids = torch.randint(0, 40, (1, 6))
    with torch.no_grad():
        state = model(input_ids).state
    before = {name: t.clone() for name, t in state.tensors().items()}
    with pytest.raises(ValueError):
        model(torch.tensor([[1, 99]]), state=state)
    for name, tensor in state.tensors().items():
        assert torch.equal(tensor, before[name]), name


def test_select_device_on_cpu_machine(monkeypatch):
    monkeypatch.delenv("HYDRA_DEVICE", raising=False)
    device, dtype = select_device("cpu")
    assert device.type == "cpu"
    assert dtype == torch.float32
    device, _ = select_device("auto")
    assert device.type == available_devices()[0]
    monkeypatch.setenv("HYDRA_DEVICE", "cpu")
    assert select_device()[0].type == "cpu"


def test_select_device_rejects_unknown_and_absent(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown device 'tpu'; use one of \['auto', 'cuda', 'mps', 'cpu'\]"):
        select_device("tpu")
    with pytest.raises(ValueError, match="device preference must be a string"):
        select_device(0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"device 'cuda' was requested but is not available; available devices: \[.*'cpu'\]"):
        select_device("cuda")


def test_select_device_prefers_cuda_with_bfloat16(monkeypatch):
    monkeypatch.delenv("HYDRA_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    device, dtype = select_device()
    assert device.type == "cuda"
    assert dtype == torch.bfloat16
