"""Datasets as the cluster sees them: one safetensors blob, split into leased partitions."""
