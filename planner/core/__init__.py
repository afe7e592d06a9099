"""The planning core: pure functions over numpy arrays and plain data, no I/O, no torch."""
