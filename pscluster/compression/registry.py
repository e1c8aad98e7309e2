"""Codecs chosen by name from a job's ``CompressionConfig``; an unknown name fails loudly.

``NAMES`` is the list the proto documents (common.proto, CompressionConfig). At import, every
name must have a factory and every factory's codec must report that name, so a codec added to
the contract without an implementation (or misnamed) breaks at import, not in a job.
"""

from __future__ import annotations

from collections.abc import Callable

from pscluster.compression.base import CompressionSettings, Compressor
from pscluster.compression.bf16 import BFloat16
from pscluster.compression.dgc import DeepGradientCompression
from pscluster.compression.fp16 import Float16
from pscluster.compression.int8 import Int8
from pscluster.compression.none import NoCompression
from pscluster.compression.topk import TopK
from pscluster.errors import InvalidArgument
from pscluster.v1 import common_pb2

NAMES = ("none", "fp16", "bf16", "int8", "topk", "dgc")
DEFAULT_RATIO = 0.01
DEFAULT_MOMENTUM = 0.9
MAX_WARMUP_EPOCHS = 1000

_FACTORIES: dict[str, Callable[[CompressionSettings], Compressor]] = {
    "none": lambda s: NoCompression(),
    "fp16": lambda s: Float16(),
    "bf16": lambda s: BFloat16(),
    "int8": lambda s: Int8(),
    "topk": lambda s: TopK(s.ratio),
    "dgc": lambda s: DeepGradientCompression(s.ratio, s.momentum, s.clip_norm, s.warmup_epochs),
}


def _check_registry() -> None:
    missing = [n for n in NAMES if n not in _FACTORIES]
    extra = [n for n in _FACTORIES if n not in NAMES]
    if missing or extra:
        raise RuntimeError(f"compression registry out of step: missing {missing}, extra {extra}")
    for name, factory in _FACTORIES.items():
        made = factory(CompressionSettings(name=name)).name
        if made != name:
            raise RuntimeError(f"codec registered as {name!r} calls itself {made!r}")


_check_registry()


def codec_name(name: str) -> str:
    """The canonical name ("" means "none"); InvalidArgument naming the choices if unknown."""
    canonical = name or "none"
    if canonical not in _FACTORIES:
        raise InvalidArgument(
            f"compression.name {name!r} is unknown; expected one of {list(NAMES)}"
        )
    return canonical


def parse_settings(config: common_pb2.CompressionConfig) -> CompressionSettings:
    """Validate a wire config and fill its defaults; InvalidArgument names the bad field."""
    name = codec_name(config.name)
    ratio = config.ratio or DEFAULT_RATIO
    if not 0 < ratio <= 1:
        raise InvalidArgument(
            f"compression.ratio={config.ratio} is out of range; expected a fraction in (0, 1] "
            "(0 for the default 0.01)"
        )
    momentum = config.momentum or DEFAULT_MOMENTUM
    if not 0 <= momentum < 1:
        raise InvalidArgument(
            f"compression.momentum={config.momentum} is out of range; expected [0, 1) "
            "(0 for the default 0.9)"
        )
    if not config.clip_norm >= 0:  # also refuses NaN
        raise InvalidArgument(
            f"compression.clip_norm={config.clip_norm} is invalid; expected >= 0 (0: no clipping)"
        )
    if config.warmup_epochs > MAX_WARMUP_EPOCHS:
        raise InvalidArgument(
            f"compression.warmup_epochs={config.warmup_epochs} is out of range; "
            f"expected 0..{MAX_WARMUP_EPOCHS}"
        )
    if config.pull_dtype not in common_pb2.DType.values():
        raise InvalidArgument(
            f"compression.pull_dtype={config.pull_dtype} is unknown; expected one of "
            f"{list(common_pb2.DType.keys())}"
        )
    return CompressionSettings(
        name=name,
        ratio=ratio,
        momentum=momentum,
        clip_norm=config.clip_norm,
        warmup_epochs=config.warmup_epochs,
    )


def make_compressor(settings: CompressionSettings) -> Compressor:
    """A fresh codec for one job (codecs with a random stream get their own)."""
    return _FACTORIES[codec_name(settings.name)](settings)
