"""Benchmark answer fidelity: does the answer state what memory holds?

Teaches the evaluation facts through the real memory engine in file order
(facts, overwrite chains, forgets), then asks questions end to end through
`app.assistant.Assistant` with the real HydraLM chat model, once per
strategy on the same questions:

- `faithful`: the product's path (selection, copy-biased decoding, checks,
  quoting as the fallback);
- `quote`: the same selection, with the fact quoted and no model decoding;
- `plain`: greedy generation with the top 5 recalled items in the prompt.

Question groups: taught facts (live, never overwritten), overwrite chains
(expected: the last value), forgotten subjects, and subjects never taught
(the templates of taught facts with fresh names). Each group is a seeded
random sample of the stated size because every answer runs the model on a
shared CPU; `--taught 0` (and the like) asks every question of a group.

Metrics per group and strategy:
- value: the expected value is stated in the answer text (`states_value`);
- wrong: the answer states a value of another fact, or a number, code or
  name that neither the question nor the expected value contains;
- unknown: `known` is false and the answer says it does not know;
- latency: seconds per answer, median and 95th percentile.

Example:
    .venv/bin/python bench/bench_answers.py --taught 60 --overwrite 40 \\
        --forgotten 40 --never 40 --out bench/results/answers.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import paths  # noqa: E402
from app.assistant import Assistant, AssistantSettings  # noqa: E402
from app.assistant.fidelity import states_value, value_spans  # noqa: E402
from app.assistant.prompting import says_unknown  # noqa: E402
from app.memory import Memory  # noqa: E402

logger = logging.getLogger("bench_answers")

GROUPS = ("taught", "overwrite", "forgotten", "never")
STRATEGY_SETTINGS = {
    "faithful": AssistantSettings(log_turns=False),
    "quote": AssistantSettings(log_turns=False, fact_phrasing="quote"),
    "plain": AssistantSettings(log_turns=False, strategy="plain"),
}

# Fresh names for subjects that were never taught; any that occurs in the
# evaluation file is dropped before use.
FIRST_NAMES = """Anouk Bastian Cosima Dario Elin Fenna Gideon Halvard Ilse Joaquin Katrin Lorcan Maren
Nils Odile Pavel Rune Saskia Thiago Ulla Vesna Wendel Xavi Yara Zeno""".split()
LAST_NAMES = """Albrecht Brennan Castell Dumont Eriksen Falk Gallo Horvat Ingram Jovanovic Kessler Lindgren
Marchetti Novotny Oyelaran Pereira Quist Rasmussen Sorensen Toivonen Underhill Valdivia Westergaard
Yilmaz Zielinski""".split()
PLACE_NAMES = """Lagos Hobart Varna Tromso Mombasa Arequipa Windhoek Ushuaia Saffron Thistle Marigold
Obsidian Lantern Halcyon Tamarisk Wren""".split()
FRESH_WORDS = "basalt cinder fjord gossamer lichen quarry sorrel tinder umber vellum".split()


def load_rows(path: Path) -> list[dict]:
    """Read the evaluation JSONL file; each row is a fact, an overwrite chain or a forget."""
    if not path.is_file():
        raise SystemExit(f"error: evaluation file {path} not found; set HYDRA_EVAL_DIR or pass --facts")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def apply_rows(memory: Memory, rows: list[dict]) -> None:
    """Teach, overwrite and forget in file order."""
    for row in rows:
        if row["kind"] == "fact":
            memory.teach(row["subject"], row["value"], source="bench")
        elif row["kind"] == "overwrite":
            for value in row["values"]:
                memory.teach(row["subject"], value, source="bench")
        elif row["kind"] == "forget":
            memory.forget(row["subject"], source="bench")


def never_taught(rows: list[dict], count: int, rng: random.Random, corpus_rows: list[dict]) -> list[dict]:
    """Make `count` subjects from taught templates with every name replaced by a fresh one.

    A name is a capitalized word or a word with a letter and a digit
    ("tundra-36"). Two capitalized words in a row are a first and a last
    name. Plain numbers ("team Nimbus 1") are kept.
    """
    corpus = " ".join(json.dumps(row) for row in corpus_rows).casefold()

    def fresh(pool: list[str]) -> list[str]:
        return [name for name in pool if not re.search(rf"\b{name.casefold()}\b", corpus)]

    first_names, last_names, places, words = (
        fresh(FIRST_NAMES), fresh(LAST_NAMES), fresh(PLACE_NAMES), fresh(FRESH_WORDS)
    )
    facts = [row for row in rows if row["kind"] == "fact"]
    subjects: dict[str, dict] = {}
    while len(subjects) < count:
        row = rng.choice(facts)
        replacements: dict[str, str] = {}
        for match in re.finditer(r"[A-Za-z]+-\d+|\b([A-Z][a-z]+)( [A-Z][a-z]+)?\b", row["subject"]):
            token = match.group(0)
            if "-" in token:
                replacements[token] = f"{rng.choice(words)}-{rng.randint(10, 99)}"
            elif match.group(2):
                first, last = token.split(" ")
                replacements[first] = rng.choice(first_names)
                replacements[last] = rng.choice(last_names)
            else:
                replacements[token] = rng.choice(places)
        if not replacements:
            continue

        def swap(text: str) -> str:
            for old, new in replacements.items():
                text = re.sub(rf"\b{re.escape(old)}\b", new, text)
            return text

        subject = swap(row["subject"])
        if subject not in subjects:
            subjects[subject] = {"kind": "never", "subject": subject, "questions": [swap(q) for q in row["questions"]]}
    return list(subjects.values())


def select_subjects(rows: list[dict], count: int, seed: int) -> list[dict]:
    """Keep the rows of `count` fact subjects drawn with `seed` (0: every row), in file order."""
    subjects = [row["subject"] for row in rows if row["kind"] == "fact"]
    if count <= 0 or count >= len(subjects):
        return rows
    kept = set(random.Random(seed).sample(subjects, count))
    return [row for row in rows if row["subject"] in kept]


def question_record(group: str, question: str, subject: str, expected: str | None) -> dict:
    return {"group": group, "question": question, "subject": subject, "expected": expected}


def build_questions(rows: list[dict], sizes: dict[str, int], seed: int, corpus_rows: list[dict]) -> list[dict]:
    """Return the questions of each group, sampled with `seed` (size 0: all)."""
    rng = random.Random(seed)
    overwritten = {row["subject"] for row in rows if row["kind"] == "overwrite"}
    forgotten = {row["subject"] for row in rows if row["kind"] == "forget"}
    pools: dict[str, list[dict]] = {group: [] for group in GROUPS}
    for row in rows:
        if row["kind"] == "fact" and row["subject"] not in overwritten | forgotten:
            pools["taught"] += [question_record("taught", q, row["subject"], row["value"]) for q in row["questions"]]
        elif row["kind"] == "overwrite" and row["subject"] not in forgotten:
            pools["overwrite"] += [
                question_record("overwrite", q, row["subject"], row["expected"]) for q in row["questions"]
            ]
        elif row["kind"] == "forget":
            pools["forgotten"] += [question_record("forgotten", q, row["subject"], None) for q in row["questions"]]
    for row in never_taught(rows, 100, rng, corpus_rows):
        pools["never"] += [question_record("never", row["questions"][0], row["subject"], None)]

    questions = []
    for group in GROUPS:
        pool = pools[group]
        size = sizes[group]
        questions += pool if size <= 0 or size >= len(pool) else rng.sample(pool, size)
    return questions


def wrong_value(answer: str, question: str, subject: str, expected: str | None, all_values: set[str]) -> list[str]:
    """List the values an answer states that are not the expected one.

    A value-like span that the question, the fact's subject or the expected
    value contains is not wrong: "The IP address of the willow-11 server is
    198.51.100.49." repeats "IP" from the subject "IP address of the
    willow-11 server", and restating what was asked states no value.
    """
    allowed = "\n".join((question, subject, expected or ""))
    wrong = [
        value
        for value in all_values
        if value != expected
        and not states_value(allowed, value)
        and states_value(answer, value)
    ]
    for span in value_spans(answer):
        if not states_value(allowed, span) and span not in wrong:
            wrong.append(span)
    return wrong


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def interleave(questions: list[dict]) -> list[dict]:
    """Order questions round-robin over the groups, so a run cut short by its budget covers every group."""
    by_group = [[q for q in questions if q["group"] == group] for group in GROUPS]
    ordered = []
    for index in range(max((len(group) for group in by_group), default=0)):
        ordered += [group[index] for group in by_group if index < len(group)]
    return ordered


def run_strategy(
    memory, chat_model, name: str, questions: list[dict], all_values: set[str], budget_s: float = 0.0
) -> list[dict]:
    """Ask the questions with one strategy; return one record per answer.

    With `budget_s` > 0 the strategy stops asking once that many seconds
    have passed, and only the questions asked so far count.
    """
    assistant = Assistant(memory, chat_model, STRATEGY_SETTINGS[name])
    records = []
    started_strategy = time.perf_counter()
    for index, item in enumerate(questions):
        if budget_s > 0 and time.perf_counter() - started_strategy > budget_s:
            logger.warning("%s: budget of %.0f s spent after %d of %d questions", name, budget_s, index, len(questions))
            break
        started = time.perf_counter()
        answer = assistant.answer(item["question"])
        seconds = time.perf_counter() - started
        records.append(
            {
                **item,
                "strategy": name,
                "answer": answer.text,
                "known": answer.known,
                "route": answer.route,
                "method": answer.method,
                "seconds": seconds,
                "value_ok": bool(item["expected"]) and states_value(answer.text, item["expected"]),
                "wrong": wrong_value(answer.text, item["question"], item["subject"], item["expected"], all_values),
                "unknown_ok": (not answer.known) and says_unknown(answer.text),
            }
        )
        logger.info("%s %d/%d %.1f s: %r -> %r", name, index + 1, len(questions), seconds, item["question"], answer.text)
    return records


def summarize(records: list[dict]) -> dict:
    """Compute the rates and latencies of one strategy's records."""
    summary: dict = {"groups": {}}
    for group in GROUPS:
        rows = [r for r in records if r["group"] == group]
        if not rows:
            continue
        entry = {"questions": len(rows), "wrong": sum(bool(r["wrong"]) for r in rows) / len(rows)}
        if group in ("taught", "overwrite"):
            entry["value"] = sum(r["value_ok"] for r in rows) / len(rows)
        else:
            entry["unknown"] = sum(r["unknown_ok"] for r in rows) / len(rows)
        summary["groups"][group] = entry
    seconds = [r["seconds"] for r in records]
    summary["wrong_all"] = sum(bool(r["wrong"]) for r in records) / len(records)
    summary["latency_median_s"] = statistics.median(seconds)
    summary["latency_p95_s"] = percentile(seconds, 0.95)
    summary["methods"] = {m: sum(r["method"] == m for r in records) for m in sorted({r["method"] for r in records})}
    return summary


