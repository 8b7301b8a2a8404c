"""The `hydra-chat` command line.

Without a subcommand it opens the Textual app. The subcommands are thin
layers over the memory engine (`app.memory`), the chat model
(`app.chat_model`), the answer path (`app.assistant`) and the claim checks
(`app.diagnostics`), for scripts and for people who prefer a shell.

Exit codes: 0 success, 1 a failed operation or claim, 2 bad usage. Every
error is one line on stderr that names the value and the fix.

Example:
    hydra-chat teach "locker code" 4312
    hydra-chat ask --json "What is my locker code?"
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import sys
import signal
import threading
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from app import __version__

logger = logging.getLogger(__name__)

PROG = "hydra-chat"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEVICES = ("auto", "cpu", "cuda", "mps")
BUDGETS = ("smoke", "paper")


class CliError(Exception):
    """A failed command: `message` goes to stderr as one line, `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _UsageExit(Exception):
    """Raised by the parser in place of `sys.exit`, so `main` can return the code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """An argparse parser that reports bad usage as one line and never exits the process."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise _UsageExit(EXIT_USAGE)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            print(message.rstrip("\n"), file=sys.stderr)
        raise _UsageExit(status)


# ---------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for `hydra-chat` and its subcommands."""
    parser = _Parser(
        prog=PROG,
        description="A private memory assistant for the terminal. Without a command, opens the app.",
        epilog='Example: hydra-chat teach "locker code" 4312',
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="memory folder (state file and SQLite log); default: the platform's user data folder "
        "or $HYDRA_DATA_DIR",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help="where the chat model runs; auto picks cuda, then mps, then cpu (default: auto, "
        "or $HYDRA_DEVICE)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log progress to stderr; repeat (-vv) for debug detail, which may include memory contents",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    ingest = commands.add_parser(
        "ingest",
        help="read a folder of documents into memory",
        description="Read every supported file under FOLDER into memory. A re-run skips unchanged "
        "files, re-reads changed ones and forgets deleted ones. Exits with 1 when a file failed "
        "(for example a broken PDF); skipped files (binary, too large) do not count.",
        epilog="Example: hydra-chat ingest ~/notes --watch",
    )
    ingest.add_argument("folder", type=Path, metavar="FOLDER", help="folder to read, recursively")
    ingest.add_argument(
        "--watch",
        action="store_true",
        help="after the first pass, keep following the folder and ingest again when a file "
        "changes; stop with Ctrl-C (exit code 0)",
    )
    ingest.add_argument(
        "--interval",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="with --watch, seconds between two checks of the files' modification times (default: 2)",
    )
    ingest.set_defaults(handler=cmd_ingest)

    teach = commands.add_parser(
        "teach",
        help="teach a fact, or overwrite it",
        description="Teach SUBJECT = VALUE. Teaching a known subject again overwrites it; the old "
        "value stays in the log. A single argument is read as a statement such as "
        '"remember that my locker code is 4312".',
        epilog='Examples: hydra-chat teach "locker code" 4312\n'
        '          hydra-chat teach "remember that the wifi password at the cabin is x7"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    teach.add_argument("subject", metavar="SUBJECT", help='what the fact is about, or a whole "remember that …" statement')
    teach.add_argument("value", metavar="VALUE", nargs="?", help="the value to remember")
    teach.set_defaults(handler=cmd_teach)

    forget = commands.add_parser(
        "forget",
        help="forget a fact",
        description="Erase SUBJECT from memory. The log keeps the record, so `undo` can restore it.",
        epilog='Example: hydra-chat forget "locker code"',
    )
    forget.add_argument("subject", metavar="SUBJECT", help="the subject to forget")
    forget.set_defaults(handler=cmd_forget)

    undo = commands.add_parser(
        "undo",
        help="revert one logged write",
        description="Revert the write with id WRITE_ID (see `hydra-chat facts --history SUBJECT`).",
        epilog="Example: hydra-chat undo 17",
    )
    undo.add_argument("write_id", type=_write_id, metavar="WRITE_ID", help="id of the write to revert")
    undo.set_defaults(handler=cmd_undo)

    facts = commands.add_parser(
        "facts",
        help="list live facts, or the history of one subject",
        description="List the live facts, or with --history every logged write of one subject.",
        epilog='Example: hydra-chat facts --history "locker code"',
    )
    facts.add_argument("--history", metavar="SUBJECT", help="show every write of SUBJECT, oldest first")
    facts.add_argument("--json", action="store_true", help="print JSON instead of a table")
    facts.set_defaults(handler=cmd_facts)

    stats = commands.add_parser(
        "stats",
        help="print the memory's folder, state size and counts",
        description="Print where the memory lives, the size of its state (which stays the same "
        "however much it has read) and the counts in its log.",
        epilog="Example: hydra-chat stats --json",
    )
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(handler=cmd_stats)

    ask = commands.add_parser(
        "ask",
        help="ask a question and print the answer with its sources",
        description="Answer QUESTION from memory with the chat model. The answer streams to stdout, "
        "followed by the memory items it used.",
        epilog='Example: hydra-chat ask --json "What is my locker code?"',
    )
    ask.add_argument("question", metavar="QUESTION", help="the question")
    ask.add_argument(
        "--json",
        action="store_true",
        help='print {"answer", "sources": [{kind, text, origin, score}], "known"} instead of streaming',
    )
    ask.set_defaults(handler=cmd_ask)

    diagnostics = commands.add_parser(
        "diagnostics",
        help="run the six claim checks",
        description="Run the six claim checks of the HydraLM model and print one line per claim. "
        "Exits with 1 when any claim fails and with 2 on bad usage, before any check runs.",
        epilog="Example: hydra-chat diagnostics --budget paper --out RESULTS.md --json results.json",
    )
    diagnostics.add_argument(
        "--budget",
        choices=BUDGETS,
        default="smoke",
        help="smoke: all six in about a minute on a laptop CPU; paper: the reference sizes (default: smoke)",
    )
    diagnostics.add_argument("--out", type=Path, metavar="FILE", help="write the Markdown report to FILE")
    diagnostics.add_argument("--json", type=Path, metavar="FILE", dest="json_path", help="write the results as JSON to FILE")
    diagnostics.add_argument(
        "--only",
        type=_check_names,
        metavar="NAMES",
        help="run only these checks: comma-separated names as printed in each result line, "
        "or 'reference' for the six gates of the reference run",
    )
    diagnostics.set_defaults(handler=cmd_diagnostics)

    prepare = commands.add_parser(
        "prepare",
        help="convert the default chat model once, with a progress bar",
        description="Verify the installed SmolLM2-135M-Instruct file and convert it into a HydraLM "
        "checkpoint in the cache folder. Later starts load that checkpoint.",
        epilog="Example: hydra-chat prepare --force",
    )
    prepare.add_argument("--force", action="store_true", help="convert again even when a checkpoint exists")
    prepare.set_defaults(handler=cmd_prepare)

    export = commands.add_parser(
        "export",
        help="write the whole memory into one archive",
        description="Write the memory (state and log) into the archive FILE.",
        epilog="Example: hydra-chat export memory.tar",
    )
    export.add_argument("file", type=Path, metavar="FILE", help="archive to write")
    export.set_defaults(handler=cmd_export)

    import_ = commands.add_parser(
        "import",
        help="replace the memory with one read from an archive",
        description="Read the memory (state and log) from the archive FILE written by `export`.",
        epilog="Example: hydra-chat import memory.tar",
    )
    import_.add_argument("file", type=Path, metavar="FILE", help="archive to read")
    import_.set_defaults(handler=cmd_import)
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; give seconds, e.g. 2 or 0.5") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}; it must be more than 0 seconds")
    return value


def _check_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(
            f"invalid check list {text!r}; give names separated by commas, e.g. reference or mqar_recall,drop_in"
        )
    return list(dict.fromkeys(names))  # each name once, in the order given


def _write_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid write id {text!r}; give the number shown by `hydra-chat facts --history SUBJECT`"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid write id {text!r}; write ids start at 1")
    return value


# ---------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hydra-chat` with `argv` (default: `sys.argv[1:]`) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageExit as stop:
        return stop.code
    _configure_logging(args.verbose)

    handler: Callable[[argparse.Namespace], int] = getattr(args, "handler", cmd_app)
    try:
        _check_device(args)
        _configure_threads()
        return handler(args)
    except CliError as error:
        _print_error(error.message)
        return error.code
    except KeyboardInterrupt:
        _print_error("interrupted; nothing after the last reported step was written")
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - the CLI turns every library error into one line
        logger.debug("command %s failed", args.command, exc_info=True)
        _print_error(_describe_error(error))
        return EXIT_FAILED


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING
    if verbosity == 1:
        level = logging.INFO
    elif verbosity > 1:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbosity == 0:
        # transformers draws a "Loading weights" bar on stderr for every model
        # it loads (the sentence encoder included); only -v shows it. The
        # variable is read when transformers is first imported, which is later.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _check_device(args: argparse.Namespace) -> None:
    """Reject an explicit --device that this machine lacks before any command runs."""
    if args.device in (None, "auto"):
        return
    from hydralm.device import select_device

    try:
        select_device(args.device)
    except (RuntimeError, ValueError) as error:
        raise CliError(f"--device {args.device}: {error}", EXIT_USAGE) from error


