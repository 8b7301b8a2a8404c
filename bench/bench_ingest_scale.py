"""Ingestion at scale: throughput, peak memory and state size.

Three inputs, each ingested into a fresh memory in its own child process so
that every peak-memory figure starts from a clean interpreter:

- a real folder written outside this project: Debian's `python3.11-doc` HTML manual
  (`apt-get install python3.11-doc`), skipped when it is not installed;
- a generated folder of 10,000 small text and Markdown files;
- one generated plain-text file of 200 MB.

For each input the same files also run through the pipeline with a store
that drops the passages (extraction and splitting only), which is the peer
that shows what the memory engine adds. The 200 MB file is also read the
naive way (whole file into one string, then split), the peer that shows what
streaming saves in memory. Peak memory is the child's maximum resident set
size (`ru_maxrss`), and the baseline is the resident size just before the
ingest starts.

The memory engine takes a few hundred passages per CPU second, so the full
default run (the 200 MB file is 340,000 passages) needs well over an hour on
two cores. `--big-memory-mb` runs the real memory on smaller files while the
peers still read the 200 MB one.

Usage:
    python bench/bench_ingest_scale.py                 # full run, writes docs/bench-ingest.md
    python bench/bench_ingest_scale.py --big-memory-mb 2 20 --docs-subfolder library
    python bench/bench_ingest_scale.py --small-files 500 --big-mb 5 --big-memory-mb 1 --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LABELS = {"null": "extract only", "memory": "memory", "naive": "naive read"}
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")
SYLLABLES = "ka lo mi ne ru sa ti vo ze ba de fi gu ho ja ke li mo nu pa re si to vu wa ye zo".split()


# Generated inputs --------------------------------------------------------------


def make_vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def make_paragraph(rng: random.Random, vocabulary: list[str]) -> str:
    sentences = []
    for _ in range(rng.randint(2, 6)):
        words = rng.choices(vocabulary, k=rng.randint(6, 18))
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def make_small_folder(folder: Path, count: int, seed: int = 0) -> None:
    """Write `count` files of 0.3 to 3 KB in 100 subfolders (reused when complete)."""
    stamp = folder / f".complete-{count}-{seed}"
    if stamp.exists():
        return
    rng = random.Random(seed)
    vocabulary = make_vocabulary(rng)
    for index in range(count):
        sub = folder / f"group{index % 100:03}"
        sub.mkdir(parents=True, exist_ok=True)
        paragraphs = [make_paragraph(rng, vocabulary) for _ in range(rng.randint(1, 5))]
        if index % 2:
            text = f"# Note {index}\n\n" + "\n\n".join(paragraphs) + "\n"
            (sub / f"note{index:05}.md").write_text(text)
        else:
            (sub / f"note{index:05}.txt").write_text("\n\n".join(paragraphs) + "\n")
    stamp.write_text("")


def make_big_file(path: Path, megabytes: int, seed: int = 1) -> None:
    """Write a plain-text file of `megabytes` MB (reused when it has that size)."""
    target = megabytes * 1_000_000
    if path.exists() and path.stat().st_size == target:
        return
    rng = random.Random(seed)
    vocabulary = make_vocabulary(rng)
    # A pool of paragraphs reused in random order keeps generation fast.
    pool = [make_paragraph(rng, vocabulary) + "\n\n" for _ in range(20_000)]
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            block = "".join(rng.choices(pool, k=1000))
            block = block[: target - written]
            handle.write(block)
            written += len(block)


# One measurement, run in a child process ------------------------------------------


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class NullStore:
    """A store that consumes the passages and keeps nothing: extraction and splitting only."""

    def __init__(self) -> None:
        self.passages = 0

    def documents(self) -> list:
        return []

    def add_document(self, path, sha256, size, mtime, passages) -> int:
        count = sum(1 for _ in passages)
        self.passages += count
        return count

    def remove_document(self, path) -> None:
        pass

    def record_file_status(self, path, sha256, size, mtime, status, reason) -> None:
        pass


def measure(kind: str, target: Path, data_dir: Path) -> dict:
    """Run one ingest (`kind` is "memory", "null" or "naive") and return its numbers."""
    from app.ingest.pipeline import ingest_folder
    from app.ingest.splitter import split_passages

    result: dict = {"kind": kind, "target": str(target)}
    cpu_started = time.process_time()
    if kind == "naive":
        (path,) = [child for child in target.iterdir() if child.is_file()]
        baseline = rss_bytes()
        started = time.perf_counter()
        text = path.read_text(encoding="utf-8")
        result["passages"] = sum(1 for _ in split_passages(text))
        result["files_added"] = 1
        result["seconds"] = time.perf_counter() - started
        result["cpu_seconds"] = time.process_time() - cpu_started
        result["baseline_rss"] = baseline
        result["peak_rss"] = peak_rss_bytes()
        return result

    if kind == "null":
        store = NullStore()
        baseline = rss_bytes()
        report = ingest_folder(store, target)
        result.update(_report_numbers(report))
        result["cpu_seconds"] = time.process_time() - cpu_started
        result["baseline_rss"] = baseline
        result["peak_rss"] = peak_rss_bytes()
        return result

    from app.memory import Memory

    # As `hydra-chat ingest` opens it: documents never use the sentence encoder.
    with Memory.open(data_dir=data_dir, warm_up_encoder=False) as memory:
        before = memory.stats()
        baseline = rss_bytes()
        cpu_started = time.process_time()
        report = memory.ingest(target)
        result.update(_report_numbers(report))
        result["cpu_seconds"] = time.process_time() - cpu_started
        result["peak_rss"] = peak_rss_bytes()
        result["baseline_rss"] = baseline
        after = memory.stats()
        started = time.perf_counter()
        rerun = memory.ingest(target)
        result["rerun_seconds"] = time.perf_counter() - started
        result["rerun_unchanged"] = len(rerun.unchanged)
        result["state_bytes_before"] = before.state_bytes
        result["state_bytes_after"] = after.state_bytes
        result["state_file_bytes_before"] = before.state_file_bytes
        result["state_file_bytes_after"] = after.state_file_bytes
        result["documents"] = after.documents
        result["stored_passages"] = after.passages
    return result


def _report_numbers(report) -> dict:
    return {
        "files_added": len(report.added),
        "files_skipped": len(report.skipped),
        "files_failed": len(report.failed),
        "passages": report.passages,
        "bytes": report.bytes_read,
        "seconds": report.seconds,
    }


def folder_megabytes(target: Path) -> float:
    return sum(path.stat().st_size for path in target.rglob("*") if path.is_file()) / 1e6


def run_child(kind: str, target: Path, data_dir: Path, timeout_s: float) -> dict:
    """Run `measure` in a fresh interpreter and return its JSON result."""
    command = [sys.executable, __file__, "--child", kind, str(target), str(data_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"{kind} ingest of {target} failed:\n{completed.stderr[-4000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["input_mb"] = folder_megabytes(target)
    return result


# Report ----------------------------------------------------------------------------


def mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def format_row(name: str, result: dict) -> str:
    rate = result["passages"] / result["seconds"] if result["seconds"] else 0.0
    cpu_rate = result["passages"] / result["cpu_seconds"] if result["cpu_seconds"] else 0.0
    growth = result["peak_rss"] - result["baseline_rss"]
    return (
        f"| {name} | {result['input_mb']:.1f} | {result.get('files_added', 1)} | {result['passages']} | "
        f"{result['seconds']:.1f} | {rate:.0f} | {cpu_rate:.0f} | {mib(result['baseline_rss'])} | "
        f"{mib(result['peak_rss'])} | {mib(max(growth, 0))} |"
    )


def write_report(out: Path, sections: list[tuple[str, list[dict]]], args: argparse.Namespace) -> None:
    lines = [
        "# Ingestion at scale",
        "",
        "Command: `python bench/bench_ingest_scale.py "
        f"{' '.join(sys.argv[1:])}`",
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores ({platform.machine()}), a machine shared with other jobs, so "
        "times are noisy: compare rows of the same table.",
        "",
        "Each row is one ingest into a fresh memory in a fresh process. *memory* is the real",
        "engine; *extract only* runs the same walk, extraction and splitting into a store",
        "that drops the passages; *naive read* loads the whole file into one string and",
        "splits it. Peak RSS is the process's maximum resident set size; the baseline is",
        "the resident size just before the ingest started (modules loaded, memory open).",
        "",
    ]
    for title, results in sections:
        lines += [
            f"## {title}",
            "",
            "| run | input MB | files | passages | seconds | passages/s | passages per CPU s | baseline RSS "
            "| peak RSS | growth |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for result in results:
            lines.append(format_row(LABELS[result["kind"]], result))
        for memory in (result for result in results if result["kind"] == "memory"):
            lines += [
                "",
                f"Memory run on {memory['input_mb']:.1f} MB:",
                "",
                f"- state bytes before / after: {memory['state_bytes_before']} / {memory['state_bytes_after']}"
                f" ({'unchanged' if memory['state_bytes_before'] == memory['state_bytes_after'] else 'CHANGED'})",
                f"- state file bytes before / after: {memory['state_file_bytes_before']} / "
                f"{memory['state_file_bytes_after']}",
                f"- documents recorded: {memory['documents']}, passages stored: {memory['stored_passages']}",
                f"- re-run with nothing changed: {memory['rerun_seconds']:.1f} s, "
                f"{memory['rerun_unchanged']} files unchanged",
                f"- skipped: {memory['files_skipped']}, failed: {memory['files_failed']}",
            ]
        lines.append("")
    out.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-files", type=int, default=10_000,
                        help="number of small files; 0 skips that part (default: 10000)")
    parser.add_argument("--big-mb", type=int, default=200, help="size of the single big file in MB (default: 200)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hydra-bench-ingest",
                        help="folder for the generated inputs, reused between runs")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench-ingest.md", help="Markdown report to write")
    parser.add_argument("--big-memory-mb", type=int, nargs="+", default=[200],
                        help="sizes in MB of the big files ingested into the real memory (default: 200)")
    parser.add_argument("--docs-subfolder", default="", help="ingest only this subfolder of the Python manual")
    parser.add_argument("--skip-docs", action="store_true", help="do not ingest the Python manual")
    parser.add_argument("--skip-big", action="store_true", help="do not generate or ingest the big text file")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed for each child run")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "TARGET", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, target, data_dir = args.child
        print(json.dumps(measure(kind, Path(target), Path(data_dir))))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, list[dict]]] = []

    def run_section(title: str, runs: list[tuple[str, Path]]) -> None:
        results: list[dict] = []
        for kind, target in runs:
            data_dir = Path(tempfile.mkdtemp(prefix="memory-", dir=args.workdir))
            print(f"{title}: {LABELS[kind]} on {target} ...", file=sys.stderr, flush=True)
            results.append(run_child(kind, target, data_dir, args.timeout))
            print(f"  {json.dumps(results[-1])}", file=sys.stderr, flush=True)
        sections.append((title, results))

    docs = PYTHON_DOCS / args.docs_subfolder
    if not args.skip_docs and docs.is_dir():
        run_section(f"Python 3.11 HTML manual ({docs})", [("null", docs), ("memory", docs)])

    if args.small_files > 0:
        small = args.workdir / f"small-{args.small_files}"
        make_small_folder(small, args.small_files)
        run_section(f"{args.small_files} small files", [("null", small), ("memory", small)])

    if args.skip_big:
        write_report(args.out, sections, args)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    runs = []
    for megabytes in sorted({args.big_mb, *args.big_memory_mb}):
        folder = args.workdir / f"big-{megabytes}"
        folder.mkdir(exist_ok=True)
        make_big_file(folder / "big.txt", megabytes)
        if megabytes == args.big_mb:
            runs += [("null", folder), ("naive", folder)]
        if megabytes in args.big_memory_mb:
            runs.append(("memory", folder))
    sizes = ", ".join(f"{megabytes} MB" for megabytes in args.big_memory_mb)
    run_section(f"one big text file ({args.big_mb} MB; memory runs on {sizes})", runs)

    write_report(args.out, sections, args)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