def markdown(results: dict) -> str:
    """Render the summaries as a Markdown table."""
    lines = [
        "| strategy | taught: value | overwrite: value | forgotten: unknown | never taught: unknown "
        "| wrong value (all) | latency median / p95 (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, summary in results["summaries"].items():
        groups = summary["groups"]

        def cell(group: str, key: str) -> str:
            entry = groups.get(group)
            return "–" if entry is None else f"{entry[key]:.3f} ({entry['questions']})"

        lines.append(
            f"| {name} | {cell('taught', 'value')} | {cell('overwrite', 'value')} | {cell('forgotten', 'unknown')} "
            f"| {cell('never', 'unknown')} | {summary['wrong_all']:.3f} "
            f"| {summary['latency_median_s']:.2f} / {summary['latency_p95_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=Path, default=None, help="evaluation JSONL (default: facts_dev.jsonl)")
    for group, default in (("taught", 60), ("overwrite", 40), ("forgotten", 40), ("never", 40)):
        parser.add_argument(f"--{group}", type=int, default=default, help=f"{group} questions to sample (0: all)")
    parser.add_argument("--strategies", default="quote,faithful,plain", help="comma-separated, of faithful, quote, plain")
    parser.add_argument(
        "--subjects", type=int, default=0, help="teach only this many fact subjects, with their overwrites and forgets (0: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the question sample")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--window", type=int, default=512,
        help="sliding-window size of the chat model in tokens; every prompt here is shorter, so answers match any larger window",
    )
    parser.add_argument(
        "--budget-s", type=float, default=0.0,
        help="seconds per strategy; questions run round-robin over the groups and stop when it is spent (0: no limit)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write every answer and the summaries as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    unknown = [name for name in strategies if name not in STRATEGY_SETTINGS]
    if unknown:
        raise SystemExit(f"error: unknown strategies {unknown}; choose from {sorted(STRATEGY_SETTINGS)}")
    torch.set_num_threads(args.threads)

    from app.chat_model import load_chat_model

    all_rows = load_rows(args.facts or paths.eval_dir() / "facts_dev.jsonl")
    rows = select_subjects(all_rows, args.subjects, args.seed)
    sizes = {group: getattr(args, group) for group in GROUPS}
    questions = interleave(build_questions(rows, sizes, args.seed, all_rows))
    all_values = {row["value"] for row in all_rows if row["kind"] == "fact"}
    all_values |= {value for row in all_rows if row["kind"] == "overwrite" for value in row["values"]}

    chat_model = load_chat_model(device="cpu", window=args.window)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "load_average_start": os.getloadavg(),
        "model": chat_model.describe(),
        "seed": args.seed,
        "taught_subjects": sum(row["kind"] == "fact" for row in rows),
        "writes": sum(len(row.get("values", [None])) for row in rows),
        "sizes": {group: sum(q["group"] == group for q in questions) for group in GROUPS},
        "summaries": {},
        "records": [],
    }
    with tempfile.TemporaryDirectory() as data_dir, Memory.open(data_dir) as memory:
        started = time.perf_counter()
        apply_rows(memory, rows)
        results["write_seconds"] = time.perf_counter() - started
        for name in strategies:
            records = run_strategy(memory, chat_model, name, questions, all_values, args.budget_s)
            results["records"] += records
            results["summaries"][name] = summarize(records)
            logger.info("%s: %s", name, json.dumps(results["summaries"][name]))
            if args.out is not None:
                # Written after each strategy, so a long run keeps what it finished.
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")

    results["load_average_end"] = os.getloadavg()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
