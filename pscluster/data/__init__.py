"""A job's data as workers read it: uploaded arrays or a data source, cut into leased
partitions (:mod:`.partitions`) and read batch by batch (:mod:`.loading`, :mod:`.sources`)."""
