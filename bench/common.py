"""What several bench scripts record the same way."""

from __future__ import annotations

import os
import platform
import random
import socket
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """The machine a result was measured on (bench/baseline.py's ``machine`` adds torch's
    threads and the load average)."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def rendezvous_port(host: str = "127.0.0.1") -> int:
    """A port free now for a DDP rendezvous store (rank 0 binds it), chosen below the kernel's
    ephemeral range rather than by binding port 0, which picks one inside it.

    Why: the other ranks dial the store over and over until rank 0 listens, each attempt from
    an ephemeral source port. Should one attempt draw the store's own port, the socket
    connects to itself (TCP simultaneous open) and the rank reads its own request back as the
    answer. A likely cause of the rare aborts of DDP baselines here (``terminate called
    without an active exception`` in a gloo rank, before training)."""
    bounds = Path("/proc/sys/net/ipv4/ip_local_port_range")
    first_ephemeral = int(bounds.read_text().split()[0]) if bounds.exists() else 32768
    low = max(1024, first_ephemeral - 10000)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, first_ephemeral)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{low}, {first_ephemeral}) on {host} after 200 tries")
