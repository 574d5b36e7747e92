"""InFlightMiddleware counts a request from its call until its response is closed."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.util import FileWrapper

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from werkzeug.test import create_environ, run_wsgi_app

from graceful_gunicorn._wsgi.middleware import InFlight, InFlightMiddleware

WAIT = 5.0


class Boom(Exception):
    """Raised by the test applications."""


def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
    return lambda data: None


def environ(path: str = "/", method: str = "GET", **extra: Any) -> dict[str, Any]:
    env = create_environ(path, method=method)
    env.update(extra)
    return env


class Body:
    """A response iterable that counts how often it is closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.close_calls = 0

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.close_calls += 1


@pytest.fixture
def requests() -> InFlight:
    return InFlight()


def counted(app: Callable[..., Any], requests: InFlight) -> InFlightMiddleware:
    return InFlightMiddleware(app, requests)


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_counts_a_request_until_it_is_closed(requests: InFlight) -> None:
    """A request counts from the call until close(), even after its body was read."""
    seen: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(len(requests))
        return hello(environ, start_response)

    response = counted(app, requests)(environ(), start_response)
    assert seen == [1]
    assert b"".join(response) == b"hello"
    assert len(requests) == 1

    response.close()  # type: ignore[attr-defined]
    assert len(requests) == 0


def test_run_wsgi_app_ends_at_zero(requests: InFlight) -> None:
    """Through werkzeug's run_wsgi_app, buffered or not, the count goes back to zero."""
    app = counted(hello, requests)

    app_iter, status, _ = run_wsgi_app(app, environ(), buffered=True)
    assert (status, list(app_iter)) == ("200 OK", [b"hello"])
    assert len(requests) == 0

    app_iter, status, _ = run_wsgi_app(app, environ(), buffered=False)
    assert len(requests) == 1
    assert list(app_iter) == [b"hello"]
    app_iter.close()  # type: ignore[attr-defined]
    assert len(requests) == 0


def test_streaming_response_counts_until_close_not_until_exhausted(requests: InFlight) -> None:
    """A generator response stays in flight after its last chunk until close() is called."""
    finished: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            try:
                yield b"a"
                yield b"b"
            finally:
                finished.append("body")

        return body()

    response = counted(app, requests)(environ(), start_response)
    chunks = iter(response)
    assert next(chunks) == b"a"
    assert len(requests) == 1
    assert next(chunks) == b"b"
    with pytest.raises(StopIteration):
        next(chunks)
    assert finished == ["body"]
    assert len(requests) == 1

    response.close()  # type: ignore[attr-defined]
    assert len(requests) == 0


def test_app_raising_before_returning(requests: InFlight) -> None:
    """An exception from the app propagates and the request no longer counts."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert len(requests) == 1
        raise Boom("before the response")

    with pytest.raises(Boom, match="before the response"):
        counted(app, requests)(environ(), start_response)
    assert len(requests) == 0
    assert requests.snapshot() == []


def test_generator_raising_mid_iteration_then_closed(requests: InFlight) -> None:
    """A body that raises mid-stream still counts until close(), then not."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise Boom("mid-stream")

    response = counted(app, requests)(environ(), start_response)
    chunks = iter(response)
    assert next(chunks) == b"first"
    with pytest.raises(Boom, match="mid-stream"):
        next(chunks)
    assert len(requests) == 1

    response.close()  # type: ignore[attr-defined]
    assert len(requests) == 0


def test_close_twice_is_harmless(requests: InFlight) -> None:
    """Calling close() a second time raises nothing and leaves the count at zero."""
    response = counted(hello, requests)(environ(), start_response)
    list(response)
    response.close()  # type: ignore[attr-defined]
    response.close()  # type: ignore[attr-defined]
    assert len(requests) == 0


def test_close_without_iterating(requests: InFlight) -> None:
    """A response closed before any chunk was read (client gone) ends the request."""
    started: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        started.append("body")
        yield b"never read"

    response = counted(app, requests)(environ(), start_response)
    assert len(requests) == 1
    response.close()  # type: ignore[attr-defined]

    assert len(requests) == 0
    assert started == []


def test_close_after_some_chunks_closes_the_generator(requests: InFlight) -> None:
    """Closing a half-read stream closes the app's generator (its finally runs)."""
    cleaned: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            yield from (b"x" for _ in range(100))
        finally:
            cleaned.append("generator")

    response = counted(app, requests)(environ(), start_response)
    chunks = iter(response)
    next(chunks)
    next(chunks)
    response.close()  # type: ignore[attr-defined]

    assert cleaned == ["generator"]
    assert len(requests) == 0


