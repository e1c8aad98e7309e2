"""The user side of pscluster: the Python SDK, the ``pscluster`` CLI and the local launcher."""
