"""Shared test setup: every test gets private data and config folders, and
the converted chat model is cached once per checkout (it takes tens of seconds
to build) under .venv, which `git clean` and a fresh clone both start without.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HYDRA_CACHE_DIR", str(REPO / ".venv" / "hydra-test-cache"))


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    """Point the memory and config folders at a fresh temporary folder."""
    monkeypatch.setenv("HYDRA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HYDRA_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Undo the thread count `app.cli.main` sets, so each test starts with torch's own."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
