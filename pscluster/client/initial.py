"""A job's starting point: the user's model built once, seeded, optionally from another model.

Resubmitting the same job starts from the same parameters (the constructor runs under the
job's seed). Fine-tuning starts from a finished job's model or a given ``state_dict``
(``init_from``): its entries are loaded by name, so a model that wraps the old one's layers
(adapters beside frozen base weights, a new head) takes what matches and keeps its own
initialisation for the rest. An entry that matches nothing, or matches with another shape,
is a mistake and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pscluster.client.errors import InvalidJobError


@dataclass(frozen=True)
class Initial:
    model: nn.Module
    state: dict[str, torch.Tensor]  # the full state_dict: trainable, frozen and buffers
    loaded: tuple[str, ...] = ()  # entries taken from init_from
    fresh: tuple[str, ...] = ()  # entries init_from did not have (kept as initialised)


def build(
    model_cls: type[nn.Module],
    kwargs: dict[str, Any],
    seed: int,
    init_from: Mapping[str, torch.Tensor] | None,
) -> Initial:
    # fork_rng keeps the caller's own random stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            instance = model_cls(**kwargs)
        except Exception as e:  # the user's constructor: any error is theirs to see
            raise InvalidJobError(
                f"could not build {model_cls.__name__}(**{kwargs!r}): {type(e).__name__}: {e}"
            ) from e
    _check_params(model_cls, instance)
    loaded: tuple[str, ...] = ()
    fresh: tuple[str, ...] = ()
    if init_from is not None:
        loaded, fresh = _load(instance, init_from)
    state = {k: v.detach().to("cpu").contiguous() for k, v in instance.state_dict().items()}
    return Initial(instance, state, loaded, fresh)


def _check_params(model_cls: type[nn.Module], instance: nn.Module) -> None:
    params = list(instance.named_parameters())
    if not params:
        raise InvalidJobError(f"{model_cls.__name__} has no parameters to train")
    wrong = [f"{n} ({p.dtype})" for n, p in params if p.dtype != torch.float32]
    if wrong:
        raise InvalidJobError(
            f"{model_cls.__name__}'s parameters must be float32 (the servers keep float32 "
            f"vectors); these are not: {', '.join(wrong)}. Remove .double()/.half() from the "
            "model (train in half precision with precision='bf16' instead)"
        )
    if not any(p.requires_grad for _, p in params):
        raise InvalidJobError(
            f"every parameter of {model_cls.__name__} is frozen (requires_grad=False): "
            "nothing would train"
        )


def _load(
    instance: nn.Module, given: Mapping[str, torch.Tensor]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    own = instance.state_dict()
    unknown = sorted(set(given) - set(own))
    if unknown:
        raise InvalidJobError(
            f"init_from has entries {unknown[:8]} that {type(instance).__name__} does not have "
            f"(it has {sorted(own)[:8]}...); name the layers the same way, or load a "
            "matching subset yourself and pass it as init_from"
        )
    wrong = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in given.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise InvalidJobError(f"init_from entries have other shapes than the model's: {wrong}")
    try:
        instance.load_state_dict(dict(given), strict=False)
    except RuntimeError as e:
        raise InvalidJobError(f"init_from does not load into the model: {e}") from e
    return tuple(sorted(given)), tuple(sorted(set(own) - set(given)))
