"""Requests served in-process, without a server: the cost of the middleware itself.

Each request is served the way a WSGI server serves it: call the app, iterate
the response, call its ``close()``. Workloads:

- ``bare``: a trivial WSGI app;
- ``wrapped``: the same app inside graceful_gunicorn's in-flight middleware
  (``Lifecycle().wrap(app)``);
- ``flask-plain`` / ``flask-graceful``: a hello-world Flask route, without and
  with ``GracefulShutdown(app)`` (these two need Flask).

``bare`` and ``wrapped`` need only the package's core, which imports neither
Flask nor gunicorn, so any Python runs them without an install::

    PYTHONPATH=/path/to/repo python3.13 -m benchmarks.inprocess time
    PYTHONPATH=/path/to/repo python3.13 -m benchmarks.inprocess run wrapped 1000

``time`` prints one JSON object: nanoseconds per request of ``bare`` and
``wrapped``, alternated, and the difference of each pair. ``run`` serves a
number of requests and nothing else, for ``valgrind --tool=callgrind``
(:mod:`benchmarks.instructions`): after a warm-up it freezes the garbage
collector's old objects (``gc.freeze()``) and ends with ``os._exit``, so that
two runs of different lengths differ by the cost of their extra requests only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
WORKLOADS = ("bare", "wrapped", "flask-plain", "flask-passthrough", "flask-graceful")


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    """A server's ``start_response`` that keeps nothing."""
    return None


def trivial_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The cheapest WSGI app there is."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def base_environ() -> dict[str, Any]:
    """The environ of ``GET /hello`` as a WSGI server builds it."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/hello",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": sys.stdin.buffer if sys.stdin else None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


class PassThrough:
    """The least a WSGI middleware can be: a class whose ``__call__`` calls the app.

    What any middleware costs before it does anything, for comparison.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Call the app."""
        return self.app(environ, start_response)


def make_app(workload: str) -> WSGIApp:
    """The WSGI app of ``workload``."""
    if workload == "bare":
        return trivial_app
    if workload == "wrapped":
        from graceful_gunicorn import Lifecycle

        return Lifecycle().wrap(trivial_app)
    if workload == "flask-passthrough":
        from benchmarks.apps import flask_app

        app = flask_app.create_app()
        app.wsgi_app = PassThrough(app.wsgi_app)  # type: ignore[method-assign]
        return app
    if workload in ("flask-plain", "flask-graceful"):
        from benchmarks.apps import flask_app

        app = flask_app.plain if workload == "flask-plain" else flask_app.graceful
        return app
    raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")


def serve(app: WSGIApp, environ: dict[str, Any], requests: int) -> None:
    """Serve ``requests`` requests as a WSGI server does: call, iterate, close."""
    for _ in range(requests):
        response = app(environ.copy(), start_response)
        for _chunk in response:
            pass
        close = getattr(response, "close", None)
        if close is not None:
            close()


def ns_per_request(app: WSGIApp, environ: dict[str, Any], requests: int) -> float:
    """Wall-clock nanoseconds per request over ``requests`` requests."""
    started = time.perf_counter_ns()
    serve(app, environ, requests)
    return (time.perf_counter_ns() - started) / requests


def time_middleware(requests: int, rounds: int) -> dict[str, Any]:
    """Time ``bare`` and ``wrapped`` alternately; ``rounds`` pairs of ``requests`` each."""
    environ = base_environ()
    bare, wrapped = make_app("bare"), make_app("wrapped")
    serve(bare, environ, requests // 10)  # warm up
    serve(wrapped, environ, requests // 10)
    pairs = []
    for i in range(rounds):
        # ABBA order, so that a drift of the machine favours neither
        if i % 2 == 0:
            b = ns_per_request(bare, environ, requests)
            w = ns_per_request(wrapped, environ, requests)
        else:
            w = ns_per_request(wrapped, environ, requests)
            b = ns_per_request(bare, environ, requests)
        pairs.append((b, w))
    added = [w - b for b, w in pairs]
    return {
        "python": platform.python_version(),
        "requests": requests,
        "rounds": rounds,
        "bare_ns": [b for b, _ in pairs],
        "wrapped_ns": [w for _, w in pairs],
        "added_ns": added,
        "added_ns_median": statistics.median(added),
        "bare_ns_median": statistics.median(b for b, _ in pairs),
        "gc_enabled": gc.isenabled(),
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: ``time`` or ``run WORKLOAD REQUESTS``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess")
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("time", help="time bare and wrapped, print JSON")
    timing.add_argument("--requests", type=int, default=200_000)
    timing.add_argument("--rounds", type=int, default=7)
    run = commands.add_parser("run", help="serve requests (for callgrind)")
    run.add_argument("workload", choices=WORKLOADS)
    run.add_argument("requests", type=int)
    args = parser.parse_args(argv)
    if args.command == "time":
        print(json.dumps(time_middleware(args.requests, args.rounds)))
    else:
        app = make_app(args.workload)
        environ = base_environ()
        serve(app, environ, 20)  # imports and caches done once, outside the difference
        # Objects alive now are never collected: a full collection then costs the
        # same in runs of different lengths, and the difference is the requests'.
        gc.collect()
        gc.freeze()
        serve(app, environ, args.requests)
        # Skip the interpreter's teardown, whose cost depends on the heap.
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
