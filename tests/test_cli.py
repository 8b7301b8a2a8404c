"""The `hydra-chat` command line, run through its real entry point `app.cli.main`.

Each test gets a private memory folder (see conftest). Commands that need the
chat model load the real default model from the per-checkout cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `hydra-chat ARGV` in this process and return (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- usage ---------------------------------------------------------------------


def test_version_prints_package_version(capsys):
    from app import __version__

    code, out, err = run_cli(capsys, "--version")
    assert code == 0
    assert f"hydra-chat {__version__}" in out + err


@pytest.mark.parametrize(
    "command",
    ["ingest", "teach", "forget", "undo", "facts", "ask", "diagnostics", "prepare", "export", "import"],
)
def test_every_subcommand_has_help(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert f"usage: hydra-chat {command}" in out
    assert "Example" in out, f"`{command} --help` shows no example"


def test_help_states_units_of_options(capsys):
    _, out, _ = run_cli(capsys, "ingest", "--help")
    assert "SECONDS" in out and "seconds" in out


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["teach"], "SUBJECT"),
        (["undo", "abc"], "'abc'"),
        (["undo", "0"], "'0'"),
        (["diagnostics", "--budget", "huge"], "'huge'"),
        (["--device", "tpu", "facts"], "'tpu'"),
        (["ingest", "notes", "--interval", "-1"], "'-1'"),
        (["frobnicate"], "'frobnicate'"),
    ],
)
def test_bad_usage_exits_2_with_one_line(capsys, argv, names):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert names in lines[0], f"error line does not name the bad value: {lines[0]}"
    assert "--help" in lines[0], "error line does not say where to read the usage"
    assert out == ""


def test_teach_statement_that_cannot_be_parsed_is_usage_error(capsys):
    pytest.importorskip("app.memory", reason="the memory engine is not installed")
    code, _, err = run_cli(capsys, "teach", "hello there")
    assert code == 2
    assert "'hello there'" in err
    assert 'hydra-chat teach "locker code" 4312' in err


def test_ingest_missing_folder_names_it(capsys, tmp_path):
    missing = tmp_path / "no-such-notes"
    code, _, err = run_cli(capsys, "ingest", str(missing))
    assert code == 1
    assert err.strip() == f"hydra-chat: error: folder not found: {missing}; check the path"


def test_ingest_file_instead_of_folder(capsys, tmp_path):
    file = tmp_path / "a.txt"
    file.write_text("hello")
    code, _, err = run_cli(capsys, "ingest", str(file))
    assert code == 1
    assert "is a file, not a folder" in err


def test_diagnostics_unwritable_output_rejected_before_work(capsys, tmp_path):
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "diagnostics", "--out", str(tmp_path / "missing" / "RESULTS.md"))
    assert code == 2
    assert "does not exist" in err and "missing" in err
    assert time.perf_counter() - started < 5, "the path check ran after the claims"


def test_import_missing_archive(capsys, tmp_path):
    code, _, err = run_cli(capsys, "import", str(tmp_path / "nothing.tar"))
    assert code == 1
    assert "archive not found" in err and "nothing.tar" in err


def test_console_script_runs_as_a_process():
    script = Path(sys.executable).parent / "hydra-chat"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    done = subprocess.run([*command, "undo", "x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("hydra-chat undo: error: argument WRITE_ID: invalid write id 'x'")
