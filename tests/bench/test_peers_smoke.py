"""bench/peers.py runs end to end on a tiny config and writes a row per system, setting and
durability of the shards.

No timing is asserted: figures on a shared machine are noise; only the shape of the result and
that both systems really trained (samples counted, a test accuracy per epoch) are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_peers_quick_writes_every_row(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "peers.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "peers.py"),
        "--quick",
        "--processes",
        "1",
        "--models",
        "digits",
        "--settings",
        "async,sync",
        "--durability",
        "log,memory",
        "--out",
        str(out),
    ]

    # Execute
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)

    # Assert
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    labels = [(r["model"], r["processes"], r["label"]) for r in result["rows"]]
    assert labels == [
        ("digits", 1, "DDP (gloo)"),
        ("digits", 1, "pscluster async"),
        ("digits", 1, "pscluster sync"),
        ("digits", 1, "pscluster async, shards in memory"),
        ("digits", 1, "pscluster sync, shards in memory"),
    ]
    # Two quick epochs of 1437 training images, whoever trains them; DDP ran twice (before
    # and after the pscluster jobs) and its row is their mean.
    ddp, *ps = result["rows"]
    assert len(ddp["runs"]) == 2
    for r in [*ddp["runs"], *ps]:
        assert r["samples"] == 2 * 1437, r
        assert r["samples_per_s"] > 0
        assert len(r["curve"]) == 2
        assert all(0.0 <= acc <= 1.0 for _, acc in r["curve"])
    assert {r["label"] for r in result["ratios"]} == {lb for _, _, lb in labels}
    assert [r["durable"] for r in ps] == [True, True, False, False]
    assert len(result["best"]) == 1 and result["best"][0]["label"] in {lb for *_, lb in labels[1:]}
    assert out.with_suffix(".png").stat().st_size > 0
    # Where each pscluster step went, and how far it is from the step's lower bounds
    for r in ps:
        assert set(r["phases_ms"]) >= {"pull", "forward", "backward", "push"}, r["phases_ms"]
    bound = result["step_bounds"]["digits/1"]
    assert bound["compute_ms"] > 0 and bound["tcp_mb_per_s"] > 0
    assert bound["overlap_bound_ms"] <= bound["serial_bound_ms"]
    distances = result["distance_to_bound"]
    assert [d["label"] for d in distances] == [lb for *_, lb in labels[1:]]
    assert all(d["x_serial_bound"] > 0 for d in distances)