def test_inner_close_is_called_exactly_once(requests: InFlight) -> None:
    """The server's close() reaches the app's iterable once."""
    body = Body([b"a", b"b"])

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return body

    response = counted(app, requests)(environ(), start_response)
    assert list(response) == [b"a", b"b"]
    assert body.close_calls == 0

    response.close()  # type: ignore[attr-defined]
    assert body.close_calls == 1
    assert len(requests) == 0


def test_inner_close_raising_still_ends_the_request(requests: InFlight) -> None:
    """If the app's close() raises, the error propagates and the request ends anyway."""

    class Failing(Body):
        def close(self) -> None:
            raise Boom("close failed")

    response = counted(lambda e, s: Failing([b"a"]), requests)(environ(), start_response)
    with pytest.raises(Boom, match="close failed"):
        response.close()  # type: ignore[attr-defined]
    assert len(requests) == 0


def test_file_wrapper_response_is_returned_as_is(requests: InFlight) -> None:
    """A wsgi.file_wrapper response is handed back itself; its close ends the request."""
    file = io.BytesIO(b"file contents")
    wrappers: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        wrapper = environ["wsgi.file_wrapper"](file, 4)
        wrappers.append(wrapper)
        return wrapper

    response = counted(app, requests)(environ(**{"wsgi.file_wrapper": FileWrapper}), start_response)

    assert response is wrappers[0]
    assert isinstance(response, FileWrapper)
    assert len(requests) == 1
    assert b"".join(response) == b"file contents"
    assert len(requests) == 1

    response.close()  # type: ignore[attr-defined]
    assert file.closed
    assert len(requests) == 0


def test_other_responses_are_counted_when_a_file_wrapper_is_offered(requests: InFlight) -> None:
    """With wsgi.file_wrapper in the environ, a plain list response is still counted."""
    response = counted(hello, requests)(
        environ(**{"wsgi.file_wrapper": FileWrapper}), start_response
    )
    assert len(requests) == 1
    assert list(response) == [b"hello"]
    response.close()  # type: ignore[attr-defined]
    assert len(requests) == 0


def file_wrapper_function(filelike: Any, block_size: int = 8192) -> FileWrapper:
    """A wsgi.file_wrapper that is a function: PEP 3333 only asks for a callable."""
    return FileWrapper(filelike, block_size)


def test_file_wrapper_that_is_a_function(requests: InFlight) -> None:
    """A server whose wsgi.file_wrapper is a plain function is served and counted normally."""
    response = counted(hello, requests)(
        environ(**{"wsgi.file_wrapper": file_wrapper_function}), start_response
    )
    assert list(response) == [b"hello"]
    response.close()  # type: ignore[attr-defined]
    assert len(requests) == 0


def test_snapshot_describes_requests_oldest_first(requests: InFlight) -> None:
    """snapshot() gives method, path, age and serving thread of each request, oldest first."""
    app = counted(hello, requests)
    responses = []

    def tick() -> None:
        # Make the next request's start time strictly later, without sleeping.
        now = time.monotonic()
        while time.monotonic() <= now:
            pass

    responses.append(app(environ("/first", "GET"), start_response))
    tick()
    other_thread: list[int] = []

    def serve_elsewhere() -> None:
        other_thread.append(threading.get_ident())
        responses.append(app(environ("/second", "POST"), start_response))

    thread = threading.Thread(target=serve_elsewhere)
    thread.start()
    thread.join(WAIT)
    tick()
    responses.append(app(environ("/third", "DELETE"), start_response))

    snapshot = requests.snapshot()

    assert [(r.method, r.path) for r in snapshot] == [
        ("GET", "/first"),
        ("POST", "/second"),
        ("DELETE", "/third"),
    ]
    assert [r.thread_id for r in snapshot] == [
        threading.get_ident(),
        other_thread[0],
        threading.get_ident(),
    ]
    assert all(r.seconds >= 0 for r in snapshot)
    assert snapshot[0].seconds >= snapshot[1].seconds >= snapshot[2].seconds

    responses[1].close()
    assert [r.path for r in requests.snapshot()] == ["/first", "/third"]
    for response in responses:
        response.close()
    assert requests.snapshot() == []


