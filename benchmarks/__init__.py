"""Benchmarks of graceful_gunicorn against plain gunicorn: ``python -m benchmarks``.

See ``benchmarks/README.md``.
"""
