"""What bench/peers.py and bench/scaling.py train and how they tabulate it: the two models, the
pscluster settings, and the ratios against DDP."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DATA_FILE = ROOT / "examples" / "digits_data.py"


def load_module(path: Path) -> types.ModuleType:
    """Import a .py file by path, registered in sys.modules: the SDK ships a model's source
    by finding its module there."""
    name = f"bench_peers_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}: expected a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class ModelBench:
    """A model, its data and its optimizer, as both a pscluster job and a DDP run take them."""

    name: str
    model_file: Path
    class_name: str
    model_kwargs: dict[str, Any]
    epochs: int
    batch_size: int
    optimizer: dict[str, Any]
    target: bool  # report time to the target accuracy (a model that reaches it)
    data_file: Path = DATA_FILE
    _class: type[nn.Module] | None = field(default=None, repr=False)

    @property
    def model_class(self) -> type[nn.Module]:
        if self._class is None:
            cls = getattr(load_module(self.model_file), self.class_name)
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise TypeError(f"{self.model_file}:{self.class_name} is not an nn.Module class")
            self._class = cls
        return self._class

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model_class(**self.model_kwargs).parameters())

    def submit_kwargs(self) -> dict[str, Any]:
        train, test = load_module(self.data_file).load()
        return {
            "model": self.model_class,
            "model_kwargs": self.model_kwargs,
            "train": train,
            "test": test,
            "optimizer": self.optimizer,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "loss": "cross_entropy",
            "name": f"peers-{self.name}",
        }

    def describe(self) -> dict[str, Any]:
        return {
            "model": f"{self.model_file.relative_to(ROOT)}:{self.class_name}",
            "model_kwargs": self.model_kwargs,
            "params": self.params,
            "data": str(self.data_file.relative_to(ROOT)),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
        }


def digits(quick: bool = False) -> ModelBench:
    """examples/digits.yaml's job (MLP 64-128-10, batch 32) for 10 epochs instead of 20: every
    setting reached 0.95 well within 10 in trials, and the run has many jobs."""
    return ModelBench(
        name="digits",
        model_file=ROOT / "examples" / "digits_model.py",
        class_name="DigitsNet",
        model_kwargs={"hidden": 128},
        epochs=2 if quick else 10,
        batch_size=32,
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0001},
        target=True,
    )


def mlp5m(quick: bool = False, epochs: int = 3) -> ModelBench:
    """WideNet 64-2368-2368-10 (5.79M parameters, the issue's reference size), batch 64."""
    return ModelBench(
        name="mlp5m",
        model_file=ROOT / "bench" / "compression_model.py",
        class_name="WideNet",
        model_kwargs={"inputs": 64, "hidden": 256 if quick else 2368},
        epochs=1 if quick else epochs,
        batch_size=64,
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        target=False,
    )


def deep6m(quick: bool = False, epochs: int = 3) -> ModelBench:
    """DeepNet 64-1024x6-10 (5.3M parameters over six layers), batch 64: what overlapping
    pushes with backward and pulls with forward can hide, unlike mlp5m's one big layer."""
    return ModelBench(
        name="deep6m",
        model_file=ROOT / "bench" / "compression_model.py",
        class_name="DeepNet",
        model_kwargs={"inputs": 64, "hidden": 128 if quick else 1024, "layers": 6},
        epochs=1 if quick else epochs,
        batch_size=64,
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        target=False,
    )


MODELS = {"digits": digits, "mlp5m": mlp5m, "deep6m": deep6m}


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    mode: str
    staleness: int = 0
    shards: int = 1
    compression: dict[str, Any] | None = None
    local_steps: int = 0
    # Workers push each bucket during backward and run forward beside the pull
    # (PSC_OVERLAP, pscluster/worker/overlap.py); False: the serial step, for comparison.
    overlap: bool = True


SETTINGS = [
    Setting("async", "pscluster async", "async"),
    Setting("async2", "pscluster async, 2 shards", "async", shards=2),
    Setting("sync", "pscluster sync", "sync"),
    Setting("async-serial", "pscluster async, no overlap", "async", overlap=False),
    Setting("sync-serial", "pscluster sync, no overlap", "sync", overlap=False),
    Setting(
        "async2-serial", "pscluster async, 2 shards, no overlap", "async", shards=2, overlap=False
    ),
    Setting("ssp", "pscluster ssp s=2", "ssp", staleness=2),
    Setting("int8", "pscluster async + int8", "async", compression={"name": "int8"}),
    Setting(
        "topk", "pscluster async + topk 1%", "async", compression={"name": "topk", "ratio": 0.01}
    ),
    Setting(
        "int8pull16",
        "pscluster async + int8, fp16 pulls",
        "async",
        compression={"name": "int8", "pull_dtype": "float16"},
    ),
    Setting("async8", "pscluster async, 8 local steps", "async", local_steps=8),
    Setting("sync8", "pscluster sync, 8 local steps", "sync", local_steps=8),
    Setting("sync16", "pscluster sync, 16 local steps", "sync", local_steps=16),
]


def steady_rate(times: list[float], samples: list[int]) -> float | None:
    """Samples/s over the span of the training steps (the first step's samples excluded: the
    span starts when it ended)."""
    if len(times) < 2:
        return None
    pairs = sorted(zip(times, samples, strict=True))
    span = pairs[-1][0] - pairs[0][0]
    return sum(s for _, s in pairs[1:]) / span if span > 0 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row beside the DDP row of the same model and process count, with ratios
    (samples/s: above 1 is pscluster faster; time to target: below 1 is pscluster sooner)."""
    out = []
    for r in rows:
        ddp = next(
            (
                d
                for d in rows
                if d["system"] == "ddp"
                and d["model"] == r["model"]
                and d["processes"] == r["processes"]
            ),
            None,
        )
        base = ddp or {}
        out.append(
            {
                "model": r["model"],
                "processes": r["processes"],
                "label": r["label"],
                "system": r["system"],
                "samples_per_s": r["samples_per_s"],
                "steady_samples_per_s": r["steady_samples_per_s"],
                "time_to_target": r["time_to_target"],
                "final_accuracy": r["final_accuracy"],
                "ratio_samples_per_s": _ratio(r["samples_per_s"], base.get("samples_per_s")),
                "ratio_steady": _ratio(r["steady_samples_per_s"], base.get("steady_samples_per_s")),
                "ratio_time_to_target": _ratio(r["time_to_target"], base.get("time_to_target")),
            }
        )
    return out


def best_rows(ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and process count, the pscluster setting with the most samples/s."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in ratios:
        if r["system"] != "pscluster" or r["ratio_samples_per_s"] is None:
            continue
        key = (r["model"], r["processes"])
        if key not in best or r["ratio_samples_per_s"] > best[key]["ratio_samples_per_s"]:
            best[key] = r
    return list(best.values())


def target_verdicts(ratios: list[dict[str, Any]]) -> dict[str, str]:
    """Per model and process count, whether a pscluster setting meets the issue's target:
    >= 1.0x DDP samples/s and, where the model has a time to target, no later than DDP."""
    verdicts: dict[str, str] = {}
    for r in ratios:
        if r["system"] != "ddp":
            continue
        key = f"{r['model']}, {r['processes']} process(es)"
        meeting = [
            p["label"]
            for p in ratios
            if p["system"] == "pscluster"
            and p["model"] == r["model"]
            and p["processes"] == r["processes"]
            and (p["ratio_samples_per_s"] or 0.0) >= 1.0
            and (r["time_to_target"] is None or _no_later(p["ratio_time_to_target"]))
        ]
        verdicts[key] = (
            f"target met by {', '.join(meeting)}"
            if meeting
            else "target (>= 1.0x, no later) not met"
        )
    return verdicts


def _no_later(time_ratio: float | None) -> bool:
    """Reached the target no later than DDP (None: never reached it)."""
    return time_ratio is not None and time_ratio <= 1.0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(ratios: list[dict[str, Any]]) -> str:
    lines = [
        "| model | processes | system / setting | samples/s | x DDP | steady samples/s | x DDP "
        "| time to 0.95 (s) | x DDP | final test accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['model']} | {r['processes']} | {r['label']} | "
            f"{_fmt(r['samples_per_s'], '.0f')} | {_fmt(r['ratio_samples_per_s'], '.2f')} | "
            f"{_fmt(r['steady_samples_per_s'], '.0f')} | {_fmt(r['ratio_steady'], '.2f')} | "
            f"{_fmt(r['time_to_target'], '.1f')} | {_fmt(r['ratio_time_to_target'], '.2f')} | "
            f"{_fmt(r['final_accuracy'], '.4f')} |"
        )
    return "\n".join(lines)