def test_many_threads_end_at_zero(requests: InFlight) -> None:
    """Concurrent requests of every kind, across 16 threads, leave nothing in flight."""
    threads_count, per_thread = 16, 200
    peak: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        kind = environ["PATH_INFO"]
        if kind == "/raise":
            raise Boom("before")
        start_response("200 OK", [])
        if kind == "/plain":
            return [b"ok"]
        return (b"x" for _ in range(10))

    middleware = counted(app, requests)
    barrier = threading.Barrier(threads_count, timeout=WAIT)
    failures: list[BaseException] = []
    environs = {kind: environ(kind) for kind in ("/plain", "/raise", "/stream", "/early")}

    def client(index: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                kind = ("/plain", "/raise", "/stream", "/early")[(i + index) % 4]
                try:
                    response = middleware(dict(environs[kind]), start_response)
                except Boom:
                    continue
                try:
                    chunks = iter(response)
                    if kind == "/early":
                        next(chunks)
                    else:
                        for _ in chunks:
                            pass
                    peak.append(len(requests))
                finally:
                    response.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)

    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert len(peak) == threads_count * per_thread * 3 // 4
    assert min(peak) >= 1
    assert len(requests) == 0
    assert requests.snapshot() == []


# -- property: the count is always the number of requests open ---------------------

PLAIN, STREAM, RAISE_BEFORE, RAISE_MID, CLOSE_EARLY = (
    "plain",
    "stream",
    "raise_before",
    "raise_mid",
    "close_early",
)

plans_strategy = st.lists(
    st.one_of(
        st.tuples(st.just(PLAIN), st.integers(0, 3)),
        st.tuples(st.just(STREAM), st.integers(0, 3)),
        st.tuples(st.just(RAISE_BEFORE), st.just(0)),
        st.tuples(st.just(RAISE_MID), st.integers(0, 3)),
        st.tuples(st.just(CLOSE_EARLY), st.integers(0, 3)),
    ),
    max_size=6,
)


class Client:
    """Plays one request's steps against the middleware, as a server would."""

    def __init__(self, index: int, kind: str, n: int) -> None:
        self.index = index
        self.kind = kind
        self.n = n
        self.response: Any = None
        self.chunks: Iterator[bytes] | None = None
        self.open = False
        self.steps = self._steps()

    def _steps(self) -> list[Callable[[InFlightMiddleware], None]]:
        steps: list[Callable[[InFlightMiddleware], None]] = [self.start]
        if self.kind == RAISE_BEFORE:
            return steps
        steps += [self.read] * self.n
        if self.kind in (PLAIN, STREAM):
            steps.append(self.read_end)
        elif self.kind == RAISE_MID:
            steps.append(self.read_raises)
        steps.append(self.close)
        return steps

    def start(self, middleware: InFlightMiddleware) -> None:
        env = environ(f"/{self.index}")
        if self.kind == RAISE_BEFORE:
            with pytest.raises(Boom):
                middleware(env, start_response)
            return
        self.response = middleware(env, start_response)
        self.chunks = iter(self.response)
        self.open = True

    def read(self, middleware: InFlightMiddleware) -> None:
        assert self.chunks is not None
        assert next(self.chunks) == b"chunk"

    def read_end(self, middleware: InFlightMiddleware) -> None:
        assert self.chunks is not None
        assert next(self.chunks, None) is None

    def read_raises(self, middleware: InFlightMiddleware) -> None:
        assert self.chunks is not None
        with pytest.raises(Boom):
            next(self.chunks)

    def close(self, middleware: InFlightMiddleware) -> None:
        self.response.close()
        self.open = False


def plan_app(plans: list[tuple[str, int]]) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        kind, n = plans[int(environ["PATH_INFO"][1:])]
        if kind == RAISE_BEFORE:
            raise Boom("before")
        start_response("200 OK", [])
        if kind == PLAIN:
            return [b"chunk"] * n

        def body() -> Iterator[bytes]:
            yield from [b"chunk"] * n
            if kind == RAISE_MID:
                raise Boom("mid-stream")
            if kind == CLOSE_EARLY:
                yield from [b"chunk"] * 5

        return body()

    return app


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[int], bool]:
    plans = draw(plans_strategy)
    clients = [Client(i, kind, n) for i, (kind, n) in enumerate(plans)]
    tokens = [c.index for c in clients for _ in c.steps]
    order = draw(st.permutations(tokens))
    threaded = draw(st.booleans())
    return plans, order, threaded


