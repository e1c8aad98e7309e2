"""pscluster: a parameter-server training cluster for PyTorch over gRPC.

The SDK entry point is :class:`pscluster.Client`; the roles live in ``pscluster.server``
(parameter-server shards), ``pscluster.coordinator``, ``pscluster.worker`` and
``pscluster.client`` (SDK and CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "DynamicEmbedding", "Job", "__version__"]

if TYPE_CHECKING:
    from pscluster.client.sdk import Client, Job
    from pscluster.model.dynamic_embedding import DynamicEmbedding


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import pscluster` in a shard or the coordinator does not pull in
    # the SDK (and torch) before it is needed.
    if name in ("Client", "Job"):
        from pscluster.client import sdk

        return getattr(sdk, name)
    if name == "DynamicEmbedding":
        from pscluster.model.dynamic_embedding import DynamicEmbedding

        return DynamicEmbedding
    raise AttributeError(name)
