"""The events the test apps record for the tests: one JSON line each, in ``$EVENTS_FILE``."""

from __future__ import annotations

import json
import os
import time

EVENTS_FILE = os.environ.get("EVENTS_FILE", os.devnull)


def record(event: str, **fields: object) -> None:
    """Append one event; O_APPEND keeps lines from several processes whole."""
    line = json.dumps({"event": event, "pid": os.getpid(), "t": time.monotonic(), **fields})
    fd = os.open(EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