@hypothesis_settings(
    deadline=None,
    max_examples=200,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_count_is_always_the_number_of_open_requests(
    scenario: tuple[list[tuple[str, int]], list[int], bool],
) -> None:
    """For any interleaving of requests of any kind, the count is the open requests, then 0."""
    plans, order, threaded = scenario
    requests = InFlight()
    middleware = InFlightMiddleware(plan_app(plans), requests)
    clients = [Client(i, kind, n) for i, (kind, n) in enumerate(plans)]
    next_step = [0] * len(clients)

    with ThreadPoolExecutor(max_workers=3) as pool:
        for index in order:
            client = clients[index]
            step = client.steps[next_step[index]]
            next_step[index] += 1
            if threaded:  # each step may run on a different thread
                pool.submit(step, middleware).result(timeout=WAIT)
            else:
                step(middleware)
            open_paths = sorted(f"/{c.index}" for c in clients if c.open)
            assert len(requests) == len(open_paths)
            assert sorted(r.path for r in requests.snapshot()) == open_paths

    assert next_step == [len(c.steps) for c in clients]
    assert len(requests) == 0


class Killed(BaseException):
    """Stands for gevent's GreenletExit: a BaseException that no server answers."""


def test_request_ends_say_served_or_cut(requests: InFlight) -> None:
    """Once watched, each request's end is recorded once: served (also when the
    app raised an Exception, which the server answers with a 500) or cut (a
    BaseException such as GreenletExit, in the app or while the server's own
    ``finally`` closes the response)."""
    before = counted(lambda env, sr: [b"not watched yet"], requests)(environ(), start_response)
    before.close()  # type: ignore[attr-defined]
    ends = requests.watch_ends()

    served = counted(lambda env, sr: Body([b"ok"]), requests)(environ(), start_response)
    served.close()  # type: ignore[attr-defined]
    served.close()  # type: ignore[attr-defined]

    def raising(env: Any, sr: Any) -> Any:
        raise Boom

    def killed(env: Any, sr: Any) -> Any:
        raise Killed

    for app, raised in ((raising, Boom), (killed, Killed)):
        with pytest.raises(raised):
            counted(app, requests)(environ(), start_response)

    cut_mid_response = counted(lambda env, sr: Body([b"a", b"b"]), requests)(
        environ(), start_response
    )
    with pytest.raises(Killed):
        try:
            raise Killed
        finally:
            cut_mid_response.close()  # type: ignore[attr-defined]

    assert [served for _, served in ends] == [True, True, False, False]
    tally = requests.tally()
    assert (tally.served, tally.cut, tally.left) == (2, 2, [])
    assert len(requests) == 0


def test_a_request_through_two_watched_middleware_counts_once() -> None:
    """An app mounted inside another app's middleware: one request, two in-flight
    sets, one environ. Combined, it is one in flight and one served (it was two)."""
    from graceful_gunicorn import Lifecycle

    outer, inner = Lifecycle(), Lifecycle()
    release = threading.Event()

    def slow(env: Any, sr: Any) -> list[bytes]:
        release.wait(WAIT)
        return [b"done"]

    app = outer.wrap(inner.wrap(slow))
    both = Lifecycle.combine([outer, inner]).requests
    both.watch_ends()
    with ThreadPoolExecutor(1) as pool:
        response = pool.submit(app, environ(), start_response)
        deadline = time.monotonic() + WAIT
        while len(both) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(both) == 1
        assert [r.path for r in both.snapshot()] == ["/"]
        release.set()
        response.result(WAIT).close()
    tally = both.tally()
    assert (tally.served, tally.cut, tally.left) == (1, 0, [])


def test_a_watched_request_whose_environ_is_no_dict_still_ends(requests: InFlight) -> None:
    """PEP 3333 asks for a dict, but a middleware may pass a read-only mapping:
    the request still leaves the in-flight set once and counts as served, and the
    app's own exception is the one that propagates."""
    import types

    requests.watch_ends()

    def raising(env: Any, sr: Any) -> Any:
        raise Boom

    with pytest.raises(Boom):
        counted(raising, requests)(types.MappingProxyType(environ()), start_response)  # type: ignore[arg-type]
    frozen = types.MappingProxyType(environ())
    response = counted(lambda env, sr: Body([b"ok"]), requests)(frozen, start_response)  # type: ignore[arg-type]
    assert len(requests) == 1
    tally = requests.tally()
    assert (tally.served, len(tally.left)) == (1, 1)
    response.close()  # type: ignore[attr-defined]
    tally = requests.tally()
    assert (len(requests), tally.served, tally.cut, tally.left) == (0, 2, 0, [])
