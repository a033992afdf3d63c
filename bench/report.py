"""One summary of every benchmark result, the performance targets, and the figures.

Reads the JSON files the benchmarks write (bench/results/*.json), prints one row per
benchmark found (its headline) and a table of the targets, each with the measured
value and "met", "NOT met" or "not measured". Writes the same to summary.json and, as
markdown tables (pasted into the README), to summary.md in the results directory. Then
draws a PNG figure for each result that exists into the figures directory.

    python bench/report.py [--results DIR] [--figures DIR]

Defaults: bench/results and docs/perf. The last line is the headline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FIGURES = ROOT / "docs" / "perf"
SUMMARY = "summary"  # summary.json / summary.md: not a benchmark

# The order of `make bench`; files not listed here follow in name order.
KNOWN = ("consensus", "ballot", "anchor", "gossip", "agreement", "throughput", "e2e")

MET, NOT_MET, NOT_MEASURED = "met", "NOT met", "not measured"

FIG_SIZE = (6.0, 3.5)  # inches
FIG_DPI = 100


# --------------------------------------------------------------------------- loading


def load_results(results: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """(name -> parsed JSON, name -> error) for every *.json in ``results`` but the summary."""
    found: dict[str, dict] = {}
    broken: dict[str, str] = {}
    paths = sorted(results.glob("*.json")) if results.is_dir() else []
    for path in paths:
        if path.stem == SUMMARY:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            broken[path.stem] = f"{type(exc).__name__}: {exc}"
            continue
        if not isinstance(data, dict):
            broken[path.stem] = "not a JSON object"
            continue
        found[path.stem] = data
    return found, broken


def ordered(names) -> list[str]:
    names = set(names)
    return [n for n in KNOWN if n in names] + sorted(names - set(KNOWN))


def rows_of(data: dict | None) -> list[dict]:
    rows = (data or {}).get("results")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def row_at(data: dict | None, size: int, key: str = "n") -> dict | None:
    return next((r for r in rows_of(data) if r.get(key) == size), None)


def number(value) -> float | None:
    """``value`` as a float if it is a finite number (JSON may hold NaN), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def ballot_times(data: dict | None) -> dict[str, float]:
    """Median ms per mode ("cached", "uncached", "raw"), whichever the file holds."""
    if not data:
        return {}
    times: dict[str, float] = {}
    medians = data.get("median_ms")
    if isinstance(medians, dict):
        times.update({k: v for k, v in ((k, number(v)) for k, v in medians.items()) if v is not None})
    for mode in ("cached", "uncached", "raw"):  # flat shapes: cached_ms, cached_median_ms
        for key in (f"{mode}_ms", f"{mode}_median_ms", f"median_{mode}_ms"):
            if mode not in times and number(data.get(key)) is not None:
                times[mode] = number(data[key])
    return times


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# --------------------------------------------------------------------------- headlines
# Used only when a result file has no "headline" of its own (older files); they follow
# the benchmark scripts' own headline where there is one.


def _consensus_headline(d: dict) -> str:
    rows = rows_of(d)
    lo, hi = rows[0], rows[-1]
    text = f"one height in simulation: {duration(lo['wall s/height'])} wall at n={lo['n']}"
    if hi is not lo:
        text += f", {duration(hi['wall s/height'])} at n={hi['n']} ({hi['msgs/height']:.0f} msgs/height)"
    return text + f"; {statistics.median(r['steps/s'] for r in rows):,.0f} steps/s"


def _ballot_headline(d: dict) -> str:
    t = ballot_times(d)
    text = (f"prefix-cached ballot median {t['cached']:.0f} ms vs {t['uncached']:.0f} ms uncached "
            f"({t['cached'] / t['uncached']:.2f}x)")
    return text + (f", raw llama-cpp {t['raw']:.0f} ms" if "raw" in t else "")


