"""Where :class:`~graceful_gunicorn.testing.GunicornServer` was first documented.

Kept so that ``from graceful_gunicorn.live_server import GunicornServer`` goes
on working; new code imports it from :mod:`graceful_gunicorn.testing`.
"""

from __future__ import annotations

from .testing.server import BOOT_TIMEOUT, GunicornServer, wait_until

__all__ = ["BOOT_TIMEOUT", "GunicornServer", "wait_until"]
