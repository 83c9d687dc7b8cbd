"""Benchmarks for ndop: reproduce the figures of PRODUCT.md ("How fast, how big") on synthetic
9-range data. Run with `python -m benchmarks.run` (quick) or `python -m benchmarks.run --full`.
"""
