"""The compression table: one row per variant, the original first, and its JSON form.

The JSON is what ``pscluster compress`` writes and ``pscluster plot`` reads (accuracy against
size); :meth:`CompressionReport.from_json` reads it back, so a saved table can be compared
with a later one. Ratios are against the first row, the original.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pscluster.model.names import LOWER_IS_BETTER

KIND = "pscluster.compression_report"
VERSION = 1


@dataclass(frozen=True)
class Variant:
    """One model of the table, measured on the same test set, batch and threads."""

    name: str  # "original", "int8", "unstructured 50% + 3 epochs", ...
    parameters: int  # of the float model it was made from (int8 keeps the count)
    nonzero: int  # of those, not zero (what pruning removes)
    size_bytes: int  # the artefact written in ``format``
    format: str  # ".safetensors" or ".pt"
    latency_ms: float  # median per batch
    metric: float  # the job's metric on the test set
    loss: float  # the job's loss on the test set
    finetune_job: str = ""  # the cluster job that fine-tuned it, if one did


@dataclass(frozen=True)
class CompressionReport:
    source: str  # the job id, or the model's class for a local model
    metric_name: str  # "accuracy", "mse", ...
    test_rows: int
    batch_rows: int
    threads: int
    repeats: int
    variants: tuple[Variant, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def original(self) -> Variant:
        return self.variants[0]

    def size_ratio(self, v: Variant) -> float:
        """How many times smaller than the original on disk."""
        return self.original.size_bytes / v.size_bytes if v.size_bytes else math.inf

    def speedup(self, v: Variant) -> float:
        return self.original.latency_ms / v.latency_ms if v.latency_ms else math.inf

    def change(self, v: Variant) -> float:
        """The metric's change against the original, in points for accuracy (x100), signed
        so that negative is worse whichever way the metric goes."""
        delta = v.metric - self.original.metric
        if self.metric_name in LOWER_IS_BETTER:
            delta = -delta
        return 100 * delta if self.metric_name in ("accuracy", "auc") else delta

    def to_json(self) -> dict[str, Any]:
        rows = []
        for v in self.variants:
            rows.append(
                {
                    **asdict(v),
                    "size_ratio": self.size_ratio(v),
                    "speedup": self.speedup(v),
                    "change": self.change(v),
                }
            )
        return {
            "kind": KIND,
            "version": VERSION,
            "source": self.source,
            "metric_name": self.metric_name,
            "test_rows": self.test_rows,
            "batch_rows": self.batch_rows,
            "threads": self.threads,
            "repeats": self.repeats,
            "notes": list(self.notes),
            "variants": rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompressionReport:
        if data.get("kind") != KIND:
            raise ValueError(
                f"not a compression report (kind {data.get('kind')!r}, expected {KIND!r})"
            )
        names = set(Variant.__dataclass_fields__)
        variants = tuple(
            Variant(**{k: v for k, v in row.items() if k in names}) for row in data["variants"]
        )
        if not variants:
            raise ValueError("the compression report has no variants")
        return cls(
            source=data["source"],
            metric_name=data["metric_name"],
            test_rows=data["test_rows"],
            batch_rows=data["batch_rows"],
            threads=data["threads"],
            repeats=data["repeats"],
            variants=variants,
            notes=tuple(data.get("notes", ())),
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> CompressionReport:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a compression report: {e}") from e

    def markdown(self) -> str:
        """The table as markdown (docs, bench output)."""
        lines = [
            f"| variant | parameters (nonzero) | size on disk | x smaller | latency ms/batch "
            f"| x faster | test {self.metric_name} | change |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in self.variants:
            lines.append(
                f"| {v.name} | {v.parameters:,} ({v.nonzero:,}) | {v.size_bytes / 1e6:.3f} MB "
                f"({v.format}) | {self.size_ratio(v):.2f} | {v.latency_ms:.3f} | "
                f"{self.speedup(v):.2f} | {v.metric:.4f} | {self.change(v):+.2f} |"
            )
        return "\n".join(lines)
