"""Benchmarks of dstune on real GPUs: the harness (``benchmarks.harness``) and result summaries."""