def _anchor_headline(d: dict) -> str:  # as bench_anchor.py prints it
    rows = rows_of(d)
    lo, hi = rows[0], rows[-1]
    marginal = (hi["gas_steady"] - lo["gas_steady"]) / max(1, hi["signatures"] - lo["signatures"])
    text = (f"{hi['gas_steady']:.0f} gas per checkpoint at {hi['validators']} validators, "
            f"{marginal:.0f} gas per extra signature; submit-to-receipt p50 "
            f"{statistics.median(r['submit_to_receipt_ms_p50'] for r in rows):.1f} ms")
    verify = d.get("verify_one_decision_ms") or {}
    return text + (f"; verify one decision {verify['evm']:.1f} ms" if "evm" in verify else "")


def _gossip_headline(d: dict) -> str:  # as bench_gossip.py, without the drain window
    rows = rows_of(d)
    lo, hi = rows[0], rows[-1]
    text = f"light load p50 {lo['latency_p50_ms']:.1f} ms, p99 {lo['latency_p99_ms']:.1f} ms at n={lo['n']}"
    if hi is not lo:
        text += f"; p50 {hi['latency_p50_ms']:.1f} ms, p99 {hi['latency_p99_ms']:.1f} ms at n={hi['n']}"
    return text + f"; saturated, {hi['delivered_per_s']:,.0f} deliveries/s at n={hi['n']}"


def agreement_headline(d: dict) -> str:  # bench_agreement.py prints this one too
    rows = rows_of(d)
    first, last = rows[0], rows[-1]
    text = (f"agreement p50 {first['p50_ms']:.0f} ms at n={first['n']} = {first['ratio_p50']:.1f}x one-hop gossip "
            f"p50 ({first['gossip_p50_ms']:.1f} ms)")
    text += f"; {last['p50_ms']:.0f} ms at n={last['n']}" if last is not first else ""
    if "from_reveal_p50_ms" in first:
        text += (f" (from the quorum's reveals: {first['from_reveal_p50_ms']:.0f} ms = "
                 f"{first['from_reveal_ratio_p50']:.1f}x at n={first['n']})")
    return text


def _throughput_headline(d: dict) -> str:
    return "; ".join(f"{r['motions_per_s']:.0f} motions/s at n={r['n']}" for r in rows_of(d)) or "no rows"


def _e2e_headline(d: dict) -> str:
    parts = []
    for r in rows_of(d):
        part = f"{r['motions_per_s']:.2f} motions/s at n={r['n']}, per motion p50 {r['per_motion_p50_s']:.2f} s"
        share = (r.get("split_share") or {}).get("inference")
        parts.append(part + (f" ({share:.0%} inference)" if number(share) is not None else ""))
    return "; ".join(parts) or "no rows"


HEADLINES: dict[str, Callable[[dict], str]] = {
    "consensus": _consensus_headline, "ballot": _ballot_headline, "anchor": _anchor_headline,
    "gossip": _gossip_headline, "agreement": agreement_headline, "throughput": _throughput_headline,
    "e2e": _e2e_headline,
}


def headline_of(name: str, data: dict) -> str:
    if isinstance(data.get("headline"), str) and data["headline"].strip():
        return data["headline"].strip()
    derive = HEADLINES.get(name)
    if derive is None:
        return "(no headline)"
    try:
        return derive(data)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return "(no headline; unexpected shape)"


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    source: str  # the result file it is read from
    value: float | None = None  # the measured figure the threshold applies to
    measured: str = "-"  # the same, for a reader
    status: str = NOT_MEASURED

    def judge(self, value: float | None, measured: str, ok: Callable[[float], bool]) -> Target:
        if value is not None:
            self.value, self.measured, self.status = round(value, 4), measured, MET if ok(value) else NOT_MET
        return self


