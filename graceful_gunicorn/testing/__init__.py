"""Test your shutdown callbacks: in-process, or under a real gunicorn.

- :func:`run_shutdown` runs an app's shutdown sequence in this process, with
  requests held in flight through its test client (:mod:`.in_process`).
- :class:`GunicornServer` runs a real gunicorn master and its workers on
  127.0.0.1 (:mod:`.server`); the ``gunicorn_server`` pytest fixture
  (:mod:`.pytest_plugin`, loaded by pytest by itself) starts one per call.
"""

from __future__ import annotations

from .in_process import ShutdownRun, run_shutdown
from .server import GunicornServer, wait_until

__all__ = ["GunicornServer", "ShutdownRun", "run_shutdown", "wait_until"]
