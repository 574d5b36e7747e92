"""The applications the benchmarks serve (see :mod:`benchmarks.apps.flask_app`)."""
