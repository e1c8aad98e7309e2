"""Post-training quantization: fewer bits per weight, no retraining.

``int8`` is PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``): the
weights of Linear and LSTM layers are stored as int8 with a scale, and activations are
quantized on the fly at each call, so it needs no calibration data and keeps the model's
interface. It is what the README's "int8" means, and it runs on CPUs (fbgemm/qnnpack).
``fp16`` and ``bf16`` store every floating weight in half precision; the model then computes
in that precision too (:class:`HalfPrecision` casts floating inputs in and the output back to
float32, so a caller feeds it what it fed the original).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

INT8 = "int8"
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
QUANTIZATIONS = (INT8, *HALF)
# The layers dynamic int8 quantizes (torch.ao's dynamic qconfig covers these).
INT8_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM)


def check_quantization(name: str | None) -> str | None:
    """``name`` if it is a quantization this package makes (None: none); ValueError if not."""
    if name is None or name in QUANTIZATIONS:
        return name
    raise ValueError(f"quantize={name!r} is unknown; expected one of {list(QUANTIZATIONS)}")


def check_quantizable(model: nn.Module, name: str | None) -> None:
    """ValueError if ``name`` would leave ``model`` as it is (int8 of a model with no Linear
    or LSTM layer): checked before anything runs, not found out at the end."""
    if name == INT8 and not any(isinstance(m, INT8_LAYERS) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no Linear or LSTM layer: dynamic int8 quantization "
            "would change nothing (quantize='bf16' or 'fp16' halves every weight)"
        )


def quantize(model: nn.Module, name: str) -> nn.Module:
    """A quantized copy of ``model`` (in eval mode); ``model`` itself is left as it is."""
    check_quantization(name)
    check_quantizable(model, name)
    source = copy.deepcopy(model).eval()
    if name == INT8:
        with quiet_torch():
            quantized: nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                source, set(INT8_LAYERS), dtype=torch.qint8
            )
        return quantized
    return HalfPrecision(source.to(HALF[name]), HALF[name]).eval()


class HalfPrecision(nn.Module):
    """A model whose weights are half precision, called as the float32 original was:
    floating inputs are cast to its dtype, a floating output back to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        cast = self._cast
        out = self.model(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    def _cast(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(self.dtype)
        return value


@contextmanager
def quiet_torch() -> Iterator[None]:
    """torch 2.10+ marks torch.ao.quantization and torch.jit deprecated on every call; they
    are still what loads everywhere without extra packages, so their warnings would only
    repeat what the README says about it."""
    with warnings.catch_warnings():
        for message in (
            r"torch\.ao\.quantization is deprecated",
            r"`torch\.jit\.\w+` is deprecated",
            r"torch\.quantize_per_tensor, .* deprecated",
        ):
            warnings.filterwarnings("ignore", message=message)
        yield
