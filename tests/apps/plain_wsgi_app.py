"""A plain WSGI app (no graceful_gunicorn in it) that does what some apps do.

- ``/pid``: the serving process's pid;
- ``/fork``: forks a child that lives until it gets SIGTERM (at most 30 s; it creates
  ``child-<pid>.ready`` in the working directory once its handler is in place), answers
  with the child's pid (``multiprocessing`` with fork, or ``os.fork``, as apps use);
Every body ends with :data:`END`.

- ``/hijack``: writes its own response onto ``environ["gunicorn.socket"]`` and returns
  gunicorn's ``ALREADY_HANDLED`` (async workers), as websocket libraries do.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.workers.base_async import ALREADY_HANDLED

#: The last bytes of every body, as in the parity app: a whole body ends so.
END = b"end\n"


def _child() -> None:
    # Its own handler, as a multiprocessing child's code may have: it ends on SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # In the server's working directory: the test signals the child only then.
    open(f"child-{os.getpid()}.ready", "w").close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(0)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/hijack":
        body = b"hijacked\n" + END
        environ["gunicorn.socket"].sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        return ALREADY_HANDLED  # type: ignore[no-any-return]
    if path == "/fork":
        pid = os.fork()
        if pid == 0:
            _child()
        answer = str(pid).encode()
    else:
        answer = str(os.getpid()).encode()
    body = answer + b"\n" + END
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
