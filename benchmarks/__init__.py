"""Benchmarks: the collection against the reference document's shell automation (docs/benchmarks.md)."""
