"""The Flask extension: decorators on the app and the extension, app context, counting."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, current_app

from graceful_gunicorn import Lifecycle
from graceful_gunicorn._core.context import ShutdownContext
from graceful_gunicorn._wsgi.discovery import find_lifecycle
from graceful_gunicorn._wsgi.middleware import InFlightMiddleware
from graceful_gunicorn.flask import GracefulShutdown

WAIT = 5.0

#: A shutdown budget above the 5 s that each callback without timeout= reserves
#: for itself; the callbacks here return at once, so nothing waits this long.
BUDGET = 30.0


def make_app(name: str = "app") -> Flask:
    app = Flask(name)
    app.config["TESTING"] = True

    @app.get("/stream")
    def stream() -> Any:
        def body() -> Iterator[str]:
            yield "a"
            yield "b"

        return body()

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    @app.get("/fail")
    def fail() -> str:
        raise LookupError("view failed")

    return app


@pytest.fixture
def app() -> Flask:
    return make_app()


def lifecycle_of(app: Flask) -> Lifecycle:
    found = app.extensions["graceful_gunicorn"]
    assert isinstance(found, Lifecycle)
    return found


def setup_in_constructor(app: Flask) -> GracefulShutdown:
    return GracefulShutdown(app)


def setup_with_init_app(app: Flask) -> GracefulShutdown:
    graceful = GracefulShutdown()
    graceful.init_app(app)
    return graceful


SETUPS = pytest.mark.parametrize(
    "setup", [setup_in_constructor, setup_with_init_app], ids=["constructor", "init_app"]
)


@SETUPS
def test_setup_installs_lifecycle_and_middleware(
    app: Flask, setup: Callable[[Flask], GracefulShutdown]
) -> None:
    """The app gets one Lifecycle in app.extensions and its wsgi_app counts requests."""
    graceful = setup(app)

    lifecycle = lifecycle_of(app)
    assert graceful.lifecycle(app) is lifecycle
    assert graceful.lifecycle() is lifecycle
    assert find_lifecycle(app) is lifecycle
    assert isinstance(app.wsgi_app, InFlightMiddleware)
    assert app.wsgi_app.owner is lifecycle


@SETUPS
def test_app_decorators_register_callbacks(
    app: Flask, setup: Callable[[Flask], GracefulShutdown]
) -> None:
    """@app.before_shutdown, @app.on_shutdown and @app.after_shutdown run in phase order."""
    setup(app)
    ran: list[str] = []

    @app.after_shutdown  # type: ignore[attr-defined]
    def after() -> None:
        ran.append("after_shutdown")

    def on(ctx: ShutdownContext) -> None:
        ran.append(f"{ctx.phase}:{ctx.reason}")

    assert app.on_shutdown(timeout=1, reasons={"reload"})(on) is on  # type: ignore[attr-defined]

    @app.before_shutdown  # type: ignore[attr-defined]
    def before() -> None:
        ran.append("before_shutdown")

    report = lifecycle_of(app).shutdown("reload", timeout=BUDGET)

    assert ran == ["before_shutdown", "on_shutdown:reload", "after_shutdown"]
    assert report.count("ok") == 3


def test_extension_decorators_apply_to_every_app() -> None:
    """Callbacks on the extension run for every app, including apps initialised later."""
    graceful = GracefulShutdown()
    ran: list[tuple[str, str]] = []

    @graceful.on_shutdown
    def early() -> None:
        ran.append(("early", current_app.name))

    first = make_app("first")
    graceful.init_app(first)

    @graceful.before_shutdown(timeout=1)
    def middle(ctx: ShutdownContext) -> None:
        ran.append(("middle", current_app.name))

    @first.after_shutdown  # type: ignore[attr-defined]
    def only_first() -> None:
        ran.append(("only_first", current_app.name))

    second = make_app("second")
    graceful.init_app(second)

    @graceful.after_shutdown
    def late() -> None:
        ran.append(("late", current_app.name))

    lifecycle_of(first).shutdown(timeout=BUDGET)
    assert ran == [
        ("middle", "first"),
        ("early", "first"),
        ("late", "first"),
        ("only_first", "first"),
    ]

    ran.clear()
    lifecycle_of(second).shutdown(timeout=BUDGET)
    assert ran == [("middle", "second"), ("early", "second"), ("late", "second")]


def test_callbacks_run_inside_the_app_context(app: Flask) -> None:
    """Every callback, sync or async, sees flask.current_app as its own app."""
    graceful = GracefulShutdown(app)
    other = make_app("other")
    GracefulShutdown(other)
    seen: list[tuple[str, object]] = []

    @app.before_shutdown  # type: ignore[attr-defined]
    def before() -> None:
        seen.append(("before_shutdown", current_app._get_current_object()))  # type: ignore[attr-defined]

    @graceful.on_shutdown
    def on(ctx: ShutdownContext) -> None:
        seen.append((ctx.phase, current_app._get_current_object()))  # type: ignore[attr-defined]

    @app.after_shutdown  # type: ignore[attr-defined]
    async def after() -> None:
        seen.append(("after_shutdown", current_app._get_current_object()))  # type: ignore[attr-defined]

    report = lifecycle_of(app).shutdown(timeout=BUDGET)

    assert seen == [("before_shutdown", app), ("on_shutdown", app), ("after_shutdown", app)]
    assert report.count("ok") == 3


def test_init_app_twice_is_refused(app: Flask) -> None:
    """Setting up the same app a second time raises a RuntimeError saying what to do."""
    graceful = GracefulShutdown(app)
    lifecycle = lifecycle_of(app)

    with pytest.raises(RuntimeError, match=r"already set up .* once per app"):
        graceful.init_app(app)
    with pytest.raises(RuntimeError, match="once per app"):
        GracefulShutdown(app)
    assert lifecycle_of(app) is lifecycle
    assert isinstance(app.wsgi_app, InFlightMiddleware)
    assert not isinstance(app.wsgi_app.app, InFlightMiddleware)


def test_extension_checks_registrations_before_init_app() -> None:
    """A bad registration on the extension fails at once, before any app exists."""
    graceful = GracefulShutdown()

    with pytest.raises(ValueError, match="timeout"):
        graceful.on_shutdown(timeout=-1)(lambda: None)
    with pytest.raises(ValueError, match="reasons"):
        graceful.after_shutdown(reasons={"sometimes"})(lambda: None)
    with pytest.raises(TypeError, match="callable"):
        graceful.before_shutdown("not a function")

    app = make_app()
    graceful.init_app(app)
    lifecycle = lifecycle_of(app)
    for phase in ("before_shutdown", "on_shutdown", "after_shutdown"):
        assert lifecycle.callbacks(phase) == []


def test_in_flight_counts_an_open_streaming_response(app: Flask) -> None:
    """A streaming response from the test client counts until it is closed."""
    graceful = GracefulShutdown(app)
    client = app.test_client()
    assert graceful.in_flight == 0

    response = client.get("/stream", buffered=False)
    assert graceful.in_flight == 1
    assert response.get_data() == b"ab"
    assert graceful.in_flight == 1

    response.close()
    assert graceful.in_flight == 0

    with client.get("/plain", buffered=True) as plain:
        assert plain.get_data() == b"plain"
    assert graceful.in_flight == 0


def test_view_error_does_not_leak_a_request(app: Flask) -> None:
    """A view that raises (propagated in testing mode) leaves nothing in flight."""
    graceful = GracefulShutdown(app)

    with pytest.raises(LookupError, match="view failed"):
        app.test_client().get("/fail")
    assert graceful.in_flight == 0

    app.config["TESTING"] = False
    with app.test_client().get("/fail") as response:
        assert response.status_code == 500
    assert graceful.in_flight == 0


def test_draining_is_true_once_shutdown_began(app: Flask) -> None:
    """graceful.draining is False while serving and True after the shutdown."""
    graceful = GracefulShutdown(app)
    assert graceful.draining is False

    lifecycle_of(app).shutdown(timeout=WAIT)

    assert graceful.draining is True


def test_lifecycle_lookup_with_several_apps() -> None:
    """With two apps, the lifecycle comes from the app context or must be asked by app."""
    graceful = GracefulShutdown()
    first, second, bare = make_app("first"), make_app("second"), make_app("bare")
    graceful.init_app(first)
    graceful.init_app(second)

    with second.app_context():
        assert graceful.lifecycle() is lifecycle_of(second)
        assert graceful.in_flight == 0
    assert graceful.lifecycle(first) is lifecycle_of(first)
    with pytest.raises(RuntimeError, match="no app to choose"):
        graceful.lifecycle()
    with pytest.raises(RuntimeError, match="not set up on this app"):
        graceful.lifecycle(bare)


def test_shutdown_waits_for_a_request_held_by_the_test_client(app: Flask) -> None:
    """shutdown() in another thread runs on_shutdown only after the open response is closed."""
    graceful = GracefulShutdown(app)
    events: list[str] = []
    before_done = threading.Event()
    on_shutdown_ran = threading.Event()

    @app.before_shutdown  # type: ignore[attr-defined]
    def before(ctx: ShutdownContext) -> None:
        events.append(f"before_shutdown:{ctx.in_flight}")
        before_done.set()

    @app.on_shutdown(timeout=1)  # type: ignore[attr-defined]
    def on(ctx: ShutdownContext) -> None:
        events.append(f"on_shutdown:{ctx.in_flight}")
        on_shutdown_ran.set()

    response = app.test_client().get("/stream", buffered=False)
    reports: list[Any] = []
    thread = threading.Thread(
        target=lambda: reports.append(lifecycle_of(app).shutdown(timeout=WAIT)), daemon=True
    )
    thread.start()
    try:
        assert before_done.wait(WAIT)
        assert graceful.draining
        assert not on_shutdown_ran.wait(0.1)
        assert graceful.in_flight == 1
        assert response.get_data() == b"ab"
        events.append("closed")
    finally:
        response.close()
    thread.join(WAIT)

    assert not thread.is_alive()
    assert events == ["before_shutdown:1", "closed", "on_shutdown:0"]
    assert reports[0].requests_drained == 1
    assert reports[0].requests_abandoned == 0
