"""Reward throughput: parse-then-score completions per second on one core.

    python benchmarks/reward_throughput.py            # 10k completions, 3 repeats
    python benchmarks/reward_throughput.py --n 2000   # quicker

The completions are a realistic mix generated from a few hand-made examples (no
dataset needed): well-formatted answers citing prompt values, markdown and
"Prediction:" variants, partial answers, long prose full of numbers, and junk.
A second, separate timing scores ``--long_n`` completions of ~1.9k characters
(about a full 400-token answer): the regex scans are linear in length, so
this is the slow end. Every completion is unique, so the parser's small LRU cache never hits during
``score_batch``; the TRL path calls the five reward functions on batches of
``--trl_batch`` completions, as GRPOTrainer does, so they share one parse.

Rates are completions per CPU-second of one core (best of --repeats), so other
processes on a shared machine do not distort them.

Writes benchmarks/results/reward_throughput-<hostname>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from stonklib.data.records import Example, HistoryRow
from stonklib.rewards import parse_all, score_batch, trl_reward_funcs
from stonklib.rewards.parse import _parse_cached

RESULTS = Path(__file__).resolve().parent / "results"


def make_examples(n_tickers: int, rng: random.Random) -> list[Example]:
    out = []
    for t in range(n_tickers):
        price = rng.uniform(20, 400)
        hist = []
        for i in range(15):
            hist.append(HistoryRow(f"2024-03-{28 - i:02d}", round(price * (1 + rng.gauss(0, 0.01)) ** i, 3),
                                   float(rng.randint(500_000, 5_000_000))))
        moves = [rng.gauss(0.05, 1.5) for _ in range(3)]
        out.append(Example(
            ticker=f"T{t:02d}", date=hist[0].date, close=hist[0].close, previous_close=hist[1].close,
            change_pct_1=moves[0], change_pct_2=moves[1], change_pct_3=moves[2],
            direction_1="up" if moves[0] > 0 else "down", direction_2="up" if moves[1] > 0 else "down",
            direction_3="up" if moves[2] > 0 else "down", flat_1=False, history=tuple(hist),
            return_5d=rng.gauss(0, 3), volatility_10d=abs(rng.gauss(1.5, 0.5)), volume_ratio=rng.uniform(0.5, 2),
            financial_metrics={"pe_ratio": round(rng.uniform(8, 40), 2)}))
    return out


def make_completion(ex: Example, rng: random.Random) -> str:
    def day_line(d: int, style: int) -> str:
        direction = rng.choice(["UP", "DOWN"])
        pct, conf = round(abs(rng.gauss(1, 1)), rng.choice([1, 2])), rng.randint(30, 95)
        return [f"Day {d}: {direction} {pct}% with {conf}% confidence",
                f"**Day {d}:** Prediction: **{direction.lower()}** {pct}% with {conf}% confidence",
                f"- Day {d} - {direction} {pct} (confidence: {conf})"][style]

    def justification() -> str:
        h = rng.sample(ex.history, 3)
        bits = [f"the close of ${h[0].close:.2f} on {h[0].date}", f"volume {int(h[1].volume):,}",
                f"{h[2].date} closed at {h[2].close:.2f}", f"a day change of {ex.day_change_pct:.2f}%",
                f"a {rng.uniform(0, 5):.1f}% move I estimate", f"P/E {ex.financial_metrics['pe_ratio']}"]
        rng.shuffle(bits)
        return "Justification: Given " + ", ".join(bits[: rng.randint(1, 6)]) + ", I expect continuation."

    kind = rng.random()
    if kind < 0.10:  # junk
        return rng.choice(["", "I cannot predict the stock market.", "asdf " * rng.randint(1, 400),
                           f"{rng.random()} {rng.random()} nan inf 1e308"])
    if kind < 0.25:  # long prose full of numbers, then an answer
        prose = " ".join(f"On {h.date} the stock closed at ${h.close:.2f} with {int(h.volume)} shares traded "
                         f"({rng.uniform(-3, 3):.2f}%)." for h in ex.history[: rng.randint(3, 15)])
        return f"Analysis: {prose}\n\n{day_line(1, 0)}\n{justification()}"
    if kind < 0.40:  # partial: day 1 only
        return f"{day_line(1, rng.randint(0, 2))}\n{justification()}"
    style = 0 if kind < 0.80 else rng.randint(1, 2)
    return "\n".join(f"{day_line(d, style)}\n{justification()}" for d in (1, 2, 3))


def timed(fn, repeats: int) -> float:
    """Best of ``repeats`` CPU times of this process: on a shared machine, wall time also counts the
    time other processes hold the core; CPU time does not (the work is single-threaded)."""
    times = []
    for _ in range(repeats):
        _parse_cached.cache_clear()
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def cpu_model() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # --- workload
    ap.add_argument("--n", type=int, default=10_000, help="Completions to score.")
    ap.add_argument("--tickers", type=int, default=8, help="Distinct hand-made examples.")
    ap.add_argument("--seed", type=int, default=0, help="Random seed for the completion mix.")
    ap.add_argument("--long_n", type=int, default=2000,
                    help="Also time this many ~1.9k-character completions (a 400-token answer), separately.")
    ap.add_argument("--trl_batch", type=int, default=64, help="Completions per TRL reward call (batch_size x num_generations).")
    # --- measurement
    ap.add_argument("--repeats", type=int, default=5, help="Timed repeats; the best is reported.")
    ap.add_argument("--out", type=Path, default=None, help="Result JSON (default: results/reward_throughput-<host>.json).")
    args = ap.parse_args()
    print("config:", json.dumps({k: str(v) for k, v in vars(args).items()}))

    rng = random.Random(args.seed)
    examples = make_examples(args.tickers, rng)
    pairs = [(ex, make_completion(ex, rng)) for ex in (rng.choice(examples) for _ in range(args.n))]
    exs, comps = [p[0] for p in pairs], [p[1] for p in pairs]
    rows = [ex.to_row() for ex in exs]
    funcs = trl_reward_funcs()
    b = args.trl_batch
    batches = [(comps[i:i + b], {k: [r[k] for r in rows[i:i + b]] for k in rows[0]}) for i in range(0, args.n, b)]

    t_parse = timed(lambda: [parse_all(c) for c in comps], args.repeats)
    t_score = timed(lambda: score_batch(comps, exs), args.repeats)
    t_trl = timed(lambda: [f(completions=c, **cols) for c, cols in batches for f in funcs], args.repeats)
    totals = [b.total for b in score_batch(comps, exs)]
    long_exs = [rng.choice(examples) for _ in range(args.long_n)]
    long_comps = ["\n\n".join(make_completion(ex, rng) for _ in range(4)) for ex in long_exs]
    t_long = timed(lambda: score_batch(long_comps, long_exs), args.repeats) if args.long_n else float("nan")

    result = {
        "benchmark": "reward_throughput",
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "n_completions": args.n,
        "mean_chars": round(statistics.mean(len(c) for c in comps), 1),
        "timer": f"process CPU time of one core, best of {args.repeats}",
        "parse_per_s": round(args.n / t_parse),
        "score_per_s": round(args.n / t_score),  # parse-then-score, the headline number
        "trl_funcs_per_s": round(args.n / t_trl),  # all five TRL functions per batch, incl. row -> Example
        "trl_batch": b,
        "long_mean_chars": round(statistics.mean(len(c) for c in long_comps), 1) if long_comps else None,
        "long_score_per_s": round(args.long_n / t_long) if args.long_n else None,
        "mean_total": round(statistics.mean(totals), 3),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = args.out or RESULTS / f"reward_throughput-{result['host']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
