"""The graceful workers' implementation; :mod:`graceful_gunicorn.workers` names them."""
