"""The app of the parity tests (tests/parity.py): an ordinary Flask app with
shutdown callbacks that were not given a ``timeout=``.

``$PARITY_CALLBACKS`` picks them: ``six`` (the default) registers six
on_shutdown and after_shutdown callbacks, none with a ``timeout=``: at 5 s
each they once took the whole of gunicorn's default budget from the drain.
``async`` has async callbacks (one overruns its timeout);
``issue`` is the app of issue 13's report, meant for ``--graceful-timeout
15``: a before_shutdown, three on_shutdown (one with ``timeout=2``) and an
after_shutdown.

Plain gunicorn loads this same module; there the callbacks simply never run.
Under graceful_gunicorn they run with the default budget (SPEC section 5),
which is what the parity tests guard: an app with many extensions, default
settings, must never do worse than on plain gunicorn.

Routes:

- ``/hello``: a short answer, for loads;
- ``/sleep/<seconds>?key=K``: answers after ``seconds``;
- ``/stream/<seconds>?key=K``: streams five chunks over ``seconds``;
- ``/asyncio/<seconds>?key=K``: answers after ``seconds`` and an ``asyncio.run()``.

Each body ends with :data:`END`, so that a client can tell a whole body from
a cut one. Requests with a ``key`` append ``entered`` (when the app starts
them) and ``finished`` (when the app wrote the last byte) to ``$EVENTS_FILE``
as JSON lines, and the callbacks append ``callback`` lines; the tests wait on
these events, never on bare sleeps.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator

from flask import Flask, Response, request

from graceful_gunicorn import GracefulShutdown
from tests.apps.events import record

app = Flask(__name__)
graceful = GracefulShutdown(app)


#: The last bytes of every body.
END = "end\n"

#: The longest a request may ask to take: a stuck test must not hold a worker.
LONGEST = 30.0


def _seconds(value: float) -> float:
    return max(0.0, min(float(value), LONGEST))


@app.get("/hello")
def hello() -> str:
    return "hello\n" + END


@app.get("/sleep/<float:seconds>")
def sleep(seconds: float) -> str:
    key = request.args.get("key")
    if key:
        record("entered", key=key)
    time.sleep(_seconds(seconds))
    if key:
        record("finished", key=key)
    return "x" * 10_000 + "\n" + END


@app.get("/stream/<float:seconds>")
def stream(seconds: float) -> Response:
    key = request.args.get("key")
    if key:
        record("entered", key=key)
    pause = _seconds(seconds) / 5

    def generate() -> Iterator[str]:
        for i in range(5):
            yield f"chunk {i}\n"
            time.sleep(pause)
        if key:
            record("finished", key=key)
        yield END

    return Response(generate(), mimetype="text/plain")


@app.get("/asyncio/<float:seconds>")
def uses_asyncio(seconds: float) -> str:
    """A view that runs a coroutine of its own, as libraries with async clients do."""
    key = request.args.get("key")
    if key:
        record("entered", key=key)
    time.sleep(_seconds(seconds))
    asyncio.run(asyncio.sleep(0))
    return "asyncio\n" + END


def _callback(phase: str, name: str) -> Callable[[], None]:
    def callback() -> None:
        record("callback", phase=phase, name=name)

    callback.__name__ = callback.__qualname__ = name
    return callback


if os.environ.get("PARITY_CALLBACKS") == "async":
    # Async callbacks: one awaits while requests are served, one overruns its
    # timeout without yielding to its loop, one comes after it.

    @graceful.before_shutdown(timeout=3)
    async def wait_for_scheduler() -> None:
        record("callback", phase="before_shutdown", name="wait_for_scheduler")
        await asyncio.sleep(2)

    @graceful.on_shutdown(timeout=2)
    async def flush_async() -> None:
        record("callback", phase="on_shutdown", name="flush_async")

    @graceful.on_shutdown(timeout=0.5)
    async def overruns() -> None:
        time.sleep(2)  # blocks its loop: the timeout cannot cancel it

elif os.environ.get("PARITY_CALLBACKS", "six") == "issue":
    graceful.before_shutdown(_callback("before_shutdown", "stop_scheduler"))
    graceful.on_shutdown(_callback("on_shutdown", "flush_metrics"))
    graceful.on_shutdown(timeout=2)(_callback("on_shutdown", "flush_buffer"))
    graceful.on_shutdown(_callback("on_shutdown", "close_cache"))
    graceful.after_shutdown(_callback("after_shutdown", "close_pool"))
else:
    # Six callbacks without timeout=, as an app with a handful of extensions has.
    graceful.on_shutdown(_callback("on_shutdown", "flush_metrics"))
    graceful.on_shutdown(_callback("on_shutdown", "flush_buffer"))
    graceful.on_shutdown(_callback("on_shutdown", "close_cache"))
    graceful.on_shutdown(_callback("on_shutdown", "deregister"))
    graceful.after_shutdown(_callback("after_shutdown", "close_pool"))
    graceful.after_shutdown(_callback("after_shutdown", "flush_logs"))
