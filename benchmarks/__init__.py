"""Benchmark suite for :mod:`sparse3d`.

Run ``python -m benchmarks --help`` from the repository root; the layout is
described in ``benchmarks/README.md``.
"""