THREADS_VARIABLE = "HYDRA_TORCH_THREADS"


def default_torch_threads(cpu_count: int | None) -> int:
    """Return the torch intra-op threads to use: every core but one, at least one.

    The spare core keeps the interface and the memory engine responsive while
    the model runs. On the 2-core development machine, with the other core
    busy, one thread also decoded several times faster than two, because each
    small operation of a decode step otherwise waits for a descheduled thread.
    """
    return max(1, (cpu_count or 1) - 1)


def _configure_threads() -> None:
    """Set torch's thread count from $HYDRA_TORCH_THREADS or `default_torch_threads`."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise CliError(f"${THREADS_VARIABLE}={value!r} is invalid; set a whole number of threads >= 1", EXIT_USAGE)
    else:
        threads = default_torch_threads(os.cpu_count())
    import torch

    torch.set_num_threads(threads)


def _print_error(message: str) -> None:
    one_line = " ".join(message.split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)


def _describe_error(error: BaseException) -> str:
    """Turn a library error into a message; the library's own text already names value and fix."""
    if isinstance(error, KeyError) and type(error).__str__ is KeyError.__str__ and error.args:
        # A plain KeyError's str() quotes its argument, which reads badly in a sentence.
        return str(error.args[0])
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"file not found: {error.filename}"
    if isinstance(error, PermissionError) and error.filename:
        return f"permission denied: {error.filename}; check the folder's owner and mode"
    text = str(error) or type(error).__name__
    return text


