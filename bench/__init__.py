"""Benchmarks for consentgate: ``python -m bench.run`` (``make bench``).

Every figure is measured next to a baseline taken in the same run on the same rows, with
warm-up excluded; see :mod:`bench.run` for what each one covers.
"""
