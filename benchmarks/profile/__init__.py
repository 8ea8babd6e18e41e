"""Profiling helpers for the benchmarks (task timing callback, py-spy summaries)."""
