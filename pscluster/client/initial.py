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
from pscluster.errors import PSError
from pscluster.model.hosted import TableInfo, host_model_tables, hosting

# A table this small (float32 rows) is built with the model when the job is submitted, and
# the rows its constructor gives it are the job's initial rows (uploaded with the job), as
# in one process; a larger one starts as rows drawn on the shards.
KEPT_TABLE_BYTES = 16 << 20


@dataclass(frozen=True)
class Initial:
    model: nn.Module
    state: dict[str, torch.Tensor]  # the full state_dict: trainable, frozen and buffers
    loaded: tuple[str, ...] = ()  # entries taken from init_from
    fresh: tuple[str, ...] = ()  # entries init_from did not have (kept as initialised)
    # Tables hosted on the shards (pscluster.model.hosted); ``state`` holds the rows of those
    # init_from gave or the constructor built (KEPT_TABLE_BYTES), the others start on the
    # shards.
    tables: tuple[TableInfo, ...] = ()


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
            with hosting(keep_bytes=KEPT_TABLE_BYTES):
                instance = model_cls(**kwargs)
            hosted = host_model_tables(instance)
        except PSError as e:
            raise InvalidJobError(str(e)) from e
        except Exception as e:  # the user's constructor: any error is theirs to see
            raise InvalidJobError(
                f"could not build {model_cls.__name__}(**{kwargs!r}): {type(e).__name__}: {e}"
            ) from e
    tables = tuple(hosted.tables)
    _check_params(model_cls, instance, tables)
    loaded: tuple[str, ...] = ()
    fresh: tuple[str, ...] = ()
    given_tables: dict[str, torch.Tensor] = {}
    if init_from is not None:
        given_tables = _table_rows(tables, init_from)
        rest = {k: v for k, v in init_from.items() if k not in given_tables}
        loaded, fresh = _load(instance, rest)
        loaded = tuple(sorted((*loaded, *given_tables)))
    _check_unreproducible(model_cls, [n for n in hosted.changed if n not in given_tables])
    state = {k: v.detach().to("cpu").contiguous() for k, v in instance.state_dict().items()}
    state.update(hosted.rows)  # the constructor's own rows of the tables it kept
    state.update(given_tables)
    return Initial(instance, state, loaded, fresh, tables)


def _check_unreproducible(model_cls: type[nn.Module], changed: list[str]) -> None:
    """Tables over :data:`KEPT_TABLE_BYTES` are never built here: they start as rows drawn
    on the shards, N(0, 1) as nn.Embedding's own initialisation. A constructor that changed
    one in place (``nn.init.normal_(..., std=0.01)``, ``.mul_()``, ``.zero_()``) meant other
    values, which nobody has: refused rather than silently trained from N(0, 1)."""
    if changed:
        raise InvalidJobError(
            f"{model_cls.__name__}'s constructor changes table(s) {', '.join(changed)} after "
            f"building them; a table over {KEPT_TABLE_BYTES >> 20} MB is not built where the "
            "job is submitted, its rows start as N(0, 1) drawn on the shards "
            "(nn.Embedding's default). Pass the rows you want with init_from={name: rows}, or "
            "leave the default initialisation"
        )


def _table_rows(
    tables: tuple[TableInfo, ...], given: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The init_from entries that are hosted tables' rows, checked against their shapes."""
    out = {}
    for table in tables:
        rows = given.get(table.name)
        if rows is None:
            continue
        if tuple(rows.shape) != (table.num_rows, table.dim):
            raise InvalidJobError(
                f"init_from[{table.name!r}] has shape {tuple(rows.shape)}; the table is "
                f"({table.num_rows}, {table.dim})"
            )
        out[table.name] = rows.detach().to("cpu", torch.float32).contiguous()
    return out


def _check_params(
    model_cls: type[nn.Module], instance: nn.Module, tables: tuple[TableInfo, ...]
) -> None:
    params = list(instance.named_parameters())
    if not params and not tables:
        raise InvalidJobError(f"{model_cls.__name__} has no parameters to train")
    wrong = [f"{n} ({p.dtype})" for n, p in params if p.dtype != torch.float32]
    if wrong:
        raise InvalidJobError(
            f"{model_cls.__name__}'s parameters must be float32 (the servers keep float32 "
            f"vectors); these are not: {', '.join(wrong)}. Remove .double()/.half() from the "
            "model (train in half precision with precision='bf16' instead)"
        )
    if params and not any(p.requires_grad for _, p in params):
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
