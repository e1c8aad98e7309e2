"""What the SDK's Client does with a trained model: score rows with it on the workers,
compress it, distill it into a smaller one. A mixin of :class:`~pscluster.client.sdk.Client`,
so that each of these lives beside its own module (predict_job, compress_job, distill_job)
rather than in one long class."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from pscluster.client import compress_job, distill_job, predict_job
from pscluster.client.compress_options import Compressed, CompressOptions
from pscluster.client.data_source import DataArg
from pscluster.client.errors import InvalidJobError
from pscluster.client.job import Job
from pscluster.client.predict import PredictOptions
from pscluster.model.distill import Distillation

if TYPE_CHECKING:
    from pscluster.client.sdk import Client


class AfterTraining:
    """Batch inference, compression and distillation (see each method)."""

    def _client(self) -> Client:
        """This object as the Client it always is (mypy cannot type a mixin's self as its
        subclass)."""
        return cast("Client", self)

    # --- batch inference ---
    def submit_predict(
        self,
        job: Job | str | None = None,
        *,
        data: Any,
        model: type[nn.Module] | None = None,
        state: Mapping[str, torch.Tensor] | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        code_dir: str | Path | None = None,
        output: str = "logits",
        precision: str = "fp32",
        batch_size: int = 1024,
        partitions: int = 0,
        name: str = "",
        data_args: Mapping[str, Any] | None = None,
        split: str = "test",
    ) -> Job:
        """Start scoring ``data`` on the workers and return the predict job at once; its
        outputs come from :meth:`Job.predictions` once it has completed.

        The model is a completed job's (``job``, a Job or its id) or an uploaded one
        (``model``, an nn.Module class as ``submit`` takes it, and ``state``, its
        state_dict). ``data`` is X as ``submit`` takes it: an array, a tuple or a dict of
        them; or a source the workers read where it lives (``data="npy"`` or "parquet" with
        ``data_args={"path": ...}``; the inputs of its ``split``, labels ignored), opened here
        to count its rows and dry-run a few, nothing uploaded. The rows are cut into
        ``partitions`` leases (0: one per 8192 rows) that the workers score ``batch_size``
        rows at a time, in ``eval()`` under ``no_grad`` (in bfloat16 autocast with
        ``precision="bf16"``); a dead worker's partition is scored again. ``output``:
        "logits" (the model's output), "probs" (softmax over dim 1, or a sigmoid for one
        output or a bce_with_logits model) or "argmax" (int64 classes).

        The model is built from the code that would be sent and run on a few rows first:
        data that does not fit it, an unknown output, a job with no trained model yet are an
        InvalidJobError here, before anything is sent.

        Example::

            scoring = client.submit_predict(job, data=X_big, output="probs")
            scoring.wait(progress=True, timeout=600)
            probs = scoring.predictions()
        """
        options = PredictOptions(
            model=model,
            state=state,
            model_kwargs=model_kwargs,
            code_dir=code_dir,
            output=output,
            precision=precision,
            batch_size=batch_size,
            partitions=partitions,
            name=name,
            data_args=data_args,
            split=split,
        )
        return predict_job.submit(self._client(), job, data, options)[0]

    def predict(
        self,
        job: Job | str | None = None,
        *,
        data: Any,
        progress: bool = False,
        timeout: float = 3600.0,
        **options: Any,
    ) -> torch.Tensor:
        """Score ``data`` on the workers and return the outputs, in input order: float32
        logits or probabilities, or int64 classes. ``options`` are :meth:`submit_predict`'s
        (``model``, ``state``, ``output``, ``precision``, ``batch_size``, ...).

        Waits ``timeout`` seconds at most for the scoring (TimeoutError saying how far it
        got; the job goes on), with a progress bar if ``progress``. Raises JobFailed with the
        worker's message if scoring fails on a worker.

        Example::

            probs = client.predict(job, data=X, output="probs", progress=True)
            preds = client.predict(model=MyNet, state=net.state_dict(), data=X, output="argmax")
        """
        try:
            chosen = PredictOptions(**options)
        except TypeError as e:  # an option that does not exist: the caller's mistake
            raise InvalidJobError(f"predict: {e}") from None
        scoring, payload = predict_job.submit(self._client(), job, data, chosen)
        return predict_job.outputs_of(scoring, payload, progress=progress, timeout=timeout)

    # --- compressed models ---
    def compress(self, job: Job | str | None = None, **options: Any) -> Compressed:
        """Make a trained model smaller: quantize it, prune it and fine-tune it on the
        cluster, and measure each variant against the original (a table: parameters, size
        on disk, CPU latency per batch, the job's metric on its test set).

        ``job`` is a completed job (a Job or its id) whose model and uploaded test set are
        used; or pass ``model`` (a class), ``state``, ``test`` and, to fine-tune, ``train``.
        ``quantize``: "int8" (dynamic, Linear and LSTM layers), "fp16" or "bf16".
        ``prune``: an amount in [0, 1) or ``{"amount": 0.5, "structured": True}`` (whole
        neurons/channels, found with torch.fx: the result is physically smaller);
        ``finetune_epochs``: a fine-tune job from the pruned weights, which the shards keep
        exactly zero through every step. ``output`` ("x.safetensors", or "x.pt" for int8 and
        structured) receives the result, ``report`` the table as JSON. The other options
        are :class:`~pscluster.client.compress_options.CompressOptions`'.

        An unknown quantization, an amount outside [0, 1), a model structured pruning cannot
        slice, a file name that cannot hold the result: InvalidJobError before anything runs.

        Example::

            small = client.compress(job, quantize="int8", output="model.int8.pt")
            print(small.report.markdown())
            net = torch.jit.load("model.int8.pt")
            pruned = client.compress(job, prune={"amount": 0.5}, finetune_epochs=3)
        """
        try:
            chosen = CompressOptions(**options)
        except TypeError as e:
            raise InvalidJobError(f"compress: {e}") from None
        return compress_job.compress(self._client(), job, chosen)

    # --- knowledge distillation ---
    def distill(
        self,
        teacher: Job | str,
        student: type[nn.Module],
        train: tuple[Any, Any] | None = None,
        test: tuple[Any, Any] | None = None,
        *,
        temperature: float = 4.0,
        alpha: float = 0.7,
        data: DataArg | None = None,
        init_from: Job | str | Mapping[str, torch.Tensor] | None = None,
        **options: Any,
    ) -> Job:
        """Train ``student`` to mimic ``teacher``, a completed job's model (a Job or its
        id), and return the job at once, as :meth:`submit` does. On every batch the workers
        run the teacher in ``eval()`` under ``no_grad``; the student trains on
        ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * loss``
        (Hinton et al. 2015), ``loss`` being the job's: cross_entropy or bce_with_logits.

        ``student`` (a class), the data (``train``/``test`` arrays or ``data``, a source) and
        ``options`` (``epochs``, ``mode``, ``optimizer``, ``model_kwargs``, ``local_steps``,
        ``precision``, ...) are what :meth:`submit` takes. The job evaluates and reports the
        student as any job reports its model; its events name the teacher.

        A teacher that is unknown or not completed, a student whose outputs do not match the
        teacher's on a few training rows, a temperature <= 0, an alpha outside [0, 1] or a
        loss that is not a classification loss: InvalidJobError before anything is sent.

        Example::

            small = client.distill(teacher=job, student=SmallNet, train=(X, y),
                                   test=(Xt, yt), temperature=4.0, alpha=0.7, epochs=10)
            small.wait(progress=True)
            SmallNet().load_state_dict(small.fetch_model())
        """
        settings = Distillation(temperature, alpha)
        start = self._client()._init_from(init_from)
        data_arg = (train, test, data)
        return distill_job.submit(
            self._client(), teacher, student, data_arg, settings, options, start
        )
