"""Benchmark the default chat model (SmolLM2-135M-Instruct in HydraLM SWA blocks)
against transformers' LlamaForCausalLM on the same GGUF weights, in one run.

It measures load time, time to first token and exactness (logits on real
texts, greedy answers on facts prompts). It measures decode tokens/s at
several contexts and prefill tokens/s for both models, and transformers'
decode again with its weights stored column-major as HydraLM stores them.
Then HydraLM streams real text (state bytes, RSS, finite logits, decode
speed at chosen points and at the end), and perplexity is computed with and
without sinks.
Every section has a time budget so the run fits a shared CPU; whatever a
budget cut short is reported as such.

Usage:
    .venv/bin/python bench/bench_chat_model.py --window 512 --stream-tokens 1000000
Writes bench/out/chat_model.json and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import torch  # noqa: E402

from app import chat_model as cm  # noqa: E402
from app import paths  # noqa: E402
from hydralm.generation import SamplingSettings  # noqa: E402
from hydralm.layers.packing import make_column_major  # noqa: E402

PROCESS = psutil.Process()


def rss_mib() -> float:
    return PROCESS.memory_info().rss / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_documents(max_characters: int = 4_000_000) -> list[str]:
    """Return real English technical text: Python's reference topics, then stdlib sources."""
    import pydoc_data.topics

    documents = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)]
    stdlib = Path(os.__file__).parent
    characters = sum(len(document) for document in documents)
    for path in sorted(stdlib.glob("*.py")):
        if characters > max_characters:
            break
        documents.append(path.read_text(encoding="utf-8", errors="replace"))
        characters += len(documents[-1])
    return documents


