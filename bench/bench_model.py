"""Benchmark HydraLM against a dense Transformer of the same size, in one run.

Measures, on whatever CPU or GPU it runs on:

1. forward time vs sequence length N = 2^10 .. 2^16 and the log-log slope
   of each model, from wall-clock time and from the CPU time of the calling
   thread (the dense model runs only while one forward stays under
   --dense-limit-s);
2. per-token decode latency after 4K and after 1M streamed tokens, with the
   peak resident memory of each decode window (the dense model's after 4K
   and after --dense-context tokens, as its KV cache grows);
3. the chunkwise delta rule against the token loop at N = 4096;
4. one training step (forward, backward, AdamW) of each model at N = 2048.

Prints a Markdown report and writes JSON to bench/out/bench_model.json.

Example:
    .venv/bin/python bench/bench_model.py            # full run (tens of minutes on 2 cores)
    .venv/bin/python bench/bench_model.py --quick    # small sizes, a minute or two
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hydralm import HydraConfig, HydraLM  # noqa: E402
from hydralm.baselines.transformer import TransformerLM  # noqa: E402
from hydralm.claims.measure import PeakRSS, best_time, loglog_slope  # noqa: E402
from hydralm.ops.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule  # noqa: E402


SECTIONS = ("forward", "kernel", "training", "decode")


def bench_config() -> HydraConfig:
    """Return the small hybrid measured here: three Gated DeltaNet layers per SWA layer."""
    return HydraConfig(
        vocab_size=2048,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=384,
        sliding_window=256,
        num_sink_tokens=4,
        chunk_size=32,
        layer_types=["deltanet", "deltanet", "deltanet", "swa"],
    )


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_ids(vocab_size: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, length), generator=generator)


@torch.no_grad()
def timed(function) -> tuple[float, float]:
    """Run `function` once; return (wall seconds, CPU seconds of this thread).

    With one torch thread every operation runs on the calling thread, so its
    CPU time is the work the forward did. Unlike wall time it does not grow
    while other processes hold the cores, which on a shared machine is what
    bends a wall-clock slope.
    """
    wall, cpu = time.perf_counter(), time.thread_time()
    function()
    return time.perf_counter() - wall, time.thread_time() - cpu


def measure_forward(
    hydra: HydraLM, dense: TransformerLM, lengths: list[int], dense_limit_s: float, repeats: int
) -> dict:
    """Time one forward pass (last logits only) of each model at each length.

    Repeats go round-robin over all lengths and the fastest time per length
    is kept (wall and CPU separately), so a burst of load from other
    processes spoils one repeat of one length instead of every repeat of it.
    """
    inputs = {length: random_ids(hydra.config.vocab_size, length, seed=length) for length in lengths}
    hydra(inputs[lengths[0]], logits_to_keep=1)  # warm-up
    hydra_times = {length: float("inf") for length in lengths}
    hydra_cpu = {length: float("inf") for length in lengths}
    dense_times: dict[int, float] = {}
    dense_cpu: dict[int, float] = {}
    dense_lengths = list(lengths)
    for repeat in range(repeats):
        for length in lengths:
            ids = inputs[length]
            wall, cpu = timed(lambda: hydra(ids, logits_to_keep=1))
            hydra_times[length] = min(hydra_times[length], wall)
            hydra_cpu[length] = min(hydra_cpu[length], cpu)
            if length in dense_lengths:
                wall, cpu = timed(lambda: dense(ids, logits_to_keep=1))
                dense_times[length] = min(dense_times.get(length, float("inf")), wall)
                dense_cpu[length] = min(dense_cpu.get(length, float("inf")), cpu)
                if repeat == 0 and wall > dense_limit_s:
                    # Longer inputs would take at least four times as long.
                    dense_lengths = [n for n in dense_lengths if n <= length]
            print(f"  forward repeat {repeat} N={length}: hydra {hydra_times[length]:.3f} s "
                  f"({hydra_cpu[length]:.3f} CPU s), dense {dense_times.get(length)} s", file=sys.stderr, flush=True)
    rows = [
        {
            "tokens": n,
            "hydra_s": hydra_times[n],
            "hydra_cpu_s": hydra_cpu[n],
            "dense_s": dense_times.get(n),
            "dense_cpu_s": dense_cpu.get(n),
        }
        for n in lengths
    ]
    dense_run = sorted(dense_times)

    def slope(times: dict[int, float], run: list[int]) -> float | None:
        return loglog_slope(run, [times[n] for n in run]) if len(run) >= 2 else None

    return {
        "rows": rows,
        "hydra_slope": slope(hydra_times, lengths),
        "dense_slope": slope(dense_times, dense_run),
        "hydra_cpu_slope": slope(hydra_cpu, lengths),
        "dense_cpu_slope": slope(dense_cpu, dense_run),
    }


@torch.no_grad()
def decode_window(model, state, steps: int, vocab_size: int, seed: int) -> tuple[list[float], int, object]:
    """Decode `steps` tokens from `state`; return (seconds per token, peak RSS bytes, state)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (steps,), generator=generator)
    times = []
    with PeakRSS() as peak:
        for token in tokens:
            start = time.perf_counter()
            _, state = model.step(token[None], state)
            times.append(time.perf_counter() - start)
    return times, peak.peak, state