# ---------------------------------------------------------------------------
# Access to the other parts of the product, imported on first use so that
# `--help` stays fast and a missing part is one clear error.


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise CliError(
            f"{module} cannot be imported ({error}); reinstall hydra-chat with `make setup`"
        ) from error


def _open_memory(args: argparse.Namespace, warm_up_encoder: bool = True):
    memory_module = _import("app.memory")
    data_dir = args.data_dir
    if data_dir is not None and data_dir.exists() and not data_dir.is_dir():
        raise CliError(f"--data-dir {data_dir} is a file, not a folder; give a folder path", EXIT_USAGE)
    try:
        return memory_module.Memory.open(data_dir=data_dir, warm_up_encoder=warm_up_encoder)
    except memory_module.MemoryInUseError as error:
        raise CliError(f"{error}; close the other hydra-chat first, or wait for it to finish") from error


def _device(args: argparse.Namespace) -> str:
    """Return the --device choice; "auto" lets the library read $HYDRA_DEVICE, then pick."""
    return args.device or "auto"


def _as_dict(record: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    if isinstance(record, dict):
        return dict(record)
    return {key: value for key, value in vars(record).items() if not key.startswith("_")}


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _format_time(value: Any) -> str:
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, str):
        try:
            return _format_time(dt.datetime.fromisoformat(value))
        except ValueError:
            return value
    return str(value)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]
    print("  ".join(header.ljust(width) for header, width in zip(headers, widths)).rstrip())
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


# ---------------------------------------------------------------------------
# Commands


def cmd_app(args: argparse.Namespace) -> int:
    """Open the Textual app."""
    from app.tui.app import HydraChatApp

    app = HydraChatApp(data_dir=args.data_dir, device=_device(args))
    app.run()
    return app.return_code or EXIT_OK


def cmd_teach(args: argparse.Namespace) -> int:
    """Teach (or overwrite) one fact."""
    subject, value = args.subject, args.value
    if value is None:
        memory_module = _import("app.memory")
        parsed = memory_module.parse_statement(subject)
        if parsed is None:
            raise CliError(
                f"cannot read a subject and value from {subject!r}; give both, as in "
                '`hydra-chat teach "locker code" 4312`, or a statement such as '
                '"remember that my locker code is 4312"',
                EXIT_USAGE,
            )
        subject, value = parsed
    if not subject.strip() or not value.strip():
        raise CliError("the subject and the value must not be empty", EXIT_USAGE)

    with _open_memory(args) as memory:
        record = memory.teach(subject, value, source="cli")
    write = _as_dict(record)
    print(f"remembered {subject!r} = {value!r} (write {write.get('write_id', '?')})")
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    """Forget one fact."""
    with _open_memory(args) as memory:
        record = memory.forget(args.subject, source="cli")
    write = _as_dict(record)
    print(f"forgot {args.subject!r} (write {write.get('write_id', '?')}; `hydra-chat undo` reverts it)")
    return EXIT_OK


