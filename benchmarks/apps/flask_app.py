"""The benchmark app, in three variants that differ only in their wrapping.

- ``plain``: a Flask app, served by plain gunicorn;
- ``graceful``: the same app with ``GracefulShutdown(app)``, served with
  ``-c python:graceful_gunicorn.conf``;
- ``naive``: the same app behind a middleware that wraps every response in a
  generator, as a careless in-flight counter would; it shows what happens to
  ``sendfile`` when the file wrapper is hidden from gunicorn.

Routes:

- ``/hello``: the cheapest Flask response;
- ``/64k``: 64 KiB of bytes;
- ``/file``: the file named by ``$BENCH_FILE``, through ``wsgi.file_wrapper``
  (Flask's ``send_file``), which gunicorn sends with ``sendfile()``;
- ``/hold?ms=N``: writes ``$BENCH_DIR/started-<pid>``, then answers after N ms
  (the shutdown benchmark holds a request in flight with it);
- ``/pid``: the pid of the worker that answers;
- ``/mark``: calls ``getsid()``, which nothing else in a worker calls: under
  ``valgrind --tool=callgrind --dump-before=getsid`` each call writes the
  instructions counted since the previous one.

Each worker writes ``$BENCH_DIR/atexit-<pid>`` (the :func:`time.monotonic` time)
from an ``atexit`` handler: where the worker's own work ends and the
interpreter's teardown begins.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from flask import Flask, Response, request, send_file

from graceful_gunicorn import GracefulShutdown

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

BODY_64K = b"x" * 65536


def create_app() -> Flask:
    """The Flask app every variant shares."""
    app = Flask(__name__)

    @app.get("/hello")
    def hello() -> str:
        return "Hello, World!"

    @app.get("/64k")
    def body_64k() -> bytes:
        return BODY_64K

    @app.get("/file")
    def large_file() -> Response:
        return send_file(os.environ["BENCH_FILE"], mimetype="application/octet-stream")

    @app.get("/hold")
    def hold() -> str:
        marker = os.path.join(os.environ.get("BENCH_DIR", "."), f"started-{os.getpid()}")
        with open(marker, "w") as f:
            f.write(str(time.monotonic()))
        time.sleep(int(request.args.get("ms", "300")) / 1000)
        return str(os.getpid())

    @app.get("/pid")
    def pid() -> str:
        return str(os.getpid())

    @app.get("/mark")
    def mark() -> str:
        # Under ``callgrind --dump-before=getsid`` this ends a counting window.
        return str(os.getsid(0))

    return app


class IteratingMiddleware:
    """Counts requests by wrapping every response in a generator (do not do this)."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app
        self.in_flight = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request; the count drops when the generator is closed."""
        self.in_flight += 1
        return self._iterate(self.app(environ, start_response))

    def _iterate(self, response: Iterable[bytes]) -> Iterator[bytes]:
        try:
            yield from response
        finally:
            close = getattr(response, "close", None)
            if close is not None:
                close()
            self.in_flight -= 1


def _mark_interpreter_exit() -> None:
    directory = os.environ.get("BENCH_DIR")
    if directory:
        with open(os.path.join(directory, f"atexit-{os.getpid()}"), "w") as f:
            f.write(str(time.monotonic()))


atexit.register(_mark_interpreter_exit)

plain = create_app()

graceful = create_app()
GracefulShutdown(graceful)

naive = create_app()
naive.wsgi_app = IteratingMiddleware(naive.wsgi_app)  # type: ignore[method-assign]
