"""One compression, start to end: check the request, prune (and fine-tune), quantize, measure.

Everything that can be wrong with a request (an unknown quantization, an amount outside
[0, 1), a model structured pruning cannot slice, a file name that cannot hold the result) is
found by :func:`prepare`, before any model is changed or any job is submitted. :func:`run`
then makes the variants in order (pruned, then quantized: quantizing last keeps the int8
scales fitted to the weights that are left) and measures each beside the original.

The fine-tune is not done here: the caller passes a function that trains the pruned weights
with their zeros held (on the cluster: :mod:`pscluster.client.compress_job`), so this module
decides and measures and never opens a socket.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pscluster.data import inputs
from pscluster.data.inputs import Inputs
from pscluster.model_compression import artefact, measure, prune, structure
from pscluster.model_compression import quantize as quantization
from pscluster.model_compression.measure import TestSet
from pscluster.model_compression.prune import Masks, PruneSpec
from pscluster.model_compression.report import CompressionReport, Variant

# (pruned state_dict, parameters whose zeros the fine-tune holds) -> (trained state_dict,
# the id of the job that trained it)
Finetune = Callable[[dict[str, torch.Tensor], list[str]], tuple[dict[str, torch.Tensor], str]]


@dataclass(frozen=True)
class Request:
    quantize: str | None = None
    prune: PruneSpec | None = None
    finetune_epochs: int = 0
    batch_rows: int = 256  # the batch every variant is timed on
    threads: int = 1
    repeats: int = 50

    @classmethod
    def parse(
        cls,
        *,
        quantize: str | None,
        prune: PruneSpec | float | dict[str, object] | None,
        finetune_epochs: int = 0,
        batch_rows: int = 256,
        threads: int = 1,
        repeats: int = 50,
    ) -> Request:
        """The request, each argument checked; ValueError naming the one that is wrong."""
        spec = PruneSpec.parse(prune)
        for name, value, low in (
            ("finetune_epochs", finetune_epochs, 0),
            ("batch_rows", batch_rows, 1),
            ("threads", threads, 1),
            ("repeats", repeats, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if finetune_epochs and spec is None:
            raise ValueError("finetune_epochs fine-tunes a pruned model: pass prune= as well")
        if quantization.check_quantization(quantize) is None and spec is None:
            raise ValueError("nothing to do: pass quantize= ('int8', 'fp16', 'bf16') or prune=")
        return cls(quantize, spec, finetune_epochs, batch_rows, threads, repeats)

    @property
    def why_script(self) -> str:
        """Why the result needs TorchScript ("" when a state_dict loads into the class)."""
        if self.quantize == quantization.INT8:
            return "an int8 model holds packed quantized weights"
        if self.prune is not None and self.prune.structured:
            return "a structurally pruned model has smaller layers than its class builds"
        return ""


@dataclass(frozen=True)
class Prepared:
    request: Request
    plan: structure.Plan | None  # the cuts of a structured pruning
    output: Path | None = None  # where the last variant is written (its size is that file's)


def prepare(model: nn.Module, request: Request, output: Path | None = None) -> Prepared:
    """Check ``request`` against ``model`` and ``output`` before anything runs."""
    quantization.check_quantizable(model, request.quantize)
    plan = None
    if request.prune is not None and request.prune.structured:
        plan = structure.plan(model)
    elif request.prune is not None and not prune.prunable_weights(model):
        raise ValueError(f"{type(model).__name__} has no trainable Linear or Conv weight to prune")
    if output is not None:
        artefact.check_path(output, bool(request.why_script), request.why_script)
    return Prepared(request, plan, output)


@dataclass(frozen=True)
class Result:
    report: CompressionReport
    model: nn.Module  # the last variant: what ``prepared.output`` holds
    masks: Masks  # what pruning removed (empty without pruning)
    example: Inputs  # the batch it was timed (and would be traced) on


def run(
    model: nn.Module,
    test: TestSet,
    prepared: Prepared,
    finetune: Finetune | None,
    source: str,
) -> Result:
    """The variants of ``prepared.request`` measured beside the original ``model``."""
    request = prepared.request
    if request.finetune_epochs and finetune is None:
        raise ValueError("finetune_epochs needs a cluster to fine-tune on (Job.compress)")
    batch = test.batch(request.batch_rows)
    model.eval()
    counts = measure.parameter_counts(model)
    rows = [_Row("original", model, counts, False, None)]
    notes: list[str] = []
    current, label, job_id = model, "", ""
    masks: Masks = {}
    if request.prune is not None:
        current, masks, job_id = _pruned(model, request.prune, prepared, finetune, batch, notes)
        label = request.prune.label
        if request.finetune_epochs:
            label += f" + {request.finetune_epochs} epochs"
        counts = measure.parameter_counts(current)
        last = prepared.output if request.quantize is None else None
        rows.append(_Row(label, current, counts, request.prune.structured, last, job_id))
    if request.quantize is not None:
        current = quantization.quantize(current, request.quantize)
        name = f"{label} + {request.quantize}" if label else request.quantize
        scripted = bool(request.why_script)
        rows.append(_Row(name, current, counts, scripted, prepared.output, job_id))
    latencies = measure.latencies_ms(
        [r.model for r in rows], batch, threads=request.threads, repeats=request.repeats
    )
    report = CompressionReport(
        source=source,
        metric_name=test.metric_name,
        test_rows=test.rows(),
        batch_rows=inputs.rows(batch, "batch"),
        threads=request.threads,
        repeats=request.repeats,
        variants=tuple(r.measured(test, batch, ms) for r, ms in zip(rows, latencies, strict=True)),
        notes=tuple(notes),
    )
    return Result(report, current, masks, batch)


@dataclass(frozen=True)
class _Row:
    """A variant made, not yet measured."""

    name: str
    model: nn.Module
    counts: tuple[int, int]  # (parameters, nonzero) of the float model it is or came from
    scripted: bool  # written as TorchScript by default
    output: Path | None  # written there (its size is that file's), else to a scratch file
    finetune_job: str = ""

    def measured(self, test: TestSet, batch: Inputs, latency_ms: float) -> Variant:
        result = measure.evaluate(self.model, test)
        if self.output is not None:
            suffix = self.output.suffix.lower()
            size = artefact.save(self.model, self.output, batch)
        else:
            suffix = artefact.natural_format(self.scripted)
            size = artefact.size_on_disk(self.model, suffix, batch)
        return Variant(
            name=self.name,
            parameters=self.counts[0],
            nonzero=self.counts[1],
            size_bytes=size,
            format=suffix,
            latency_ms=latency_ms,
            metric=result.get(test.metric_name, result["loss"]),
            loss=result["loss"],
            finetune_job=self.finetune_job,
        )


def _pruned(
    model: nn.Module,
    spec: PruneSpec,
    prepared: Prepared,
    finetune: Finetune | None,
    batch: Inputs,
    notes: list[str],
) -> tuple[nn.Module, Masks, str]:
    """The pruned model (fine-tuned if asked; sliced if structured), its masks, the job id."""
    pruned = copy.deepcopy(model)
    kept: dict[str, torch.Tensor] = {}
    if prepared.plan is not None:
        masks, kept = prune.structured_masks(pruned, spec.amount, prepared.plan.cuts)
        notes.extend(f"{k} kept whole: {why}" for k, why in prepared.plan.skipped.items())
    else:
        masks = prune.magnitude_masks(pruned, spec.amount)
        notes.append("unstructured pruning keeps the dense layout: the zeros are stored")
    prune.apply_masks(pruned, masks)
    job_id = ""
    if prepared.request.finetune_epochs and finetune is not None:
        state = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
        trained, job_id = finetune(state, sorted(masks))
        pruned.load_state_dict(trained)
        check_held(pruned, masks, job_id)
    if prepared.plan is None:
        return pruned, masks, job_id
    small = structure.slice_model(pruned, prepared.plan.cuts, kept)
    _check_same_outputs(pruned, small, batch)
    return small, masks, job_id


def check_held(model: nn.Module, masks: Masks, job_id: str) -> None:
    """RuntimeError if a pruned weight is not exactly zero after the fine-tune: the shards
    promise it, and a broken promise must not pass as a smaller model."""
    params = dict(model.named_parameters())
    moved = {n: int(params[n].detach()[m].count_nonzero()) for n, m in masks.items()}
    moved = {n: c for n, c in moved.items() if c}
    if moved:
        raise RuntimeError(f"job {job_id} returned pruned weights that are not zero: {moved}")


def _check_same_outputs(full: nn.Module, small: nn.Module, batch: Inputs) -> None:
    """The sliced model must compute what the masked one does; a difference is a bug here."""
    with torch.no_grad():
        a = inputs.call(full.eval(), batch)
        b = inputs.call(small.eval(), batch)
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise RuntimeError(
            f"the sliced model's outputs differ from the pruned one's by "
            f"{float((a - b).abs().max()):.3g}: structured pruning cannot slice this model"
        )
