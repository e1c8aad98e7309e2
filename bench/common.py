"""What several bench scripts record the same way."""

from __future__ import annotations

import os
import platform
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
