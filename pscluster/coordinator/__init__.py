"""The coordinator: job registry and lifecycle, worker leases, progress and metrics.

Clients and workers talk to it over ``pscluster.v1.Coordinator``; it drives the shards. Start
one in-process with :func:`pscluster.coordinator.main.serve`, or as a process with
``python -m pscluster.coordinator --shards host:port,...``.
"""
