"""Generated from proto/pscluster/v1 by proto/generate.py."""