def cmd_undo(args: argparse.Namespace) -> int:
    """Revert one logged write."""
    with _open_memory(args) as memory:
        record = memory.undo(args.write_id)
    write = _as_dict(record)
    print(f"reverted write {args.write_id} (new write {write.get('write_id', '?')})")
    return EXIT_OK


def cmd_facts(args: argparse.Namespace) -> int:
    """List live facts or one subject's history."""
    # Both lists come from the SQLite log, so the sentence encoder is not loaded.
    with _open_memory(args, warm_up_encoder=False) as memory:
        if args.history is not None:
            records = [_as_dict(record) for record in memory.history(args.history)]
            if not records and not args.json:
                raise CliError(
                    f"no writes logged for subject {args.history!r}; `hydra-chat facts` lists the known subjects"
                )
        else:
            records = [_as_dict(fact) for fact in memory.facts()]

    if args.json:
        print(json.dumps(records, indent=2, default=_json_default, ensure_ascii=False))
        return EXIT_OK
    if args.history is not None:
        rows = [
            (
                record.get("write_id", ""),
                record.get("op", record.get("operation", "")),
                record.get("value") if record.get("value") is not None else "",
                _format_time(record.get("created_at", record.get("time", ""))),
                record.get("source", ""),
                record.get("supersedes") or "",
            )
            for record in records
        ]
        _print_table(("write", "operation", "value", "time", "source", "supersedes"), rows)
        return EXIT_OK
    if not records:
        print('memory holds no facts yet; teach one with `hydra-chat teach "locker code" 4312`')
        return EXIT_OK
    rows = [
        (
            record.get("write_id", ""),
            record.get("subject", ""),
            record.get("value", ""),
            _format_time(record.get("taught_at", "")),
            record.get("source", ""),
        )
        for record in records
    ]
    _print_table(("write", "subject", "value", "taught", "source"), rows)
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the memory folder, the state size and the log's counts."""
    # Everything comes from the state file and the SQLite log, so the
    # sentence encoder is not loaded.
    with _open_memory(args, warm_up_encoder=False) as memory:
        stats = memory.stats()
        folder = memory.data_dir
    record = {"folder": str(folder), **dataclasses.asdict(stats)}
    record["log_bytes"] = sum(
        path.stat().st_size for path in folder.iterdir() if path.name.startswith("memory.db") and path.is_file()
    )
    if args.json:
        print(json.dumps(record, indent=2))
        return EXIT_OK
    rows = [
        ("folder", record["folder"]),
        ("state", f"{_format_bytes(stats.state_bytes)} in memory, {_format_bytes(stats.state_file_bytes)} on disk"),
        ("log", _format_bytes(record["log_bytes"])),
        ("facts", stats.facts),
        ("documents", stats.documents),
        ("passages", stats.passages),
        ("writes", stats.writes),
        ("words read", stats.tokens_streamed),
    ]
    _print_table(("item", "value"), rows)
    return EXIT_OK


def _format_bytes(count: int) -> str:
    return f"{count:,} bytes ({count / 2**20:.1f} MiB)"


def cmd_ask(args: argparse.Namespace) -> int:
    """Answer one question from memory."""
    if not args.question.strip():
        raise CliError("the question is empty; give it in quotes, e.g. `hydra-chat ask \"What is my locker code?\"`", EXIT_USAGE)
    chat_model_module = _import("app.chat_model")
    assistant_module = _import("app.assistant")
    chat_model = chat_model_module.load_chat_model(device=_device(args))

    streamed_text: list[str] = []

    def write_token(token: str) -> None:
        streamed_text.append(token)
        sys.stdout.write(token)
        sys.stdout.flush()

    with _open_memory(args) as memory:
        assistant = assistant_module.Assistant(memory, chat_model)
        answer = assistant.answer(args.question, on_token=None if args.json else write_token)

    if args.json:
        print(json.dumps(answer.to_json(), indent=2, ensure_ascii=False))
        return EXIT_OK

    if not streamed_text:
        # Nothing streamed (an empty answer); print the final text as it is.
        sys.stdout.write(answer.text)
    sys.stdout.write("\n")
    if answer.sources:
        print("\nsources:")
        for item in answer.sources:
            print(f"  [{item.kind}] {item.text}  ({item.origin}, score {float(item.score):.2f})")
    return EXIT_OK