def facts_prompts(count: int) -> list[list[dict[str, str]]]:
    """Build chat prompts that each state three facts and ask about one of them."""
    facts = []
    with open(paths.eval_dir() / "facts_dev.jsonl", encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            if record["kind"] == "fact":
                facts.append(record)
    prompts = []
    for index in range(count):
        group = facts[3 * index : 3 * index + 3]
        asked = group[index % 3]
        statements = " ".join(fact["statement"] for fact in group)
        question = asked["questions"][index % len(asked["questions"])]
        prompts.append([{"role": "user", "content": f"{statements}\n\nQuestion: {question}"}])
    return prompts


@torch.inference_mode()
def hydra_prefill(model, ids: torch.Tensor, state, chunk: int = 1024):
    """Read ids (1, T) into the state in chunks; return (last logits (V,), state)."""
    logits = None
    for start in range(0, ids.shape[1], chunk):
        output = model(ids[:, start : start + chunk], state=state, logits_to_keep=1)
        logits, state = output.logits[0, -1], output.state
    return logits, state


WARMUP_STEPS = 2


def timed_rate(steps: int, step) -> tuple[float, float]:
    """Time `steps` calls of `step()` after WARMUP_STEPS untimed ones and return tokens per wall and CPU second.

    Each call of `step()` decodes one token. CPU time is the whole process's. With one torch thread it is the model's
    own cost per token, so it does not change while other processes use the
    cores. With more threads it also counts their spin-waiting.
    """
    for _ in range(WARMUP_STEPS):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


@torch.inference_mode()
def hydra_decode_rate(model, logits, state, steps: int) -> tuple[float, float]:
    # Decoding goes on from a copy, so the caller's state stays as it was.
    state = state.clone()
    token = torch.tensor([int(logits.argmax())])

    def step() -> None:
        nonlocal state, token
        step_logits, state = model.step(token, state, reuse_state=True)
        token = step_logits.argmax(-1)

    return timed_rate(steps, step)


@torch.inference_mode()
def hf_decode_rate(llama, cache, last_logits, steps: int) -> tuple[float, float]:
    length = cache.get_seq_length()
    token = last_logits.argmax(-1).view(1, 1)

    def step() -> None:
        nonlocal token
        output = llama(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
        token = output.logits[:, -1].argmax(-1).view(1, 1)

    rates = timed_rate(steps, step)
    cache.crop(length - cache.get_seq_length())  # a negative count removes that many tokens
    return rates


def set_column_major(model: torch.nn.Module, column_major: bool) -> None:
    """Store every Linear and Embedding weight of `model` column-major (True) or row-major (False).

    HydraLM's loader packs its own weights column-major on CPU (see
    `HydraLM.pack_weights`). Giving transformers the same layout shows how
    much of the decode gap the layout alone makes.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            if column_major:
                make_column_major(module)
            else:
                module.weight.data = module.weight.detach().contiguous()


def section(name: str) -> None:
    print(f"\n## {name}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=512, help="sliding window in tokens")
    parser.add_argument("--sinks", type=int, default=4, help="attention sink tokens")
    parser.add_argument("--exact-tokens", type=int, default=512, help="tokens per text in the logits check (0 skips it)")
    parser.add_argument("--prompts", type=int, default=20, help="facts prompts in the greedy check")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per prompt")
    parser.add_argument("--greedy-budget-s", type=float, default=600, help="time budget of the greedy check")
    parser.add_argument("--contexts", default="128,2048,8192", help="decode contexts, comma-separated")
    parser.add_argument("--decode-steps", type=int, default=8, help="timed decode steps per measurement")
    parser.add_argument("--decode-rounds", type=int, default=3, help="alternating measurements of each model per context")
    parser.add_argument("--stream-tokens", type=int, default=1_000_000, help="tokens to stream")
    parser.add_argument("--stream-budget-s", type=float, default=900, help="time budget of the long stream")
    parser.add_argument(
        "--stream-decode-at",
        default="100000",
        help="streamed token counts after which decode speed is measured, comma-separated ('' for none)",
    )
    parser.add_argument("--ppl-tokens", type=int, default=100_000, help="tokens of the perplexity text")
    parser.add_argument("--ppl-window", type=int, default=None, help="window of the perplexity passes (default --window)")
    parser.add_argument("--ppl-budget-s", type=float, default=300, help="time budget of each perplexity pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "chat_model.json")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "command": " ".join(["bench/bench_chat_model.py"] + sys.argv[1:]),
        "window": args.window,
        "sinks": args.sinks,
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    # Load both models.
    section("load")
    cm.prepare_chat_model()
    started = time.perf_counter()
    chat = cm.load_chat_model(device="cpu", window=args.window, num_sink_tokens=args.sinks)
    results["hydra_load_s"] = time.perf_counter() - started
    model, tokenizer = chat.model, chat.tokenizer
    from hydralm.convert.llama import load_gguf_llama

    started = time.perf_counter()
    llama, _ = load_gguf_llama(cm.find_gguf())
    results["hf_load_s"] = time.perf_counter() - started
    print(f"HydraLM load {results['hydra_load_s']:.2f} s, HF load from GGUF {results['hf_load_s']:.1f} s")
    save()

    # Time to first token of a prompt of about 200 words.
    section("time to first token")
    documents = real_documents()
    prompt_text = " ".join(documents[0].split()[:150])
    messages = [{"role": "user", "content": f"Summarise this:\n{prompt_text}"}]
    prompt_ids = chat.apply_chat_template(messages)
    stream = chat.stream(prompt_ids, SamplingSettings(temperature=0.0, max_new_tokens=1))
    stream.read_all()
    results["ttft_prompt_tokens"] = len(prompt_ids)
    results["ttft_s"] = stream.time_to_first_token_s
    print(f"{len(prompt_ids)}-token prompt: first token after {stream.time_to_first_token_s:.2f} s")
    save()

    # Exactness: logits on three real texts.
    section("exactness: logits")
    exact = []
    for name in ("assignment", "exceptions", "for") if args.exact_tokens > 0 else ():
        import pydoc_data.topics

        ids = tokenizer.encode(pydoc_data.topics.topics[name], add_special_tokens=False)[: args.exact_tokens]
        input_ids = torch.tensor([ids])
        with torch.inference_mode():
            difference = (llama(input_ids).logits - model(input_ids).logits).abs().max().item()
        exact.append({"text": f"pydoc_data.topics[{name!r}]", "tokens": len(ids), "max_abs_diff": difference})
        print(f"{name}: {len(ids)} tokens, max |logit diff| {difference:.2e}", flush=True)
    results["logits"] = exact
    save()

    # Exactness: greedy answers on facts prompts.
    section("exactness: greedy answers")
    greedy = {"prompts": 0, "identical": 0, "new_tokens": args.new_tokens}
    started = time.perf_counter()
    for messages in facts_prompts(args.prompts):
        if time.perf_counter() - started > args.greedy_budget_s:
            break
        ids = chat.apply_chat_template(messages)
        stream = chat.stream(ids, SamplingSettings(temperature=0.0, max_new_tokens=args.new_tokens))
        stream.read_all()
        ours = stream.token_ids + ([chat.end_of_turn_id] if stream.finish_reason == "stop" else [])
        with torch.inference_mode():
            reference = llama.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=args.new_tokens,
                do_sample=False,
                eos_token_id=chat.stop_token_ids,
            )[0, len(ids) :].tolist()
        greedy["prompts"] += 1
        greedy["identical"] += int(ours == reference)
        print(f"prompt {greedy['prompts']}: identical={ours == reference} ({len(reference)} tokens)", flush=True)
    greedy["seconds"] = time.perf_counter() - started
    results["greedy"] = greedy
    save()

    # Decode speed at several contexts, both models, same text.
    section("decode tokens/s by context")
    from transformers import DynamicCache

    contexts = [int(value) for value in args.contexts.split(",")]
    stream_text = "\n\n".join(documents)
    stream_ids = tokenizer.encode(stream_text, add_special_tokens=False)
    results["stream_text_tokens"] = len(stream_ids)
    decode = []
    state = model.init_state(1)
    cache = DynamicCache()
    read = 0
    hydra_prefill_s = hf_prefill_s = 0.0
    hf_logits = None
    for context in contexts:
        chunk = torch.tensor([stream_ids[read:context]])
        started = time.perf_counter()
        logits, state = hydra_prefill(model, chunk, state)
        hydra_prefill_s += time.perf_counter() - started
        started = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, chunk.shape[1], 1024):
                output = llama(input_ids=chunk[:, start : start + 1024], cache=cache, use_cache=True, logits_to_keep=1)
                hf_logits = output.logits[:, -1]
        hf_prefill_s += time.perf_counter() - started
        read = context
        # Rounds alternate the models, so a slow spell of the shared machine
        # lands on both. Each rate is the median over the rounds.
        rounds = []
        for _ in range(args.decode_rounds):
            hydra_rate, hydra_cpu_rate = hydra_decode_rate(model, logits, state, args.decode_steps)
            hf_rate, hf_cpu_rate = hf_decode_rate(llama, cache, hf_logits, args.decode_steps)
            set_column_major(llama, True)
            hf_cm_rate, _ = hf_decode_rate(llama, cache, hf_logits, args.decode_steps)
            set_column_major(llama, False)
            rounds.append(
                {
                    "hydra_tok_s": hydra_rate,
                    "hf_tok_s": hf_rate,
                    "hydra_tok_per_cpu_s": hydra_cpu_rate,
                    "hf_tok_per_cpu_s": hf_cpu_rate,
                    "hf_column_major_tok_s": hf_cm_rate,
                }
            )
        hydra_rate, hf_rate, hydra_cpu_rate, hf_cpu_rate, hf_cm_rate = (
            statistics.median(entry[name] for entry in rounds)
            for name in ("hydra_tok_s", "hf_tok_s", "hydra_tok_per_cpu_s", "hf_tok_per_cpu_s", "hf_column_major_tok_s")
        )
        decode.append(
            {
                "context": context,
                "hydra_tok_s": hydra_rate,
                "hf_tok_s": hf_rate,
                "ratio": hydra_rate / hf_rate,
                "hydra_tok_per_cpu_s": hydra_cpu_rate,
                "hf_tok_per_cpu_s": hf_cpu_rate,
                "cpu_ratio": hydra_cpu_rate / hf_cpu_rate,
                "hf_column_major_tok_s": hf_cm_rate,
                "ratio_to_hf_column_major": hydra_rate / hf_cm_rate,
                "rounds": rounds,
            }
        )
        print(
            f"context {context}: HydraLM {hydra_rate:.2f} tok/s, HF {hf_rate:.2f} tok/s, ratio "
            f"{hydra_rate / hf_rate:.2f}; per CPU second {hydra_cpu_rate:.2f} vs {hf_cpu_rate:.2f}, "
            f"ratio {hydra_cpu_rate / hf_cpu_rate:.2f}; HF with column-major weights {hf_cm_rate:.2f} tok/s, "
            f"ratio {hydra_rate / hf_cm_rate:.2f}",
            flush=True,
        )
        save()
    results["decode"] = decode
    results["prefill_tok_s"] = {"hydra": read / hydra_prefill_s, "hf": read / hf_prefill_s}
    results["rss_after_8k_mib"] = rss_mib()
    del cache
    print(f"prefill {read} tokens: HydraLM {read / hydra_prefill_s:.1f} tok/s, HF {read / hf_prefill_s:.1f} tok/s")
    save()

    # Long stream with chunked prefill, from where the decode section stopped.
    section("long stream")
    rss_start = rss_mib()
    state_bytes_start = state.nbytes()
    started = time.perf_counter()
    streamed = read
    repeats = 0
    marks = []
    decode_marks = sorted(int(value) for value in args.stream_decode_at.split(",") if value.strip())
    decode_during_stream = []
    finite = True
    while streamed < args.stream_tokens and time.perf_counter() - started < args.stream_budget_s:
        offset = streamed % len(stream_ids)
        if offset == 0 and streamed > 0:
            repeats += 1
        chunk = torch.tensor([stream_ids[offset : offset + 1024]])
        logits, state = hydra_prefill(model, chunk, state)
        finite = finite and bool(torch.isfinite(logits).all())
        streamed += chunk.shape[1]
        if len(marks) == 0 or streamed - marks[-1]["tokens"] >= 10_000:
            marks.append({"tokens": streamed, "rss_mib": rss_mib(), "state_bytes": state.nbytes()})
            print(f"streamed {streamed}: RSS {marks[-1]['rss_mib']:.0f} MiB, state {state.nbytes()} bytes", flush=True)
        if decode_marks and streamed >= decode_marks[0]:
            decode_marks.pop(0)
            rate, cpu_rate = hydra_decode_rate(model, logits, state, args.decode_steps)
            decode_during_stream.append({"tokens": streamed, "hydra_tok_s": rate, "hydra_tok_per_cpu_s": cpu_rate})
            print(f"decode after {streamed} streamed tokens: {rate:.2f} tok/s", flush=True)
    elapsed = time.perf_counter() - started
    end_rate, end_cpu_rate = hydra_decode_rate(model, logits, state, args.decode_steps)
    results["stream"] = {
        "tokens": streamed,
        "text_repeats": repeats,
        "seconds": elapsed,
        "tok_s": (streamed - read) / elapsed,
        "logits_finite": finite,
        "state_bytes_start": state_bytes_start,
        "state_bytes_end": state.nbytes(),
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_mib(),
        "decode_tok_s_at_end": end_rate,
        "decode_tok_per_cpu_s_at_end": end_cpu_rate,
        "marks": marks,
        "decode_during_stream": decode_during_stream,
    }
    print(f"streamed {streamed} tokens in {elapsed:.0f} s; decode at the end {end_rate:.2f} tok/s")
    save()

    # Perplexity on one long real text: with sinks, without sinks, and in
    # independent window-sized segments (every token inside one window).
    section("perplexity")
    ppl_ids = stream_ids[: args.ppl_tokens]
    ppl_window = args.ppl_window or args.window
    results["ppl_window"] = ppl_window
    perplexity = {}
    for label in ("window+sinks", "window, no sinks", "inside one window") if len(ppl_ids) > 1 else ():
        from dataclasses import replace

        from hydralm.convert.llama import build_hydra_lm

        sinks = 0 if label == "window, no sinks" else args.sinks
        run_config = replace(model.config, sliding_window=ppl_window, num_sink_tokens=sinks)
        run_model = build_hydra_lm(run_config, model.state_dict())
        total_nll, counted = 0.0, 0
        state = run_model.init_state(1)
        started = time.perf_counter()
        segment = ppl_window if label == "inside one window" else 1024
        with torch.inference_mode():
            for start in range(0, len(ppl_ids) - 1, segment):
                if time.perf_counter() - started > args.ppl_budget_s:
                    break
                ids = torch.tensor([ppl_ids[start : start + segment + 1]])
                if label == "inside one window":
                    state = run_model.init_state(1)
                output = run_model(ids[:, :-1], state=state)
                state = output.state
                nll = torch.nn.functional.cross_entropy(output.logits[0].float(), ids[0, 1:], reduction="sum")
                total_nll += float(nll)
                counted += ids.shape[1] - 1
        # Later passes score exactly the tokens the first pass reached.
        ppl_ids = ppl_ids[: counted + 1]
        perplexity[label] = {"tokens": counted, "perplexity": math.exp(total_nll / counted), "seconds": time.perf_counter() - started}
        print(f"{label}: perplexity {perplexity[label]['perplexity']:.3f} over {counted} tokens", flush=True)
        save()
    results["perplexity"] = perplexity
    results["peak_rss_mib"] = peak_rss_mib()
    save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
