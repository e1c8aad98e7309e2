"""Models as the cluster sees them: source code, a flat parameter layout, safetensors states."""
