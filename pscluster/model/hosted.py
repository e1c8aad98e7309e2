"""Embedding tables that live on the shards: the user's ``nn.Embedding``/``nn.EmbeddingBag``
with ``sparse=True``, never allocated where the model is built.

While a job's model is built (by the SDK, and by every worker) :func:`hosting` makes those
modules allocate their weight on the ``meta`` device, so a 50M-row table costs nothing (the
SDK keeps small tables real, so that the rows its constructor gives them are the job's
initial rows, as in one process); then :func:`host_tables` swaps each for a
:class:`HostedEmbedding` that holds no weight. In the forward pass it asks its
:class:`RowSource` for the rows of the batch's unique ids only, computes the same function on
them, and keeps them so that their gradient can be pushed after backward
(:func:`take_row_grads`). The user's model code does not change, as with
TorchRec's sharded modules.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pscluster.errors import InvalidArgument
from pscluster.model.dynamic_embedding import DynamicEmbedding
from pscluster.server.tables.initial import initial_rows
from pscluster.v1 import coordinator_pb2 as co_pb2

_LOCK = threading.RLock()


@dataclass(frozen=True)
class TableInfo:
    """One hosted table, as the job spec lists it (``name`` is its state_dict entry); a
    dynamic one (:class:`~pscluster.model.dynamic_embedding.DynamicEmbedding`) has no
    ``num_rows`` and its own admission, eviction and initialisation."""

    name: str
    num_rows: int
    dim: int
    padding_idx: int | None = None
    dynamic: bool = False
    init_std: float = 1.0
    admit_after: int = 0
    evict_after: int = 0
    capacity: int = 0
    init_seed: int = 0

    def to_proto(self) -> co_pb2.TableInfo:
        return co_pb2.TableInfo(
            name=self.name,
            num_rows=self.num_rows,
            dim=self.dim,
            has_padding=self.padding_idx is not None,
            padding_idx=self.padding_idx or 0,
            dynamic=self.dynamic,
            init_std=self.init_std if self.dynamic else 0.0,
            admit_after=self.admit_after,
            evict_after=self.evict_after,
            capacity=self.capacity,
            init_seed=self.init_seed,
        )


class RowSource(Protocol):
    def lookup(self, table: int, ids: torch.Tensor, *, peek: bool = False) -> torch.Tensor:
        """float32 rows (len(ids), dim) of table number ``table`` for unique int64 ``ids``;
        a ``peek`` (evaluation) admits nothing into a dynamic table."""
        ...


class DrawnRows:
    """Rows drawn N(0, 1) on demand (the SDK's dry run, which has no shards to ask)."""

    def __init__(self, tables: list[TableInfo]) -> None:
        self._tables = tables

    def lookup(self, table: int, ids: torch.Tensor, *, peek: bool = False) -> torch.Tensor:
        info = self._tables[table]
        if info.dynamic:
            return initial_rows(info.init_seed, ids.numpy(), info.dim, info.init_std)
        rows = torch.randn(ids.numel(), info.dim)
        if info.padding_idx is not None:
            rows[ids == info.padding_idx] = 0.0
        return rows


@contextlib.contextmanager
def hosting(keep_bytes: int = 0) -> Iterator[None]:
    """Build models inside: every embedding with ``sparse=True`` gets a weight on the meta
    device, but one of at most ``keep_bytes`` (as float32 rows), which is built as usual with
    the values its constructor gives it (the SDK's build: :func:`host_model_tables` takes
    them as the table's initial rows). Process-wide while it lasts (a lock keeps two builds
    from interleaving)."""
    with _LOCK:
        saved = nn.Embedding.__init__, nn.EmbeddingBag.__init__
        nn.Embedding.__init__ = _on_meta(saved[0], keep_bytes)  # type: ignore[method-assign]
        nn.EmbeddingBag.__init__ = _on_meta(saved[1], keep_bytes)  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Embedding.__init__, nn.EmbeddingBag.__init__ = saved  # type: ignore[method-assign]


# Set on a sparse embedding built by :func:`hosting` to hold its table: its weight's version
# once built. On the meta device, a later in-place change by the constructor shows as a newer
# one; a weight not on it was kept (small enough) and carries its values.
_BUILT = "_psc_built_version"


def _on_meta(init: Callable[..., None], keep_bytes: int) -> Callable[..., None]:
    signature = inspect.signature(init)

    def patched(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        args_of = bound.arguments
        hosted = bool(args_of.get("sparse")) and args_of.get("_weight") is None
        size = int(args_of["num_embeddings"]) * int(args_of["embedding_dim"]) * 4
        kept = hosted and size <= keep_bytes
        if hosted and not kept:
            args_of["device"] = "meta"
        init(*bound.args, **bound.kwargs)
        if hosted:
            setattr(self, _BUILT, self.weight._version)

    return patched


class HostedEmbedding(nn.Module):
    """Stands in for a sparse ``nn.Embedding`` or ``nn.EmbeddingBag`` (``bag``)."""

    def __init__(self, index: int, info: TableInfo, original: nn.Module, bag: bool) -> None:
        super().__init__()
        self.index, self.info, self.bag = index, info, bag
        self.mode = str(getattr(original, "mode", None) or "mean")
        self.include_last_offset = bool(getattr(original, "include_last_offset", False))
        self.source: RowSource | None = None
        self._touched: list[tuple[torch.Tensor, torch.Tensor]] = []

    def extra_repr(self) -> str:
        kind = f"bag, mode={self.mode}" if self.bag else "embedding"
        return f"{self.info.num_rows}, {self.info.dim}, hosted on the shards ({kind})"

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ids = self._check_ids(input)
        unique, inverse = torch.unique(ids, return_inverse=True)
        if self.source is None:
            raise RuntimeError(f"table {self.info.name!r} has no row source attached")
        # Evaluation peeks: test ids must not count towards admitting rows.
        rows = self.source.lookup(self.index, unique.cpu(), peek=not self.training)
        rows = rows.to(input.device)
        rows.requires_grad_(self.training and torch.is_grad_enabled())
        if rows.requires_grad:
            self._touched.append((unique.cpu(), rows))
        pad = self.info.padding_idx
        local_pad = None
        if pad is not None and bool((unique == pad).any()):
            local_pad = int((unique == pad).nonzero()[0, 0])
        if not self.bag:
            return F.embedding(inverse, rows, padding_idx=local_pad)
        return F.embedding_bag(
            inverse,
            rows,
            offsets,
            mode=self.mode,
            per_sample_weights=per_sample_weights,
            include_last_offset=self.include_last_offset,
            padding_idx=local_pad,
        )

    def _check_ids(self, input: torch.Tensor) -> torch.Tensor:
        if input.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"table {self.info.name!r} takes integer ids (int64 or int32), got {input.dtype}"
            )
        ids = input.long()
        if self.info.dynamic:
            if ids.numel() and int(ids.min()) < 0:
                raise IndexError(f"table {self.info.name!r} takes ids >= 0; got {int(ids.min())}")
            return ids
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.info.num_rows):
            bad = ids[(ids < 0) | (ids >= self.info.num_rows)][0]
            raise IndexError(
                f"table {self.info.name!r} has ids 0 .. {self.info.num_rows - 1}; got id {int(bad)}"
            )
        return ids

    def take_gradient(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The rows' gradient since the last call, summed per id (None: nothing touched)."""
        touched, self._touched = self._touched, []
        parts = [(ids, rows.grad) for ids, rows in touched if rows.grad is not None]
        if not parts:
            return None
        ids = torch.cat([i for i, _ in parts])
        grads = torch.cat([g.detach().to("cpu", torch.float32) for _, g in parts])
        unique, inverse = torch.unique(ids, return_inverse=True)
        summed = torch.zeros((unique.numel(), self.info.dim), dtype=torch.float32)
        return unique, summed.index_add_(0, inverse, grads)

    def forget(self) -> None:
        """Drop what was touched (a batch that is not pushed)."""
        self._touched = []


@dataclass(frozen=True)
class HostedTables:
    """What :func:`host_model_tables` found: the tables, in module order; the rows of those
    kept (built with their constructor's values) by name; and the names of meta tables the
    constructor changed in place after building them (values nobody can reproduce)."""

    tables: list[TableInfo]
    rows: dict[str, torch.Tensor]
    changed: list[str]


def host_tables(model: nn.Module) -> list[TableInfo]:
    """Swap every sparse embedding of ``model`` built under :func:`hosting` for a
    :class:`HostedEmbedding`; the tables, in module order."""
    return host_model_tables(model).tables


def host_model_tables(model: nn.Module) -> HostedTables:
    """:func:`host_tables`, with the kept tables' rows and the meta ones changed in place."""
    found: list[TableInfo] = []
    rows: dict[str, torch.Tensor] = {}
    changed: list[str] = []
    for path, module in list(model.named_modules()):
        if isinstance(module, DynamicEmbedding):
            info = _dynamic_info(path, module)
            _replace(
                model, path, HostedEmbedding(len(found), info, module, module.mode is not None)
            )
            found.append(info)
            continue
        bag = isinstance(module, nn.EmbeddingBag)
        if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            continue
        built = getattr(module, _BUILT, None)
        kept = built is not None and not module.weight.is_meta
        if not module.weight.is_meta and not kept:
            continue
        _check_supported(path, module)
        num_rows, dim = module.weight.shape
        info = TableInfo(f"{path}.weight", int(num_rows), int(dim), module.padding_idx)
        if kept:
            rows[info.name] = module.weight.detach().to(torch.float32).contiguous()
        elif built is not None and module.weight._version != built:
            changed.append(info.name)
        _replace(model, path, HostedEmbedding(len(found), info, module, bag))
        found.append(info)
    return HostedTables(found, rows, changed)


def _dynamic_info(path: str, module: DynamicEmbedding) -> TableInfo:
    if not path:
        raise InvalidArgument("the model itself is a DynamicEmbedding; wrap it in a module")
    return TableInfo(
        f"{path}.weight",
        0,
        module.dim,
        dynamic=True,
        init_std=module.init_std,
        admit_after=module.admit_after,
        evict_after=module.evict_after,
        capacity=module.capacity,
        init_seed=module.seed,
    )


def _check_supported(path: str, module: nn.Embedding | nn.EmbeddingBag) -> None:
    if module.max_norm is not None or module.scale_grad_by_freq:
        raise InvalidArgument(
            f"{path}: a table on the shards cannot use max_norm or scale_grad_by_freq "
            "(they renormalise or reweight rows by the whole batch); drop them or set "
            "sparse=False to train it as a dense parameter"
        )
    if not path:
        raise InvalidArgument("the model itself is a sparse embedding; wrap it in a module")


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def hosted_modules(model: nn.Module) -> list[HostedEmbedding]:
    return [m for m in model.modules() if isinstance(m, HostedEmbedding)]


def attach_rows(model: nn.Module, source: RowSource) -> None:
    for module in hosted_modules(model):
        module.source = source


def attach_drawn_rows(model: nn.Module) -> None:
    """Rows drawn on demand for every table (the dry run's stand-in for the shards)."""
    modules = sorted(hosted_modules(model), key=lambda m: m.index)
    attach_rows(model, DrawnRows([m.info for m in modules]))


def take_row_grads(model: nn.Module) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per table index, (unique ids, summed gradient rows) of the last backward."""
    out = {}
    for module in hosted_modules(model):
        grad = module.take_gradient()
        if grad is not None:
            out[module.index] = grad
    return out


def forget_rows(model: nn.Module) -> None:
    for module in hosted_modules(model):
        module.forget()
