"""Checkpoint files: tensors in safetensors, everything else as JSON in its metadata. No pickle.

A checkpoint is written to a temporary file, fsynced, renamed over its final name and the
folder fsynced, so a crash leaves either the whole new file or none of it. Each tensor's CRC32
is stored beside it: safetensors checks the layout, the CRCs check the bytes.

A job's state moving between shards (ExportJob, AdoptJob: a live re-layout) is the same image
in memory, :func:`state_to_bytes` / :func:`state_from_bytes`: one format for a job's state,
whether it goes to a disk or to another shard (through the coordinator, which recuts it).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save, save_file

from pscluster.server.durability.wal import fsync_dir

_KEY = "pscluster"
_FORMAT = 1
State = tuple[dict[str, torch.Tensor], dict[str, Any]]
_HEADER_LENGTH = struct.Struct("<Q")  # safetensors: the JSON header's length, then the header


class CheckpointError(Exception):
    """A checkpoint file that cannot be trusted; the message names the file and what is wrong."""


def checkpoint_path(folder: Path, number: int) -> Path:
    return folder / f"checkpoint-{number:012d}.safetensors"


def checkpoint_number(path: Path) -> int:
    return int(path.name.split(".", 1)[0].split("-", 1)[1])


def checkpoints(folder: Path) -> list[Path]:
    """The folder's checkpoints, newest first."""
    return sorted(folder.glob("checkpoint-*.safetensors"), key=checkpoint_number, reverse=True)


def _crc(tensor: torch.Tensor) -> int:
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return zlib.crc32(raw.numpy().data)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Contiguous, and an empty tensor made anew: one from an empty numpy array (a dynamic
    table with no rows yet) can have a stride of 0, which byte views refuse."""
    if tensor.numel() == 0:
        return torch.empty(tensor.shape, dtype=tensor.dtype)
    return tensor.detach().contiguous()


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and ``meta`` (JSON-able) to ``path`` atomically and durably."""
    tensors = {name: _plain(t) for name, t in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=_metadata(tensors, meta))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_checkpoint_image(path: Path, image: bytes) -> None:
    """Write a checkpoint already serialised (:func:`state_to_bytes`, e.g. the state an
    AdoptJob brought, checked by :func:`state_from_bytes`) to ``path`` atomically and
    durably, without serialising it a second time."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(image)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def state_to_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """A job's state (:meth:`ShardJob.state_dict`) as the bytes of a checkpoint file."""
    tensors = {name: _plain(t) for name, t in tensors.items()}
    data: bytes = save(tensors, metadata=_metadata(tensors, meta))
    return data


def state_from_bytes(data: bytes) -> State:
    """What :func:`state_to_bytes` wrote (or a checkpoint file's bytes): the tensors and the
    metadata, checked as :func:`read_checkpoint` checks a file; CheckpointError if any of it
    is damaged or not a checkpoint at all."""
    try:
        (length,) = _HEADER_LENGTH.unpack_from(data)
        header = json.loads(data[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
        metadata = header.get("__metadata__") or {}
        tensors = load(data)
        image = json.loads(metadata[_KEY])
    except (SafetensorError, struct.error, KeyError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"a job state of {len(data)} bytes cannot be read: {exc}") from exc
    return tensors, _checked("a job state", image, tensors)


def _metadata(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata of a checkpoint: the format, ``meta`` and each tensor's CRC."""
    header = {"format": _FORMAT, "meta": meta, "crc": {n: _crc(t) for n, t in tensors.items()}}
    return {_KEY: json.dumps(header)}


def checkpoint_base(path: Path) -> int | None:
    """The checkpoint a delta checkpoint builds on (None: a full one, or an unreadable one),
    from its metadata alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})[_KEY])
        base = header["meta"].get("delta_of")
    except (SafetensorError, OSError, KeyError, ValueError, AttributeError):
        return None
    return int(base) if base is not None else None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of ``path``; CheckpointError if any of it is damaged."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        header = json.loads(metadata[_KEY])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    return tensors, _checked(f"checkpoint {path}", header, tensors)


def _checked(source: str, header: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The metadata of a checkpoint's ``header``, once its format and CRCs are right."""
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise CheckpointError(f"{source} has an unknown format (expected {_FORMAT})")
    crcs = header.get("crc", {})
    if not isinstance(crcs, dict):
        raise CheckpointError(f"{source} has no CRC32 table")
    if set(crcs) != set(tensors):
        raise CheckpointError(f"{source} lists tensors {sorted(crcs)} but holds {sorted(tensors)}")
    for name, tensor in tensors.items():
        if _crc(tensor) != crcs[name]:
            raise CheckpointError(f"{source}: tensor {name!r} fails its CRC32 check")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source} has no metadata object")
    return meta
