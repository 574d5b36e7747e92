"""An app that takes ``BOOT_SECONDS`` to import, as apps with an ORM or a model do.

The file named by ``BOOT_SECONDS_FILE``, while it exists, says how long instead (a
deploy that makes the next import slow). Its import fails while the file named
by ``BROKEN_MARKER`` exists (a bad deploy).
``/hello`` answers 200 with the serving worker's pid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

_marker = os.environ.get("BROKEN_MARKER")
if _marker and os.path.exists(_marker):
    raise RuntimeError("a bad deploy: this app cannot be imported")
_seconds_file = os.environ.get("BOOT_SECONDS_FILE")
if _seconds_file and os.path.exists(_seconds_file):
    with open(_seconds_file) as seconds:
        time.sleep(float(seconds.read()))
else:
    time.sleep(float(os.environ.get("BOOT_SECONDS", "0")))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d\n" % os.getpid()]
