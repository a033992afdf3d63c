"""Ballot latency, side by side in one run: our runtime with the prefix cache, without
it, and a plain llama-cpp-python call on the same prompt and grammar.

The three are interleaved motion by motion (so machine noise hits them alike) and
reported as medians and ratios.

    python bench/bench_ballot.py [--rounds 2] [--motions 6] [--out FILE]

Writes bench/results/ballot.json; the last line is the headline figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.grammar import options_grammar  # noqa: E402
from agents.llm import ModelRuntime  # noqa: E402
from agents.prompt import DEFAULT_PERSONA, build_prompt  # noqa: E402

MOTIONS = [
    ("Adopt the revised data-retention policy (delete raw logs after 30 days)?", ("approve", "reject")),
    ("Which region should host the next replica?", ("eu-west", "us-east", "ap-south")),
    ("Release version 0.2 this week?", ("approve", "reject", "defer")),
    ("Raise the per-client rate limit to 2 motions per second?", ("approve", "reject")),
    ("Which model family should new agents default to?", ("smollm", "qwen", "llama")),
    ("Move the weekly sync to Thursdays?", ("approve", "reject")),
]
ROUNDS = 2  # each motion this many times per mode


def raw_call(llm, llama_cpp, text: str, options) -> float:
    prefix, suffix = build_prompt(DEFAULT_PERSONA, text, options)
    grammar = llama_cpp.LlamaGrammar.from_string(options_grammar(options), verbose=False)
    start = time.perf_counter()
    llm.create_completion(prefix + suffix, grammar=grammar, temperature=0.0, max_tokens=96)
    return (time.perf_counter() - start) * 1000


def main(argv: list[str] | None = None) -> None:
    import llama_cpp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="each motion this many times per mode")
    parser.add_argument("--motions", type=int, default=len(MOTIONS), help=f"how many of the {len(MOTIONS)} motions")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ballot.json")
    args = parser.parse_args(argv)
    motions = MOTIONS[: max(1, min(len(MOTIONS), args.motions))]

    cached, uncached = ModelRuntime(prefix_cache=True), ModelRuntime(prefix_cache=False)
    raw = llama_cpp.Llama(model_path=str(cached.path), n_ctx=cached.n_ctx, verbose=False, seed=0)
    cached.answer(DEFAULT_PERSONA, "Warm up?", ("yes", "no"))  # fills the prefix cache once
    samples: dict[str, list[float]] = {"cached": [], "uncached": [], "raw": []}
    tokens = {"prompt": [], "generated": []}
    for r in range(args.rounds):
        for text, options in motions:
            a = cached.answer(DEFAULT_PERSONA, text, options)
            samples["cached"].append(a.timings["total_ms"])
            tokens["prompt"].append(a.timings["prompt_tokens"])
            tokens["generated"].append(a.timings["generated_tokens"])
            samples["uncached"].append(uncached.answer(DEFAULT_PERSONA, text, options).timings["total_ms"])
            samples["raw"].append(raw_call(raw, llama_cpp, text, options))
            print(f"  round {r + 1}/{args.rounds}: {text[:40]!r}", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "benchmark": "ballot latency: prefix cache vs none vs raw llama-cpp-python (same prompt and grammar)",
        "model": cached.path.name, "python": platform.python_version(), "machine": platform.machine(),
        "motions": len(motions), "rounds": args.rounds,
        "median_ms": {k: round(v, 1) for k, v in med.items()},
        "ratio_uncached_over_cached": round(med["uncached"] / med["cached"], 2),
        "ratio_raw_over_cached": round(med["raw"] / med["cached"], 2),
        "median_prompt_tokens": statistics.median(tokens["prompt"]),
        "median_generated_tokens": statistics.median(tokens["generated"]),
        "samples_ms": {k: [round(x, 1) for x in v] for k, v in samples.items()},
    }
    print(f"{'mode':>10} {'median ms':>10} {'vs cached':>10}")
    for k in ("cached", "uncached", "raw"):
        print(f"{k:>10} {med[k]:>10.1f} {med[k] / med['cached']:>9.2f}x")
    print(f"(median prompt {result['median_prompt_tokens']} tokens, "
          f"{result['median_generated_tokens']} generated)")
    result["headline"] = (f"prefix-cached ballot {med['cached']:.0f} ms = {med['cached'] / med['uncached']:.2f}x "
                          f"uncached ({med['uncached']:.0f} ms); raw llama-cpp-python {med['raw']:.0f} ms")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    print(f"headline: {result['headline']}")


if __name__ == "__main__":
    main()
