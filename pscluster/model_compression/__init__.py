"""Compressed models: post-training quantization and pruning with a fine-tune on the cluster.

Not the gradient codecs workers push with (that is :mod:`pscluster.compression`): this
package makes a trained model smaller and faster to run. One module per idea:
:mod:`.quantize` (int8 dynamic, fp16, bf16), :mod:`.prune` (global magnitude and L1
structured masks), :mod:`.structure` (where structured pruning can cut, by torch.fx, and the
sliced model), :mod:`.measure` (latency, metric, parameters), :mod:`.artefact` (the file and
its one-line loader), :mod:`.report` (the table and its JSON), :mod:`.pipeline` (one request,
checked before anything runs). ``Job.compress`` and ``Client.compress`` add the fine-tune on
the cluster, with the pruned weights held at zero on the shards.
"""

from pscluster.model_compression.compress import compress
from pscluster.model_compression.pipeline import Request, Result
from pscluster.model_compression.prune import PruneSpec
from pscluster.model_compression.quantize import QUANTIZATIONS
from pscluster.model_compression.report import CompressionReport, Variant

__all__ = [
    "QUANTIZATIONS",
    "CompressionReport",
    "PruneSpec",
    "Request",
    "Result",
    "Variant",
    "compress",
]
