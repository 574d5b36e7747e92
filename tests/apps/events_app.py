"""A test app that records every request and callback as a JSON line in $EVENTS_FILE.

Requests to ``/hold/<key>`` and ``/stream/<key>`` stay in flight until the
test creates ``$RELEASE_DIR/<key>``, so a test decides exactly when they end.
``$MISBEHAVE`` (comma-separated) adds callbacks that hang, raise or are slow.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

from flask import Flask, Response, has_app_context, request

from graceful_gunicorn import GracefulShutdown, ShutdownContext
from tests.apps.events import record

app = Flask(__name__)
graceful = GracefulShutdown(app)

RELEASE_DIR = os.environ.get("RELEASE_DIR", ".")
MISBEHAVE = set(filter(None, os.environ.get("MISBEHAVE", "").split(",")))
HOLD_LIMIT = 60.0


def wait_for_release(key: str) -> None:
    deadline = time.monotonic() + HOLD_LIMIT
    path = os.path.join(RELEASE_DIR, key)
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


@app.get("/hello")
def hello() -> str:
    return "hello\n"


@app.post("/echo")
def echo() -> str:
    record("entered", key="echo")
    body = request.get_data()
    record("finished", key="echo")
    return f"{len(body)}\n"


@app.get("/hold/<key>")
def hold(key: str) -> str:
    record("entered", key=key)
    wait_for_release(key)
    record("finished", key=key)
    return f"held {key}\n" + "x" * 10_000


@app.get("/stream/<key>")
def stream(key: str) -> Response:
    record("entered", key=key)

    def generate() -> Iterator[str]:
        try:
            yield f"first {key}\n"
            wait_for_release(key)
            for i in range(5):
                yield f"chunk {i} {key}\n"
            record("finished", key=key)
        finally:
            record("closed", key=key)  # also when the server closes it early

    return Response(generate(), mimetype="text/plain")


def _callback(phase: str, name: str):  # type: ignore[no-untyped-def]
    def callback(ctx: ShutdownContext) -> None:
        record(
            "callback",
            phase=phase,
            name=name,
            reason=ctx.reason,
            in_flight=ctx.in_flight,
            app_context=has_app_context(),
        )

    callback.__qualname__ = name
    return callback


app.before_shutdown(timeout=2)(_callback("before_shutdown", "b1"))
app.on_shutdown(timeout=2)(_callback("on_shutdown", "o1"))
app.on_shutdown(timeout=2)(_callback("on_shutdown", "o2"))


@app.after_shutdown(timeout=2)
async def a1(ctx: ShutdownContext) -> None:
    await asyncio.sleep(0)
    record(
        "callback",
        phase="after_shutdown",
        name="a1",
        reason=ctx.reason,
        in_flight=ctx.in_flight,
        app_context=has_app_context(),
    )


if "hang" in MISBEHAVE:

    @app.on_shutdown(timeout=1)
    def hang() -> None:
        record("callback", phase="on_shutdown", name="hang-start")
        time.sleep(3600)


if "raise" in MISBEHAVE:

    @app.on_shutdown(timeout=1)
    def boom() -> None:
        raise RuntimeError("boom from a callback")


if "slow" in MISBEHAVE:

    @app.on_shutdown(timeout=6)
    def slow_callback() -> None:
        time.sleep(4)
        record("callback", phase="on_shutdown", name="slow-done")


if "slow_quick" in MISBEHAVE:

    @app.on_shutdown(timeout=6)
    def slow_quick() -> None:
        record("callback", phase="on_shutdown", name="slow-start")
        time.sleep(3)
        record("callback", phase="on_shutdown", name="slow-done")


if "hang_quick" in MISBEHAVE:

    @app.on_shutdown(timeout=10)
    def hang_quick() -> None:
        record("callback", phase="on_shutdown", name="hang-start")
        time.sleep(3600)


if "exit" in MISBEHAVE:

    @app.on_shutdown(timeout=1)
    def calls_exit() -> None:
        raise SystemExit(3)


if "thread" in MISBEHAVE:

    @app.on_shutdown(timeout=1)
    def leaves_a_thread() -> None:
        import threading

        threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()


if "atexit" in MISBEHAVE:
    import atexit

    atexit.register(lambda: record("atexit"))


if "atexit_slow" in MISBEHAVE:
    import atexit

    def slow_exit_handler() -> None:
        record("atexit")
        time.sleep(1)

    atexit.register(slow_exit_handler)


if "thread_ends" in MISBEHAVE:

    @app.on_shutdown(timeout=1)
    def leaves_a_thread_that_ends() -> None:
        import threading

        # Ends while graceful_gunicorn runs the atexit handlers of a worker it gave up on.
        threading.Thread(target=time.sleep, args=(2.5,), daemon=False).start()


if "async_hang" in MISBEHAVE:

    @app.on_shutdown(timeout=1)
    async def never_finishes() -> None:
        await asyncio.Event().wait()


if "slow_before" in MISBEHAVE:

    @app.before_shutdown(timeout=20)
    def slow_before() -> None:
        record("callback", phase="before_shutdown", name="slow-before-start")
        time.sleep(3600)


if "slow_boot" in MISBEHAVE:
    # Loading the app takes a while: a stop may arrive while a worker boots.
    record("booting")
    time.sleep(3)


if "crash_one" in MISBEHAVE:

    @app.on_shutdown(timeout=1)
    def crash_one_worker() -> None:
        # The first worker to get here dies at once, as on a segfault.
        try:
            os.close(os.open(os.path.join(RELEASE_DIR, "crashed"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        record("crashing")
        os._exit(70)
