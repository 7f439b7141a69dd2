"""`harness bench`: throughput of each stage on this machine, written to PERFORMANCE.md."""
