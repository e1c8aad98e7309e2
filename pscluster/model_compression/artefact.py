"""How a compressed model is written, and how it loads again: one line either way.

Two formats, chosen by the file's extension:

- ``.safetensors``: the ``state_dict``, for variants that still fit the model's class (the
  original, fp16/bf16 weights, unstructured pruning): ``net = MyNet();
  net.load_state_dict(safetensors.torch.load_file(path))`` (half-precision entries are
  cast back to the float32 parameters; call ``net.half()`` or ``net.bfloat16()`` first to
  keep them half). No pickle, no code.
- ``.pt``: TorchScript (``torch.jit.trace`` on a batch of the test rows), for variants that no
  longer fit the class: int8 (packed quantized weights) and structured pruning (smaller
  layers): ``net = torch.jit.load(path)``, without the class. Tracing records one path
  through ``forward``: a model whose control flow depends on its input is traced as it ran
  on that batch.

A path whose extension does not fit the variant is a ValueError at the call, before
anything runs, saying which extension does.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from pscluster.data.inputs import Inputs
from pscluster.model_compression.quantize import quiet_torch

SAFETENSORS = ".safetensors"
TORCHSCRIPT = ".pt"
FORMATS = {SAFETENSORS: "safetensors state_dict", TORCHSCRIPT: "TorchScript"}


def natural_format(needs_script: bool) -> str:
    """The extension a variant is written with by default."""
    return TORCHSCRIPT if needs_script else SAFETENSORS


def check_path(path: Path, needs_script: bool, why: str) -> None:
    """ValueError unless ``path``'s extension can hold the variant (``why``: what makes it
    need TorchScript, for the message)."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"cannot write {path}: the file name must end in {SAFETENSORS} (a state_dict) or "
            f"{TORCHSCRIPT} (TorchScript)"
        )
    if needs_script and suffix == SAFETENSORS:
        raise ValueError(
            f"cannot write {path}: {why}, so its state_dict does not load into the model's "
            f"class; it is written as TorchScript: name the file {path.with_suffix('.pt').name}"
        )


def save(model: nn.Module, path: Path, example: Inputs) -> int:
    """Write ``model`` to ``path`` in the format its extension names; the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        if path.suffix.lower() == TORCHSCRIPT:
            _save_script(model, tmp, example)
        else:
            tmp.write_bytes(safetensors_bytes(_plain_state(model)))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def size_on_disk(model: nn.Module, suffix: str, example: Inputs) -> int:
    """The bytes ``model`` takes written as ``suffix`` (into a scratch folder)."""
    with tempfile.TemporaryDirectory(prefix="psc-compress-") as scratch:
        return save(model, Path(scratch) / f"model{suffix}", example)


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    model_of = getattr(model, "model", None)  # HalfPrecision: the wrapped model's own names
    if isinstance(model_of, nn.Module) and all(k.startswith("model.") for k in state):
        state = model_of.state_dict()
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor) or v.is_quantized]
    if bad:
        raise ValueError(
            f"entries {bad[:4]} are not plain tensors (a quantized model): write it as "
            f"TorchScript ({TORCHSCRIPT})"
        )
    # Copies: safetensors refuses tensors that share memory (tied weights).
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _save_script(model: nn.Module, path: Path, example: Inputs) -> None:
    """Saved through a buffer: torch names the archive inside after the file it writes, so a
    file saved directly would differ in size from the same model under another name."""
    model.eval()
    with quiet_torch(), torch.no_grad():
        if isinstance(example, dict):
            traced = torch.jit.trace(model, example_kwarg_inputs=example)  # type: ignore[no-untyped-call]
        else:
            args = example if isinstance(example, tuple) else (example,)
            traced = torch.jit.trace(model, args)  # type: ignore[no-untyped-call]
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    path.write_bytes(buffer.getvalue())
