"""The parameter-server shard: per job, a range of the flat parameter vector, its optimizer
state, a version counter and a consistency mode, served over gRPC."""