def compare_decode(model, short_state, long_state, steps: int, rounds: int, vocab_size: int) -> dict:
    """Alternate decode windows on the two states so that load changes hit both alike."""
    decode_window(model, short_state, 5, vocab_size, seed=0)  # warm-up
    times = {"short": [], "long": []}
    peaks = {"short": 0, "long": 0}
    states = {"short": short_state, "long": long_state}
    for index in range(rounds):
        for name in ("short", "long"):
            window, peak, states[name] = decode_window(model, states[name], steps // rounds, vocab_size, seed=index)
            times[name] += window
            peaks[name] = max(peaks[name], peak)
    return {
        "short_ms": statistics.median(times["short"]) * 1e3,
        "long_ms": statistics.median(times["long"]) * 1e3,
        "short_peak_rss_mb": peaks["short"] / 2**20,
        "long_peak_rss_mb": peaks["long"] / 2**20,
        "short_state": states["short"],
        "long_state": states["long"],
    }


@torch.no_grad()
def stream(model, state, total: int, chunk: int, vocab_size: int, seed: int):
    """Feed `total` random tokens in chunks, keeping only the last logits."""
    fed = 0
    while fed < total:
        size = min(chunk, total - fed)
        state = model(random_ids(vocab_size, size, seed + fed), state=state, logits_to_keep=1).state
        fed += size
    return state


def measure_decode(hydra: HydraLM, dense: TransformerLM, args: argparse.Namespace) -> dict:
    """Decode latency and memory after a short and a long stream, for both models."""
    vocab = hydra.config.vocab_size
    short, long_ = args.short_context, args.stream_tokens

    short_state = stream(hydra, hydra.init_state(1), short, 4096, vocab, seed=1)
    started = time.perf_counter()
    long_state = stream(hydra, short_state, long_ - short, 8192, vocab, seed=2)
    stream_s = time.perf_counter() - started
    print(f"  decode: streamed {long_} tokens, {stream_s:.0f} s", file=sys.stderr, flush=True)
    hydra_result = compare_decode(hydra, short_state, long_state, args.decode_steps, 10, vocab)

    dense_short = stream(dense, dense.init_state(1), short, 4096, vocab, seed=1)
    dense_long = stream(dense, dense_short, args.dense_context - short, 4096, vocab, seed=3)
    dense_result = compare_decode(dense, dense_short, dense_long, args.decode_steps, 10, vocab)
    return {
        "short_context": short,
        "long_context": int(long_state.position),
        "stream_seconds": stream_s,
        "stream_tokens_per_s": (long_ - short) / stream_s,
        "hydra_short_ms": hydra_result["short_ms"],
        "hydra_long_ms": hydra_result["long_ms"],
        "hydra_ratio": hydra_result["long_ms"] / hydra_result["short_ms"],
        "hydra_short_peak_rss_mb": hydra_result["short_peak_rss_mb"],
        "hydra_long_peak_rss_mb": hydra_result["long_peak_rss_mb"],
        "hydra_state_bytes_short": short_state.nbytes(),
        "hydra_state_bytes_long": long_state.nbytes(),
        "dense_long_context": dense_long.length,
        "dense_short_ms": dense_result["short_ms"],
        "dense_long_ms": dense_result["long_ms"],
        "dense_ratio": dense_result["long_ms"] / dense_result["short_ms"],
        "dense_short_peak_rss_mb": dense_result["short_peak_rss_mb"],
        "dense_long_peak_rss_mb": dense_result["long_peak_rss_mb"],
        "dense_cache_bytes_short": dense_short.nbytes(),
        "dense_cache_bytes_long": dense_long.nbytes(),
    }


@torch.no_grad()
def measure_kernel(config: HydraConfig, length: int) -> dict:
    """Time the chunkwise and the recurrent delta rule on the same inputs."""
    generator = torch.Generator().manual_seed(0)
    B, H, D = 1, config.num_attention_heads, config.head_dim
    q = F.normalize(torch.randn(B, H, length, D, generator=generator), dim=-1)
    k = F.normalize(torch.randn(B, H, length, D, generator=generator), dim=-1)
    v = torch.randn(B, H, length, D, generator=generator)
    beta = torch.rand(B, H, length, generator=generator)
    g = -0.1 * torch.rand(B, H, length, generator=generator)
    chunk_s = best_time(lambda: chunk_gated_delta_rule(q, k, v, beta, g, chunk_size=config.chunk_size), 3)
    loop_s = best_time(lambda: recurrent_gated_delta_rule(q, k, v, beta, g), 2)
    o_chunk, _ = chunk_gated_delta_rule(q, k, v, beta, g, chunk_size=config.chunk_size)
    o_loop, _ = recurrent_gated_delta_rule(q, k, v, beta, g)
    error = float((o_chunk - o_loop).abs().max() / o_loop.abs().max())
    return {"tokens": length, "chunk_s": chunk_s, "loop_s": loop_s, "speedup": loop_s / chunk_s, "relative_error": error}


def measure_training(hydra: HydraLM, dense: TransformerLM, length: int) -> dict:
    """Time one forward + backward + AdamW step of each model."""
    ids = random_ids(hydra.config.vocab_size, length, seed=4)
    results = {}
    for name, model in (("hydra", hydra), ("dense", dense)):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()
            optimizer.step()

        train_step()  # warm-up, also allocates optimizer state
        results[f"{name}_s"] = best_time(train_step, 3)
        model.eval()
    results["tokens"] = length
    results["hydra_over_dense"] = results["hydra_s"] / results["dense_s"]
    return results


def render_forward(forward: dict) -> list[str]:
    lines = [
        "| N | HydraLM wall (s) | HydraLM CPU (s) | dense wall (s) | dense CPU (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in forward["rows"]:
        if row["dense_s"] is None:
            dense = "not run | not run"
        else:
            dense = f"{row['dense_s']:.3f} | {row['dense_cpu_s']:.3f}"
        lines.append(f"| {row['tokens']:,} | {row['hydra_s']:.3f} | {row['hydra_cpu_s']:.3f} | {dense} |")

    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    return lines + [
        "",
        f"Log-log slope from wall time: HydraLM {show(forward['hydra_slope'])}, dense {show(forward['dense_slope'])}.",
        f"Log-log slope from CPU time: HydraLM {show(forward['hydra_cpu_slope'])}, "
        f"dense {show(forward['dense_cpu_slope'])}.",
        "",
    ]


def render_decode(decode: dict) -> list[str]:
    return [
        "| model | context | decode (ms/token) | peak RSS in decode (MiB) | state or cache (bytes) |",
        "|---|---:|---:|---:|---:|",
        f"| HydraLM | {decode['short_context']:,} | {decode['hydra_short_ms']:.2f} | "
        f"{decode['hydra_short_peak_rss_mb']:.0f} | {decode['hydra_state_bytes_short']:,} |",
        f"| HydraLM | {decode['long_context']:,} | {decode['hydra_long_ms']:.2f} | "
        f"{decode['hydra_long_peak_rss_mb']:.0f} | {decode['hydra_state_bytes_long']:,} |",
        f"| dense | {decode['short_context']:,} | {decode['dense_short_ms']:.2f} | "
        f"{decode['dense_short_peak_rss_mb']:.0f} | {decode['dense_cache_bytes_short']:,} |",
        f"| dense | {decode['dense_long_context']:,} | {decode['dense_long_ms']:.2f} | "
        f"{decode['dense_long_peak_rss_mb']:.0f} | {decode['dense_cache_bytes_long']:,} |",
        "",
        f"Decode latency ratio, long over short context: HydraLM {decode['hydra_ratio']:.3f}, "
        f"dense {decode['dense_ratio']:.3f}. Streaming ran at {decode['stream_tokens_per_s']:,.0f} tokens/s.",
        "",
    ]


def render_markdown(report: dict) -> str:
    lines = [f"Command: `{report['command']}`", "", f"Machine: {report['machine']}", "", f"Date: {report['date']}", ""]
    lines += [
        f"Models: HydraLM {report['hydra_parameters']:,} parameters, dense Transformer "
        f"{report['dense_parameters']:,} parameters; float32, batch 1, {report['threads']} threads.",
        "",
    ]
    if "forward" in report:
        lines += render_forward(report["forward"])
    if "decode" in report:
        lines += render_decode(report["decode"])
    if "kernel" in report:
        kernel = report["kernel"]
        lines += [
            f"Delta rule at N={kernel['tokens']:,}: chunkwise {kernel['chunk_s'] * 1e3:.1f} ms, token loop "
            f"{kernel['loop_s'] * 1e3:.1f} ms, speed-up {kernel['speedup']:.1f}x "
            f"(max relative difference {kernel['relative_error']:.1e}).",
            "",
        ]
    if "training" in report:
        training = report["training"]
        lines += [
            f"Training step at N={training['tokens']:,}: HydraLM {training['hydra_s']:.3f} s, dense "
            f"{training['dense_s']:.3f} s, ratio {training['hydra_over_dense']:.2f}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--min-log2", type=int, default=10, help="smallest forward length, as a power of 2")
    parser.add_argument("--max-log2", type=int, default=16, help="largest forward length, as a power of 2")
    parser.add_argument("--dense-limit-s", type=float, default=60.0,
                        help="stop timing the dense forward once one pass takes longer than this (seconds)")
    parser.add_argument("--short-context", type=int, default=4096, help="tokens read before the first decode window")
    parser.add_argument("--stream-tokens", type=int, default=1_000_000, help="tokens read before the second decode window")
    parser.add_argument("--dense-context", type=int, default=32768, help="tokens in the dense cache for its second decode window")
    parser.add_argument("--decode-steps", type=int, default=200, help="tokens decoded per window")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats of the forward timings")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                        help="which measurements to run (default: all)")
    parser.add_argument("--train-tokens", type=int, default=2048, help="sequence length of the training step")
    # One thread by default: on a shared, oversubscribed machine two OpenMP
    # threads ran the same forward several times slower than one.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "bench_model.json", help="JSON output file")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_log2 = min(args.max_log2, 13)
        args.stream_tokens = min(args.stream_tokens, 65536)
        args.dense_context = min(args.dense_context, 8192)
        args.decode_steps = min(args.decode_steps, 50)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = bench_config()
    hydra = HydraLM(config).eval()
    dense = TransformerLM.matched_to(config).eval()
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.system()} {platform.release()}, torch {torch.__version__}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": torch.get_num_threads(),
        "config": config.to_dict(),
        "hydra_parameters": parameter_count(hydra),
        "dense_parameters": parameter_count(dense),
    }
    if "forward" in args.sections:
        print("forward scaling", file=sys.stderr, flush=True)
        lengths = [2**p for p in range(args.min_log2, args.max_log2 + 1)]
        report["forward"] = measure_forward(hydra, dense, lengths, args.dense_limit_s, args.repeats)
    if "kernel" in args.sections:
        print("delta-rule kernel", file=sys.stderr, flush=True)
        report["kernel"] = measure_kernel(config, 4096)
    if "training" in args.sections:
        print("training step", file=sys.stderr, flush=True)
        report["training"] = measure_training(hydra, dense, args.train_tokens)
    if "decode" in args.sections:
        print("decode latency", file=sys.stderr, flush=True)
        report["decode"] = measure_decode(hydra, dense, args)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(render_markdown(report))
    return report


if __name__ == "__main__":
    main()
