"""The gunicorn side: the master's hooks, the master<->worker channel, the graceful
workers, the summary and ``check``; every gunicorn internal in :mod:`.compat`.
"""