def targets(found: dict[str, dict]) -> list[Target]:
    agreement, throughput, ballot = found.get("agreement"), found.get("throughput"), found.get("ballot")
    out = []

    t = Target("agreement p50 at n=4 <= 4x one-hop gossip p50", "agreement.json")
    row = row_at(agreement, 4) or {}
    p50, gossip = number(row.get("p50_ms")), number(row.get("gossip_p50_ms"))
    ratio = number(row.get("ratio_p50"))
    if ratio is None and p50 is not None and gossip:
        ratio = p50 / gossip
    measured = f"{ratio:.1f}x" if ratio is not None else "-"
    if ratio is not None and p50 is not None and gossip is not None:
        measured += f" ({p50:.0f} ms vs gossip {gossip:.1f} ms)"
    if number(row.get("from_reveal_ratio_p50")) is not None:
        measured += f"; from the quorum's reveals {row['from_reveal_ratio_p50']:.1f}x"
    out.append(t.judge(ratio, measured, lambda v: v <= 4.0))

    t = Target("agreement p50 at n=16 < 1000 ms", "agreement.json")
    p50 = number((row_at(agreement, 16) or {}).get("p50_ms"))
    out.append(t.judge(p50, f"{p50:.0f} ms" if p50 is not None else "-", lambda v: v < 1000.0))

    for n, floor in ((4, 200.0), (16, 50.0)):
        t = Target(f"throughput at n={n} >= {floor:.0f} motions/s", "throughput.json")
        rate = number((row_at(throughput, n) or {}).get("motions_per_s"))
        out.append(t.judge(rate, f"{rate:.1f} motions/s" if rate is not None else "-",
                           lambda v, floor=floor: v >= floor))

    t = Target("prefix-cached ballot <= 0.7x uncached", "ballot.json")
    times = ballot_times(ballot)
    ratio, measured = None, "-"
    if times.get("cached") is not None and times.get("uncached"):
        ratio = times["cached"] / times["uncached"]
        measured = f"{ratio:.2f}x ({times['cached']:.0f} ms vs {times['uncached']:.0f} ms)"
    elif ballot and number(ballot.get("ratio_uncached_over_cached")):
        ratio = 1 / number(ballot["ratio_uncached_over_cached"])
        measured = f"{ratio:.2f}x"
    out.append(t.judge(ratio, measured, lambda v: v <= 0.7))
    return out


# --------------------------------------------------------------------------- output


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores"


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(tuple("-" * w for w in widths)), *map(line, rows)])


def markdown(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def headline_line(benchmarks: int, ts: list[Target]) -> str:
    return f"{benchmarks} benchmarks, {sum(t.status == MET for t in ts)} of {len(ts)} targets met"


# --------------------------------------------------------------------------- figures


def _figure(plt, title: str, source: str):
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=FIG_DPI)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(True, which="major", alpha=0.3)
    fig.text(0.99, 0.01, f"{machine()} · bench/results/{source}", ha="right", va="bottom",
             fontsize=6, color="0.4")
    return fig, ax


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=FIG_DPI, format="png")
    plt.close(fig)
    return path


def _sizes_axis(ax, sizes, label: str) -> None:
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.set_xlabel(label, fontsize=9)


