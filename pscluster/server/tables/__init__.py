"""Embedding tables hosted on the shards: the key-value side of the parameter server.

A job's sparse tables (``nn.Embedding``/``nn.EmbeddingBag`` with ``sparse=True``) are split
row-wise over its shards by id; a worker looks up only the rows its batch touches and pushes
only their gradients, beside the dense gradient and decided with it by the job's
consistency mode. :class:`~pscluster.server.tables.job_tables.JobTables` is a job's set of
tables on one shard.
"""
