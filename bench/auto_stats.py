"""bench/auto.py's figures: medians per setting, the table, the issue's two verdicts, and how
sure each verdict is.

Single runs of one setting spread 20-40% on these 1-3 s jobs (the epoch at which test accuracy
first crosses the target moves by two or three), so a ratio of two medians of ten runs moves
by several percent from one bench run to the next. Each verdict therefore comes with a
bootstrap: the runs of every (row, setting) are resampled with replacement and the ratio or
the sums computed again, ``SAMPLES`` times. A 90% interval for auto over the best fixed setting
that lies wholly above 1.10 says auto is behind by more than 10%; one that straddles it says
these runs cannot tell.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any

SAMPLES = 2000
AUTO = "auto"

# row -> setting -> summary (median_s, times_s, all_reached)
Summary = dict[str, dict[str, dict[str, Any]]]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["to_target_s"] for r in runs]
    return {
        "median_s": round(statistics.median(times), 2),
        "times_s": times,
        "all_reached": all(r["reached"] for r in runs),
    }


def best_fixed(by_setting: dict[str, dict[str, Any]], names: Sequence[str]) -> str:
    fixed = [n for n in names if n != AUTO]
    return min(fixed, key=lambda n: by_setting[n]["median_s"])


def table(summary: Summary, names: Sequence[str]) -> str:
    lines = [
        "| scenario | " + " | ".join(names) + " | best fixed | auto / best |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for scenario, by_setting in summary.items():
        best = best_fixed(by_setting, names)
        cells = [
            f"{by_setting[n]['median_s']:.2f}" + ("" if by_setting[n]["all_reached"] else "*")
            for n in names
        ]
        ratio = by_setting[AUTO]["median_s"] / by_setting[best]["median_s"]
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {best} | {ratio:.2f} |")
    totals = [sum(summary[s][n]["median_s"] for s in summary) for n in names]
    lines.append("| sum | " + " | ".join(f"{t:.2f}" for t in totals) + " | | |")
    return "\n".join(lines)


def _resampled_median(times: list[float], rng: random.Random) -> float:
    return statistics.median(rng.choices(times, k=len(times)))


def _interval(values: list[float]) -> list[float]:
    """The 5th and 95th percentiles."""
    ordered = sorted(values)
    return [round(ordered[int(q * len(ordered))], 3) for q in (0.05, 0.95)]


def ratio_intervals(summary: Summary, names: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """Per row, a 90% bootstrap interval of auto's median over the best fixed setting's (the
    one best by the observed medians)."""
    rng = random.Random(seed)
    out = {}
    for row, by_setting in summary.items():
        auto = by_setting[AUTO]["times_s"]
        best = by_setting[best_fixed(by_setting, names)]["times_s"]
        ratios = [
            _resampled_median(auto, rng) / _resampled_median(best, rng) for _ in range(SAMPLES)
        ]
        out[row] = _interval(ratios)
    return out


def sum_odds(summary: Summary, names: Sequence[str], seed: int = 0) -> dict[str, float]:
    """Per fixed setting, the share of bootstrap samples in which auto's sum of medians over
    the rows is below that setting's."""
    rng = random.Random(seed)
    wins = dict.fromkeys((n for n in names if n != AUTO), 0)
    for _ in range(SAMPLES):
        sums = {
            n: sum(_resampled_median(summary[row][n]["times_s"], rng) for row in summary)
            for n in names
        }
        for n in wins:
            wins[n] += sums[AUTO] < sums[n]
    return {n: round(w / SAMPLES, 3) for n, w in wins.items()}


def verdicts(summary: Summary, names: Sequence[str]) -> dict[str, Any]:
    """Auto over the best fixed setting per row, the sums of every setting over the rows, and
    how sure each is (see the module's docstring)."""
    ratios = {}
    for row, by_setting in summary.items():
        best = by_setting[best_fixed(by_setting, names)]["median_s"]
        ratios[row] = round(by_setting[AUTO]["median_s"] / best, 3)
    totals = {n: round(sum(summary[r][n]["median_s"] for r in summary), 2) for n in names}
    return {
        "auto_over_best_fixed": ratios,
        "within_10_percent": {r: x <= 1.10 for r, x in ratios.items()},
        "auto_over_best_fixed_90pct": ratio_intervals(summary, names),
        "sum_s": totals,
        "auto_beats_every_fixed_setting_in_sum": all(
            totals[AUTO] < t for n, t in totals.items() if n != AUTO
        ),
        "auto_sum_below_setting_odds": sum_odds(summary, names),
    }
