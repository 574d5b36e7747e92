"""Unit tests of the worker classes' request-path details (no server)."""

from __future__ import annotations

import threading

from graceful_gunicorn.workers.gthread import GracefulThread


def test_gthread_keep_flag_reads_false_in_a_thread_that_never_set_it() -> None:
    # ``alive`` reads the flag three times per request; a missing attribute
    # raised and caught an AttributeError each time (a 3% slower worker).
    finishing = GracefulThread._finishing
    finishing.keep = True
    try:
        seen: list[bool] = []
        reader = threading.Thread(target=lambda: seen.append(finishing.keep))
        reader.start()
        reader.join(5)
        assert seen == [False]
    finally:
        finishing.keep = False