def cmd_diagnostics(args: argparse.Namespace) -> int:
    """Run the six claim checks."""
    for path in (args.out, args.json_path):
        if path is not None:
            _check_writable(path)
    diagnostics = _import("app.diagnostics")
    try:
        diagnostics.validate_request(args.budget, args.out, args.json_path, args.only)
    except ValueError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    return int(
        diagnostics.run_diagnostics(
            budget=args.budget, out=args.out, json_path=args.json_path, device=_device(args), only=args.only
        )
    )


def _check_writable(path: Path) -> None:
    """Reject an output path before any work starts."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise CliError(f"output path {path} is a folder; give a file name", EXIT_USAGE)
    if not parent.is_dir():
        raise CliError(f"output folder {parent} does not exist; create it or choose another path", EXIT_USAGE)
    # os.access trusts the mode bits, which root ignores and /proc-like
    # filesystems misreport, so the file is really opened for appending.
    existed = path.exists()
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise CliError(f"output path {path} is not writable ({error.strerror}); choose another path", EXIT_USAGE) from error
    if not existed:
        path.unlink(missing_ok=True)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Convert the default chat model with a progress bar."""
    chat_model_module = _import("app.chat_model")
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("preparing the default chat model", total=1.0)

        def progress(stage: str, fraction: float) -> None:
            bar.update(task, completed=fraction, description=stage)

        path = chat_model_module.prepare_chat_model(force=args.force, progress=progress)
    print(f"default chat model ready at {path}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Write the memory into one archive."""
    if args.file.is_dir():
        raise CliError(f"{args.file} is a folder; give the archive's file name, e.g. memory.tar", EXIT_USAGE)
    with _open_memory(args, warm_up_encoder=False) as memory:
        memory.export(args.file)
    print(f"memory written to {args.file}")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    """Read the memory from one archive."""
    if not args.file.is_file():
        raise CliError(f"archive not found: {args.file}; give a file written by `hydra-chat export`")
    memory_module = _import("app.memory")
    memory_module.Memory.import_archive(args.file, data_dir=args.data_dir)
    print(f"memory read from {args.file}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# Ingest


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest a folder once, or follow it with --watch."""
    folder: Path = args.folder.expanduser()
    if not folder.exists():
        raise CliError(f"folder not found: {folder}; check the path")
    if not folder.is_dir():
        raise CliError(f"{folder} is a file, not a folder; give the folder that contains it")

    # Taken before the first pass, so a file changed during that pass is read again.
    snapshot = _folder_snapshot(folder) if args.watch else {}
    report = _ingest_once(args, folder)
    if not args.watch:
        return EXIT_FAILED if report.failed else EXIT_OK

    print(f"watching {folder} every {args.interval:g} s; press Ctrl-C to stop", file=sys.stderr)
    # Ctrl-C sets an event instead of raising KeyboardInterrupt wherever the
    # main thread happens to be: an exception raised between taking and
    # releasing the memory's lock could leave it held and hang the close.
    # A running pass is cancelled at its next file; a second Ctrl-C
    # interrupts at once.
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def request_stop(signum, frame) -> None:
            stop.set()
            signal.signal(signal.SIGINT, previous)

        previous = signal.signal(signal.SIGINT, request_stop)
    try:
        while not stop.wait(args.interval):
            current = _folder_snapshot(folder)
            if current == snapshot:
                continue
            snapshot = current
            _ingest_once(args, folder, stop)
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    print("stopped watching", file=sys.stderr)
    return EXIT_OK


def _folder_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Map every file under `folder` to (mtime in ns, size); symlinked folders are not followed."""
    snapshot: dict[str, tuple[int, int]] = {}
    for root, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            snapshot[path] = (stat.st_mtime_ns, stat.st_size)
    return snapshot


def _ingest_once(args: argparse.Namespace, folder: Path, cancel: threading.Event | None = None):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    cancel = cancel or threading.Event()
    # Documents never use the sentence encoder, so it is not loaded.
    with _open_memory(args, warm_up_encoder=False) as memory, Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[files]}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(f"ingest {folder}", total=None, files="", rate="")

        def progress(update) -> None:
            bar.update(
                task,
                total=max(update.bytes_total, 1),
                completed=update.bytes_done,
                files=f"{update.files_done}/{update.files_total} files",
                rate=f"{update.passages} passages, {update.passages_per_s:.0f}/s",
            )

        try:
            report = memory.ingest(folder, progress=progress, cancel=cancel)
        except KeyboardInterrupt:
            cancel.set()
            raise

    _print_ingest_report(report)
    return report


def _print_ingest_report(report) -> None:
    print(report.summary())
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}")
    for path, reason in report.failed:
        print(f"  failed  {path}: {reason}")
    # With --watch the summaries are the output; a pipe must see each one as it happens.
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
