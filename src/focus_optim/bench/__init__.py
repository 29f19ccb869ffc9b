"""Benchmarks shipped with the package (``focus-optim bench-step``)."""