def fig_agreement(plt, d: dict, path: Path) -> Path | None:
    rows = sorted((r for r in rows_of(d) if number(r.get("p50_ms")) is not None), key=lambda r: r["n"])
    if not rows:
        return None
    ns = [r["n"] for r in rows]
    fig, ax = _figure(plt, "Agreement latency (ballots available → decided everywhere)", "agreement.json")
    ax.plot(ns, [r["p50_ms"] for r in rows], "o-", color="C0", label="agreement p50")
    if all(number(r.get("p99_ms")) is not None for r in rows):
        ax.plot(ns, [r["p99_ms"] for r in rows], "s--", color="C0", alpha=0.6, label="agreement p99")
    if all(number(r.get("gossip_p50_ms")) is not None for r in rows):
        ax.plot(ns, [r["gossip_p50_ms"] for r in rows], "^-", color="C2", label="one-hop gossip p50 (same run)")
    # The targets, each as a bar-shaped marker at the size it applies to.
    at4 = next((r for r in rows if r["n"] == 4 and number(r.get("gossip_p50_ms")) is not None), None)
    if at4 is not None:
        ax.plot([4], [4 * at4["gossip_p50_ms"]], "_", color="C3", markersize=22, markeredgewidth=2,
                label="target at n=4: 4x gossip p50")
    if 16 in ns:
        ax.plot([16], [1000], "_", color="C3", markersize=22, markeredgewidth=2, alpha=0.5,
                label="target at n=16: 1000 ms")
    ax.set_yscale("log")
    _sizes_axis(ax, ns, "validators (n)")
    ax.set_ylabel("latency (ms, log scale)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return _save(plt, fig, path)


def fig_throughput(plt, d: dict, path: Path) -> Path | None:
    rows = sorted((r for r in rows_of(d) if number(r.get("motions_per_s")) is not None), key=lambda r: r["n"])
    if not rows:
        return None
    goal = {4: 200.0, 16: 50.0}
    fig, ax = _figure(plt, "Decided motions per second", "throughput.json")
    xs = range(len(rows))
    bars = ax.bar(xs, [r["motions_per_s"] for r in rows], width=0.55, color="C0")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    labelled = False
    for x, r in zip(xs, rows):
        target = goal.get(r["n"], number(r.get("target_per_s")))
        if target is not None:
            ax.hlines(target, x - 0.4, x + 0.4, colors="C3", linestyles="--",
                      label=None if labelled else "target")
            labelled = True
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"n={r['n']}" for r in rows])
    ax.set_xlabel("validators", fontsize=9)
    ax.set_ylabel("motions/s", fontsize=9)
    ax.margins(y=0.15)
    if labelled:
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


SPLIT = ("inference", "waiting", "consensus", "storage")


def fig_e2e(plt, d: dict, path: Path) -> Path | None:
    rows = sorted((r for r in rows_of(d) if isinstance(r.get("split_s"), dict)), key=lambda r: r["n"])
    if not rows:
        return None
    fig, ax = _figure(plt, "End to end: where a motion's time goes (mean per motion)", "e2e.json")
    xs = range(len(rows))
    bottom = [0.0] * len(rows)
    for i, part in enumerate(SPLIT):
        values = [number(r["split_s"].get(part)) or 0.0 for r in rows]
        ax.bar(xs, values, width=0.55, bottom=bottom, color=f"C{i}", label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, total in zip(xs, bottom):
        ax.annotate(f"{total:.2f} s", (x, total), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"n={r['n']}" for r in rows])
    ax.set_xlabel("validators", fontsize=9)
    ax.set_ylabel("seconds per motion", fontsize=9)
    ax.margins(y=0.15)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(plt, fig, path)


