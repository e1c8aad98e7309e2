"""How every process talks gRPC: servers, channels, chunked streams, wire dtypes, errors."""
