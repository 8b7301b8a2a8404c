"""Benchmark the memory engine's recall, forgetting, size and latency.

Runs the real engine (SQLite log, state checkpoints) on the evaluation facts
in file order: teach every fact, then the overwrite chains, then the forgets.
Every recall number is read from the constant-size state; exact
nearest-neighbour search over the same keys (`app.memory.recall.ExactIndex`)
is reported beside it. Then it measures the state and state-file size after
10 and after `--scale` writes, and write and recall latency at 1K and at
`--scale` stored facts.

Example:
    .venv/bin/python bench/bench_memory.py --out bench/results/memory.json
    .venv/bin/python bench/bench_memory.py --write-rule delta --skip-scale
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import paths  # noqa: E402
from app.memory import Memory, MemoryConfig, normalize_subject  # noqa: E402
from app.memory.recall import ExactIndex  # noqa: E402
from app.memory.semantic import prime_buckets, semantic_buckets  # noqa: E402

logger = logging.getLogger("bench_memory")

FIRST_NAMES = ["Ada", "Bo", "Cyd", "Dev", "Eun", "Fay", "Gus", "Hal", "Ira", "Jun", "Kai", "Lou", "Mo", "Ned"]
PLACES = ["harbour", "depot", "annex", "loft", "yard", "vault", "kiosk", "attic", "garage", "shed"]


def load_rows(path: Path) -> list[dict]:
    """Read the evaluation JSONL file; each row is a fact, an overwrite chain or a forget."""
    if not path.is_file():
        raise SystemExit(f"error: evaluation file {path} not found; set HYDRA_EVAL_DIR or pass --facts")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def apply_rows(memory: Memory, rows: list[dict]) -> dict[str, list[float]]:
    """Teach, overwrite and forget in file order; return the latency of each operation kind in seconds."""
    latency: dict[str, list[float]] = {"teach": [], "overwrite": [], "forget": []}
    for row in rows:
        if row["kind"] == "fact":
            start = time.perf_counter()
            memory.teach(row["subject"], row["value"], source="bench")
            latency["teach"].append(time.perf_counter() - start)
        elif row["kind"] == "overwrite":
            for value in row["values"]:
                start = time.perf_counter()
                memory.teach(row["subject"], value, source="bench")
                latency["overwrite"].append(time.perf_counter() - start)
        elif row["kind"] == "forget":
            start = time.perf_counter()
            memory.forget(row["subject"], source="bench")
            latency["forget"].append(time.perf_counter() - start)
        else:
            raise SystemExit(f"error: unknown row kind {row['kind']!r} in the evaluation file")
    return latency


def evaluate(memory: Memory, rows: list[dict]) -> dict:
    """Score every question of every subject once, from the state and with exact search."""
    facts = memory.facts()
    live = {normalize_subject(f.subject): f for f in facts}
    buckets = []
    for fact in facts:
        stored = memory.db.conn.execute("SELECT semantic FROM writes WHERE id = ?", (fact.write_id,)).fetchone()[0]
        buckets.append(json.loads(stored) if stored else None)
    exact = ExactIndex(
        memory.facts_state, [normalize_subject(f.subject) for f in facts], [f.write_id for f in facts], buckets
    )
    threshold = memory.config.fact_threshold

    # The last row of a subject gives its expected state at the end.
    final: dict[str, dict] = {}
    for row in rows:
        final[normalize_subject(row["subject"])] = row

    counts = dict(questions=0, top1=0, exact_top1=0, cleared=0, overwrite_questions=0, newest=0,
                  forget_questions=0, unknown=0, exact_top5=0, top5=0)
    failures = []
    target_scores: list[float] = []  # the taught item's score, per question of a live subject
    forgotten_scores: list[float] = []  # the best fact score, per question of a forgotten subject
    # The re-ranking weight was chosen on the even-numbered subjects (in
    # file order of their last row), so the odd-numbered ones are reported
    # apart as the half it was not fitted on.
    halves = {half: dict(questions=0, top1=0, overwrite_questions=0, newest=0) for half in ("even", "odd")}
    for index, (subject, row) in enumerate(final.items()):
        half = halves["even" if index % 2 == 0 else "odd"]
        for question in row["questions"]:
            recall = memory.recall(question, k=5)
            if row["kind"] == "forget":
                counts["forget_questions"] += 1
                counts["unknown"] += not recall.known
                forgotten_scores.append(max((i.score for i in recall.items if i.kind == "fact"), default=0.0))
                continue
            target = live[subject]
            counts["questions"] += 1
            top = recall.items[0] if recall.items else None
            hit = top is not None and top.kind == "fact" and top.item_id == target.write_id
            counts["top1"] += hit
            half["questions"] += 1
            half["top1"] += hit
            counts["top5"] += any(i.kind == "fact" and i.item_id == target.write_id for i in recall.items)
            counts["cleared"] += any(
                i.kind == "fact" and i.item_id == target.write_id and i.score >= threshold for i in recall.items
            )
            target_scores.append(
                max((i.score for i in recall.items if i.kind == "fact" and i.item_id == target.write_id), default=0.0)
            )
            ranked = exact.search(question, k=5, buckets=semantic_buckets(question) if memory.config.semantic else None)
            counts["exact_top1"] += bool(ranked) and ranked[0][0] == target.write_id
            counts["exact_top5"] += any(item_id == target.write_id for item_id, _ in ranked)
            if row["kind"] == "overwrite":
                counts["overwrite_questions"] += 1
                newest = top is not None and top.value == row["expected"]
                counts["newest"] += newest
                half["overwrite_questions"] += 1
                half["newest"] += newest
            if not hit and len(failures) < 20:
                failures.append({"question": question, "expected": target.subject,
                                 "got": top.subject if top else None, "score": top.score if top else None})
    n = counts["questions"]
    # The threshold that maximises the smaller of the two rates (taught
    # questions clearing it, forgotten ones staying below it).
    sweep = []
    for step in range(0, 101):
        t = step / 100
        cleared = sum(x >= t for x in target_scores) / max(len(target_scores), 1)
        below = sum(x < t for x in forgotten_scores) / max(len(forgotten_scores), 1)
        sweep.append((min(cleared, below), t, cleared, below))
    best = max(sweep)
    return {
        "best_threshold": {"threshold": best[1], "taught_clear": best[2], "forgotten_below": best[3]},
        "questions": n,
        "top1_state": counts["top1"] / n,
        "top1_exact": counts["exact_top1"] / n,
        "top5_state": counts["top5"] / n,
        "top5_exact": counts["exact_top5"] / n,
        "newest_after_overwrite": counts["newest"] / max(counts["overwrite_questions"], 1),
        "overwrite_questions": counts["overwrite_questions"],
        "forgotten_unknown": counts["unknown"] / max(counts["forget_questions"], 1),
        "forget_questions": counts["forget_questions"],
        "taught_clear_threshold": counts["cleared"] / n,
        "threshold": threshold,
        "halves": {
            name: {
                "questions": h["questions"],
                "top1_state": h["top1"] / max(h["questions"], 1),
                "overwrite_questions": h["overwrite_questions"],
                "newest_after_overwrite": h["newest"] / max(h["overwrite_questions"], 1),
            }
            for name, h in halves.items()
        },
        "failures": failures,
    }


def synthetic_fact(i: int) -> tuple[str, str]:
    """Return a distinct filler fact for the scale runs."""
    name = f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {i}"
    place = PLACES[(i // len(FIRST_NAMES)) % len(PLACES)]
    return f"shelf of {name} in the {place}", f"S-{i:05d}"


def measure_scale(config: MemoryConfig, scale: int) -> dict:
    """Write `scale` facts; report sizes after 10 and after `scale` writes and latency at 1K and `scale`.

    The filler subjects are encoded in batches up front. The latency probes
    teach new subjects and ask new questions, so they include the encoder.
    """
    marks = sorted({10, 1000, scale})
    out: dict = {"sizes": {}, "latency": {}}
    if config.semantic:
        prime_buckets([normalize_subject(synthetic_fact(i)[0]) for i in range(scale)])
    with tempfile.TemporaryDirectory() as tmp, Memory.open(Path(tmp) / "mem", config=config) as memory:
        written = 0
        for mark in marks:
            while written < mark:
                memory.teach(*synthetic_fact(written), source="bench")
                written += 1
            memory.save()
            stats = memory.stats()
            out["sizes"][mark] = {"state_bytes": stats.state_bytes, "state_file_bytes": stats.state_file_bytes}
            if mark < 1000:
                continue
            # Latency at this size: teach 100 new facts, then forget them again so
            # the size stays `mark`, and ask 100 questions about stored facts.
            writes, reads = [], []
            for j in range(100):
                subject, value = synthetic_fact(10 * scale + mark + j)
                start = time.perf_counter()
                memory.teach(subject, value, source="bench")
                writes.append(time.perf_counter() - start)
                memory.forget(subject, source="bench")
                stored, _ = synthetic_fact((j * 37) % mark)
                name = stored.split(" of ")[1].split(" in the ")[0]
                place = stored.rsplit(" ", 1)[1]
                start = time.perf_counter()
                memory.recall(f"Where is the shelf of {name} in the {place}?", k=5)
                reads.append(time.perf_counter() - start)
            out["latency"][mark] = {
                "write_ms_median": 1000 * statistics.median(writes),
                "write_ms_p90": 1000 * sorted(writes)[89],
                "recall_ms_median": 1000 * statistics.median(reads),
                "recall_ms_p90": 1000 * sorted(reads)[89],
            }
    return out


DOC_QUESTIONS_FILE = Path(__file__).resolve().parent / "data" / "python_manual_questions.jsonl"


def load_doc_questions(path: Path) -> list[dict]:
    """Read questions about a folder: JSONL rows with "question" and "pages" (paths relative to the folder)."""
    if not path.is_file():
        raise SystemExit(f"error: question file {path} not found; pass --docs-questions")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("question"), str) or not isinstance(row.get("pages"), list) or not row["pages"]:
                raise SystemExit(f"error: {path} line {number} needs a \"question\" string and a non-empty \"pages\" list")
            rows.append(row)
    return rows


def measure_documents(config: MemoryConfig, folder: Path, questions: list[dict]) -> dict:
    """Ingest `folder` into a fresh memory; report throughput and recall@5 (state and exact) on `questions`.

    A question counts as recalled when one of its pages is the source of a
    passage among the 5 best items.
    """
    with tempfile.TemporaryDirectory() as tmp, Memory.open(
        Path(tmp) / "mem", config=config, warm_up_encoder=False
    ) as memory:
        cpu_start = time.process_time()
        start = time.perf_counter()
        report = memory.ingest(folder)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        rows = memory.db.conn.execute("SELECT id, path, text FROM passages WHERE removed_by IS NULL").fetchall()
        exact = ExactIndex(memory.passages_state, [r[2] for r in rows], [r[0] for r in rows])
        path_of = {r[0]: r[1] for r in rows}
        hits = exact_hits = 0
        per_question = []
        for row in questions:
            expected = {str(folder / page) for page in row["pages"]}
            recall = memory.recall(row["question"], k=5)
            got = [item.origin.rsplit(":", 1)[0] for item in recall.items if item.kind == "passage"]
            exact_got = [path_of[i] for i, _ in exact.search(row["question"], k=5)]
            found = any(path in expected for path in got)
            exact_found = any(path in expected for path in exact_got)
            hits += found
            exact_hits += exact_found
            per_question.append({
                "question": row["question"], "pages": row["pages"], "state": found, "exact": exact_found,
                "state_top": [os.path.relpath(path, folder) for path in got[:3]],
            })
        stats = memory.stats()
    return {
        "folder": str(folder),
        "files": len(report.added),
        "skipped": len(report.skipped),
        "failed": len(report.failed),
        "passages": report.passages,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "passages_per_s": report.passages / seconds,
        "passages_per_cpu_s": report.passages / cpu_seconds,
        "recall_at_5_state": hits / len(questions),
        "recall_at_5_exact": exact_hits / len(questions),
        "state_bytes": stats.state_bytes,
        "questions": per_question,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=Path, default=None, help="evaluation JSONL (default: facts_dev.jsonl in the eval folder)")
    parser.add_argument("--scale", type=int, default=10_000, help="facts written for the size and latency runs")
    parser.add_argument("--skip-scale", action="store_true", help="skip the size and latency runs")
    parser.add_argument("--skip-facts", action="store_true", help="skip the evaluation facts")
    parser.add_argument("--docs", type=Path, default=None,
                        help="ingest this folder and ask the questions about it (e.g. /usr/share/doc/python3.11/html)")
    parser.add_argument("--docs-questions", type=Path, default=DOC_QUESTIONS_FILE,
                        help="JSONL questions about --docs with their expected pages (default: the Python manual's)")
    parser.add_argument("--write-rule", choices=["cleanup", "delta"], default="cleanup", help="state write rule to measure")
    parser.add_argument("--lexical-only", action="store_true", help="leave the MiniLM buckets out of fact keys")
    parser.add_argument("--refine-top", type=int, default=32, help="candidates re-scored by least squares (0: off)")
    parser.add_argument("--rerank-weight", type=float, default=MemoryConfig.rerank_weight,
                        help="weight of the sketch cosine when re-ranking fact candidates (0: state order only)")
    parser.add_argument("--passage-rerank-top", type=int, default=MemoryConfig.passage_rerank_top,
                        help="passage candidates of the state re-ranked by their keys' cosine (0: state order only)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    config = MemoryConfig(
        write_rule=args.write_rule, semantic=not args.lexical_only, refine_top=args.refine_top,
        rerank_weight=args.rerank_weight, passage_rerank_top=args.passage_rerank_top,
    )
    facts_path = args.facts or paths.eval_dir() / "facts_dev.jsonl"
    rows = load_rows(facts_path)
    results: dict = {
        "facts_file": str(facts_path),
        "config": config.metadata(),
        "rerank": {"weight": config.rerank_weight, "top": config.rerank_top, "passage_top": config.passage_rerank_top},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)",
    }

    if config.semantic and not args.skip_facts:
        # Encode every subject and question in batches first; the timed writes
        # and recalls then read the encoder's output from the cache.
        start = time.perf_counter()
        texts = [normalize_subject(row["subject"]) for row in rows]
        texts += [q for row in rows for q in row["questions"]]
        prime_buckets(texts)
        results["encode_seconds"] = time.perf_counter() - start
        results["encoded_texts"] = len(set(texts))

    if not args.skip_facts:
        with tempfile.TemporaryDirectory() as tmp, Memory.open(Path(tmp) / "mem", config=config) as memory:
            start = time.perf_counter()
            latency = apply_rows(memory, rows)
            results["write_seconds"] = time.perf_counter() - start
            results["writes"] = sum(len(v) for v in latency.values())
            results["write_ms_median"] = {k: 1000 * statistics.median(v) for k, v in latency.items() if v}
            start = time.perf_counter()
            results["recall"] = evaluate(memory, rows)
            results["evaluate_seconds"] = time.perf_counter() - start
            results["state_bytes"] = memory.stats().state_bytes
        r = results["recall"]
        logger.info(
            "top-1 %.3f (exact %.3f), newest after overwrite %.3f, forgotten unknown %.3f, taught clear %.3f",
            r["top1_state"], r["top1_exact"], r["newest_after_overwrite"], r["forgotten_unknown"],
            r["taught_clear_threshold"],
        )
        for name, h in r["halves"].items():
            logger.info("%s subjects: top-1 %.3f, newest after overwrite %.3f (%d questions)",
                        name, h["top1_state"], h["newest_after_overwrite"], h["overwrite_questions"])

    if not args.skip_scale:
        results["scale"] = measure_scale(config, args.scale)
        for mark, size in results["scale"]["sizes"].items():
            logger.info("after %d writes: state %d bytes, file %d bytes", mark, size["state_bytes"], size["state_file_bytes"])
        for mark, lat in results["scale"]["latency"].items():
            logger.info("at %d facts: write %.1f ms, recall %.1f ms (medians)", mark, lat["write_ms_median"], lat["recall_ms_median"])

    if args.docs:
        results["documents"] = measure_documents(config, args.docs.resolve(), load_doc_questions(args.docs_questions))
        d = results["documents"]
        logger.info(
            "documents: %d passages, %.1f passages/s (%.1f per CPU second), recall@5 %.2f (exact %.2f)",
            d["passages"], d["passages_per_s"], d["passages_per_cpu_s"], d["recall_at_5_state"], d["recall_at_5_exact"],
        )

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    else:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