def fig_anchor(plt, d: dict, path: Path) -> Path | None:
    rows = sorted((r for r in rows_of(d) if number(r.get("gas_steady")) is not None), key=lambda r: r["validators"])
    if not rows:
        return None
    vs = [r["validators"] for r in rows]
    fig, ax = _figure(plt, "Gas per anchored checkpoint (a quorum's signatures)", "anchor.json")
    ax.plot(vs, [r["gas_steady"] for r in rows], "o-", color="C0", label="steady state")
    if all(number(r.get("gas_first")) is not None for r in rows):
        ax.plot(vs, [r["gas_first"] for r in rows], "s--", color="C1", alpha=0.7, label="first checkpoint")
    for r in rows:
        if "signatures" in r:
            ax.annotate(f"{r['signatures']} sigs", (r["validators"], r["gas_steady"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)
    _sizes_axis(ax, vs, "validators")
    ax.set_ylabel("gas per checkpoint", fontsize=9)
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    ax.margins(y=0.15)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def fig_simulation(plt, d: dict, path: Path) -> Path | None:
    rows = sorted((r for r in rows_of(d) if number(r.get("wall s/height")) is not None), key=lambda r: r["n"])
    if not rows:
        return None
    ns = [r["n"] for r in rows]
    fig, ax = _figure(plt, "Simulation: wall time of one consensus height", "consensus.json")
    ax.plot(ns, [r["wall s/height"] for r in rows], "o-", color="C0")
    for r in rows:
        ax.annotate(duration(r["wall s/height"]), (r["n"], r["wall s/height"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    ax.set_yscale("log")
    _sizes_axis(ax, ns, "validators (n)")
    ax.set_ylabel("wall seconds per height (log scale)", fontsize=9)
    ax.margins(y=0.2)
    return _save(plt, fig, path)


def fig_ballots(plt, d: dict, path: Path) -> Path | None:
    times = ballot_times(d)
    modes = [m for m in ("raw", "uncached", "cached") if m in times]
    if not modes:
        return None
    labels = {"raw": "raw llama-cpp", "uncached": "runtime, no cache", "cached": "runtime, prefix cache"}
    fig, ax = _figure(plt, "Ballot latency, median (same prompt and grammar)", "ballot.json")
    bars = ax.bar(range(len(modes)), [times[m] for m in modes], width=0.55,
                  color=[{"raw": "C7", "uncached": "C1", "cached": "C0"}[m] for m in modes])
    ax.bar_label(bars, fmt="%.0f ms", fontsize=7)
    ax.set_xticks(range(len(modes)))
    ax.set_xticklabels([labels[m] for m in modes])
    ax.set_ylabel("milliseconds per ballot", fontsize=9)
    ax.margins(y=0.15)
    return _save(plt, fig, path)


FIGURES_BY_RESULT = (  # (result, figure file, drawer)
    ("agreement", "agreement.png", fig_agreement),
    ("throughput", "throughput.png", fig_throughput),
    ("e2e", "e2e_split.png", fig_e2e),
    ("anchor", "anchoring_gas.png", fig_anchor),
    ("consensus", "simulation.png", fig_simulation),
    ("ballot", "ballots.png", fig_ballots),
)


def draw_figures(found: dict[str, dict], figures: Path) -> list[Path]:
    wanted = [spec for spec in FIGURES_BY_RESULT if spec[0] in found]
    if not wanted:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print(f"figures skipped: {exc}", file=sys.stderr)
        return []
    figures.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, filename, draw in wanted:
        try:
            path = draw(plt, found[name], figures / filename)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            plt.close("all")
            print(f"figure {filename} skipped: {name}.json has an unexpected shape ({exc!r})", file=sys.stderr)
            continue
        if path is not None:
            drawn.append(path)
    return drawn


# --------------------------------------------------------------------------- main


def shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the benchmarks' JSON files are")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="where to write the PNG figures")
    args = parser.parse_args(argv)

    found, broken = load_results(args.results)
    names = ordered(found)
    benchmarks = [(name, headline_of(name, found[name])) for name in names]
    benchmarks += [(name, f"(unreadable: {err})") for name, err in sorted(broken.items())]
    ts = targets(found)
    headline = headline_line(len(names), ts)

    bench_headers, target_headers = ("benchmark", "headline"), ("target", "measured", "status")
    bench_rows = benchmarks
    target_rows = [(t.name, t.measured, t.status) for t in ts]
    print(table(bench_headers, bench_rows) if bench_rows else f"no benchmark results in {shown(args.results)}")
    print()
    print(table(target_headers, target_rows))
    print()

    args.results.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": machine(), "python": platform.python_version(),
        "benchmarks": [{"name": n, "file": f"{n}.json", "headline": h} for n, h in benchmarks],
        "targets": [{"target": t.name, "source": t.source, "value": t.value, "measured": t.measured,
                     "status": t.status} for t in ts],
        "headline": headline,
    }
    (args.results / f"{SUMMARY}.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = [markdown(bench_headers, bench_rows), "", markdown(target_headers, target_rows), "",
          f"Measured on {machine()}; {headline}.", ""]
    (args.results / f"{SUMMARY}.md").write_text("\n".join(md))
    print(f"written to {shown(args.results / f'{SUMMARY}.json')} and {shown(args.results / f'{SUMMARY}.md')}")

    drawn = draw_figures(found, args.figures)
    if drawn:
        print(f"figures in {shown(args.figures)}: {', '.join(p.name for p in drawn)}")
    print(f"headline: {headline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
