"""The figures of bench/coordinator_scale.py, computed from the simulated workers' records.

Pure functions over the records of bench/sim_workers.py (merged over its processes): rates
and latencies over a window, a per-second time series, the lost-lease check, and the tables.
Times are ``time.monotonic()`` seconds; a call belongs to the window its reply came in.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

Records = dict[str, list[list[Any]]]
RPCS = ("RegisterWorker", "Heartbeat", "AcquireTask", "ReportProgress", "CompleteTask")


def merge(parts: list[Records]) -> Records:
    out: Records = defaultdict(list)
    for part in parts:
        for key, rows in part.items():
            if isinstance(rows, list):
                out[key].extend(rows)
    return dict(out)


def latency(seconds: list[float]) -> dict[str, Any]:
    """Count, p50, p99, mean and max in milliseconds (None when there is nothing)."""
    if not seconds:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    a = np.asarray(seconds) * 1000.0
    return {
        "n": len(seconds),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "max_ms": round(float(a.max()), 2),
    }


def window(rec: Records, t0: float, t1: float) -> dict[str, Any]:
    """Everything measured over [t0, t1)."""
    dt = max(t1 - t0, 1e-9)

    def inside(rows: list[list[Any]], at: int) -> list[list[Any]]:
        return [r for r in rows if t0 <= r[at] < t1]

    acks = inside(rec.get("acks", []), 0)
    acquires = inside(rec.get("acquires", []), 1)
    leased = [a for a in acquires if a[2] != "wait"]
    waits = [a for a in acquires if a[2] == "wait"]
    calls = inside(rec.get("calls", []), 2)
    ok: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, Counter[str]] = defaultdict(Counter)
    for rpc, start, end, code in calls:
        if code == "OK":
            ok[rpc].append(end - start)
        else:
            errors[rpc][code] += 1
    beats = len(ok["Heartbeat"]) + sum(errors["Heartbeat"].values())
    refused = sum(errors["Heartbeat"].values())
    deaths = inside(rec.get("deaths", []), 0)
    again = [r for r in inside(rec.get("registrations", []), 0) if not r[2]]
    return {
        "seconds": round(dt, 2),
        "leases_per_s": round(len(acks) / dt, 2),
        "train_leases_per_s": round(sum(a[2] == "train" for a in acks) / dt, 2),
        "evals": sum(a[2] == "eval" for a in acks),
        "acquires_per_s": round(len(leased) / dt, 2),
        "waits_per_s": round(len(waits) / dt, 2),
        # Lease-returning AcquireTask, the time the coordinator says it held the call taken
        # out (an old coordinator does not say: its held calls are the ones that found
        # nothing at first, counted in acquire_held_calls when it does say).
        "acquire_lease": latency([(e - s) - held for s, e, _, held, _ in leased]),
        "acquire_held_calls": sum(1 for a in leased if a[3] > 0),
        "acquire_wait": latency([e - s for s, e, *_ in waits]),
        **{
            rpc: latency(ok[rpc])
            for rpc in ("CompleteTask", "Heartbeat", "ReportProgress", "RegisterWorker")
        },
        "heartbeats": beats,
        "heartbeats_refused": refused,
        "heartbeats_refused_pct": round(100.0 * refused / beats, 2) if beats else 0.0,
        "errors": {rpc: dict(errors[rpc]) for rpc in RPCS if errors[rpc]},
        "resource_exhausted": {
            rpc: errors[rpc]["RESOURCE_EXHAUSTED"]
            for rpc in RPCS
            if errors[rpc]["RESOURCE_EXHAUSTED"]
        },
        "false_deaths": len(deaths),
        "false_death_workers": len({d[1] for d in deaths}),
        "false_deaths_by": dict(Counter(d[2] for d in deaths)),
        "re_registrations": len(again),
    }


def series(rec: Records, t0: float, t1: float) -> dict[str, list[int]]:
    """Per-second counts from t0 (bins of one second, the last one partial)."""
    bins = max(1, int(np.ceil(t1 - t0)))

    def count(rows: list[list[Any]], at: int, keep: Any = None) -> list[int]:
        out = [0] * bins
        for r in rows:
            i = int(r[at] - t0)
            if 0 <= i < bins and (keep is None or keep(r)):
                out[i] += 1
        return out

    calls = rec.get("calls", [])
    slowest = [0] * bins  # where in the window the AcquireTask tail is (held time excluded)
    for start, end, kind, held, _ in rec.get("acquires", []):
        i = int(end - t0)
        if kind != "wait" and 0 <= i < bins:
            slowest[i] = max(slowest[i], round(1000.0 * (end - start - held)))
    beat = [0] * bins
    for rpc, start, end, code in calls:
        i = int(end - t0)
        if rpc == "Heartbeat" and code == "OK" and 0 <= i < bins:
            beat[i] = max(beat[i], round(1000.0 * (end - start)))
    return {
        "acquire_max_ms": slowest,
        "heartbeat_max_ms": beat,
        "leases": count(rec.get("acks", []), 0),
        "heartbeats_ok": count(calls, 2, lambda r: r[0] == "Heartbeat" and r[3] == "OK"),
        "heartbeats_refused": count(calls, 2, lambda r: r[0] == "Heartbeat" and r[3] != "OK"),
        "false_deaths": count(rec.get("deaths", []), 0),
    }


def _overlap(a_first: int, a_end: int, b_first: int, b_end: int) -> bool:
    """Batch ranges [first, end) overlap; end 0 means to the end of the partition."""
    inf = 1 << 62
    return a_first < (b_end or inf) and b_first < (a_end or inf)


def lost_leases(rec: Records, limit: int = 20) -> dict[str, Any]:
    """Finished leases the coordinator handed out again: a grant, asked for after a
    CompleteTask of the same job, epoch and batches (train) or epoch (eval) was acknowledged.

    Grants and acks are ``[t, ..., worker, kind, job, epoch, partition, first, end, lease]``;
    a grant counts from when it was asked for, so only a lease decided after the ack counts.
    """
    acked: dict[tuple[Any, ...], list[tuple[int, int, float, str]]] = defaultdict(list)
    for t, _worker, kind, job, epoch, partition, first, end, lease in rec.get("acks", []):
        acked[(kind, job, epoch, partition if kind == "train" else -1)].append(
            (first, end, t, lease)
        )
    lost: dict[str, dict[str, Any]] = {}
    for start, _, worker, kind, job, epoch, partition, first, end, lease in rec.get("grants", []):
        key = (kind, job, epoch, partition if kind == "train" else -1)
        for a_first, a_end, t_ack, a_lease in acked.get(key, []):
            if a_lease != lease and start > t_ack and _overlap(a_first, a_end, first, end):
                lost.setdefault(
                    a_lease,
                    {
                        "kind": kind,
                        "epoch": epoch,
                        "partition": partition,
                        "batches": [a_first, a_end],
                        "acked_at": t_ack,
                        "leased_again_at": start,
                        "to": worker,
                    },
                )
    examples = sorted(lost.values(), key=lambda x: x["acked_at"])
    return {"acked": len(rec.get("acks", [])), "lost": len(lost), "examples": examples[:limit]}


# --- tables ---
def span(p50: float | None, p99: float | None) -> str:
    """'443 / 645 ms' or '2.3 / 3.0 s', as the issue writes them."""
    if p50 is None or p99 is None:
        return "-"
    if p99 >= 1000:
        return f"{p50 / 1000:.1f} / {p99 / 1000:.1f} s"
    if p99 >= 10:
        return f"{p50:.0f} / {p99:.0f} ms"
    return f"{p50:.1f} / {p99:.1f} ms"


def issue_table(rows: list[dict[str, Any]]) -> str:
    """The issue's columns, one row per scenario."""
    lines = [
        "| tree | workers | lease ops/s | AcquireTask p50 / p99 | heartbeats refused | "
        "workers declared dead while heartbeating |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r["figures"]
        a = f["acquire_lease"]
        lines.append(
            f"| {r['tree']} | {r['workers']} | {f['leases_per_s']:.0f} | "
            f"{span(a['p50_ms'], a['p99_ms'])} | {f['heartbeats_refused_pct']:.0f}% | "
            f"{f['false_death_workers']} ({f['false_deaths']} deaths) |"
        )
    return "\n".join(lines)


def detail_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| tree | workers | acquires/s | waits/s | CompleteTask p50 / p99 | Heartbeat p50 / p99 "
        "| ReportProgress p50 / p99 | RESOURCE_EXHAUSTED | re-registrations | coordinator CPU "
        "/ RSS / threads | shards CPU | simulators CPU | machine CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, c = r["figures"], r["cpu"]
        exhausted = ", ".join(f"{k} {v}" for k, v in f["resource_exhausted"].items()) or "0"
        lines.append(
            f"| {r['tree']} | {r['workers']} | {f['acquires_per_s']:.0f} | "
            f"{f['waits_per_s']:.0f} | "
            f"{span(f['CompleteTask']['p50_ms'], f['CompleteTask']['p99_ms'])} | "
            f"{span(f['Heartbeat']['p50_ms'], f['Heartbeat']['p99_ms'])} | "
            f"{span(f['ReportProgress']['p50_ms'], f['ReportProgress']['p99_ms'])} | "
            f"{exhausted} | {f['re_registrations']} | {c['coordinator_pct']:.0f}% / "
            f"{c['coordinator_rss_mb']:.0f} MB / {c['coordinator_threads']} | "
            f"{c['shards_pct']:.0f}% | {c['sims_pct']:.0f}% | {c['machine_pct']:.0f}% |"
        )
    return "\n".join(lines)


def kill_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| tree | workers | killed at (s) | outage (s) | first lease done after restart (s) | "
        "leases acked | finished leases lost | lease ops/s after restart | re-registrations "
        "after restart |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        k = r.get("kill")
        if not k:
            continue
        first = k["first_ack_after_kill_s"]
        lines.append(
            f"| {r['tree']} | {r['workers']} | {k['at_s']:.0f} | {k['outage_s']:.1f} | "
            f"{'-' if first is None else f'{first:.1f}'} | {k['lost']['acked']} | "
            f"{k['lost']['lost']} | {k['after']['leases_per_s']:.0f} | "
            f"{k['after']['re_registrations']} |"
        )
    return "\n".join(lines)


# --- where the coordinator's threads are (bench/stack_sampler.py's folded stacks) ---
def profile(folded: str, source_line: Any) -> dict[str, Any]:
    """Average threads per state over the sampled rounds, and the innermost pscluster frames
    of the threads doing something. ``source_line(frame)`` returns a frame's source text (a
    thread whose innermost pscluster frame is on a ``with ...lock`` line waits for that lock).
    """
    rounds = 0
    states: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    for line in folded.splitlines():
        stack_text, _, n_text = line.rpartition(" ")
        n = int(n_text)
        if stack_text == "<rounds>":
            rounds += n
            continue
        stack = stack_text.split(";")
        own = [f for f in stack if f.startswith("pscluster/")]
        state = _state(stack, own, source_line)
        states[state] += n
        if own and state not in ("idle pool thread", "AcquireTask held (long poll)"):
            frames[own[-1]] += n
    per_round = max(rounds, 1)
    return {
        "rounds": rounds,
        "threads_by_state": {k: round(v / per_round, 2) for k, v in states.most_common()},
        "busy_frames": {k: round(v / per_round, 2) for k, v in frames.most_common(25)},
    }


def _state(stack: list[str], own: list[str], source_line: Any) -> str:
    leaf = stack[-1]
    if not own:
        if leaf.startswith("thread.py:_worker"):  # concurrent/futures: waits for a call
            return "idle pool thread"
        return f"no pscluster frame ({leaf.rsplit(':', 1)[0]})"
    if any(":acquire_waiting:" in f for f in own) and leaf.startswith("threading.py:wait"):
        return "AcquireTask held (long poll)"
    text = source_line(own[-1]).strip()
    if text.startswith("with ") and "lock" in text:
        return "waiting for a lock (" + own[-1] + ")"
    if any(f.startswith("grpc/_channel.py") for f in stack):
        return "in a gRPC call to a shard"
    if "sqlite" in own[-1]:
        return "SQLite (store)"
    if any(f.startswith("logging/") for f in stack):
        return "logging"
    if leaf.startswith("threading.py:wait"):
        return "waiting on a condition (" + own[-1] + ")"
    return "running coordinator code"
