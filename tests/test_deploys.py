"""readiness_path, shutdown_delay and keep-alive during a stop (SPEC section 4).

Real gunicorn masters and workers, real signals, real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import signal
import time
from collections.abc import Callable

import pytest

from .conftest import WORKER_CLASSES
from .load import Load
from .scenarios import APP, GRACEFUL, worker_args
from .server import Gunicorn, http_get, wait_until

#: Load scenarios run one at a time (pyproject.toml, addopts).
pytestmark = pytest.mark.xdist_group("load")

READY = "/-/ready"


def delayed(delay: float) -> dict[str, str]:
    return {"GRACEFUL_READINESS_PATH": READY, "GRACEFUL_SHUTDOWN_DELAY": str(delay)}


def request(
    connection: http.client.HTTPConnection, method: str, path: str
) -> http.client.HTTPResponse:
    connection.request(method, path)
    response = connection.getresponse()
    response.read()
    return response


def request_status(connection: http.client.HTTPConnection) -> int:
    """The status of the answer to the request already sent on ``connection``."""
    response = connection.getresponse()
    response.read()
    return response.status


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_shutdown_delay_keeps_serving_with_readiness_503(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. readiness_path and shutdown_delay=3; a kept-alive connection is open
    2. SIGTERM the master.

    Result: readiness answered 200 before; during the delay it answers 503 on
    every new connection at once, a new connection to the app gets 200, the
    kept-alive connection is served once more and told to close; the master
    exits only after the delay, and the callbacks run with reason "terminate".
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class), APP], delayed(3))
    server.wait_ready(workers=2)
    before = http_get(server.port, READY)
    assert (before.status, before.body) == (200, b"ready\n")
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert request(kept, "GET", "/hello").status == 200

    server.signal(signal.SIGTERM)
    signalled = time.monotonic()
    wait_until(lambda: http_get(server.port, READY, 5).status == 503, 5, "readiness 503")
    flipped_after = time.monotonic() - signalled
    during = [http_get(server.port, READY, 5) for _ in range(6)]
    served = http_get(server.port, "/hello", 5)
    last = request(kept, "GET", "/hello")
    still_delaying = time.monotonic() - signalled < 3
    kept.close()
    assert server.wait_exit(20) == 0
    exited_after = time.monotonic() - signalled

    assert flipped_after < 1.5
    assert [(r.status, r.body) for r in during] == [(503, b"stopping\n")] * 6
    assert served.ok
    assert last.status == 200
    assert last.getheader("Connection", "").lower() == "close"
    assert still_delaying, "the checks above must run during the delay"
    assert exited_after >= 3
    assert {e["reason"] for e in server.callbacks()} == {"terminate"}
    assert "shutdown_delay over, stopping gracefully" in server.log()


# The sync worker closes every connection after its response anyway.
@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_readiness_answers_close_their_connection_while_going_away(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. readiness_path and shutdown_delay=3; a probe's kept-alive connection
    2. SIGTERM the master 3. the probe asks again on that connection.

    Result: 503 with Connection: close (review defect 16: it stayed kept alive).
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class, workers=1), APP], delayed(3))
    server.wait_ready(workers=1)
    probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        ready = request(probe, "GET", READY)
        assert ready.status == 200 and ready.getheader("Connection", "").lower() != "close"
        server.signal(signal.SIGTERM)
        wait_until(lambda: http_get(server.port, READY, 5).status == 503, 5, "readiness 503")
        stopping = request(probe, "GET", READY)
    finally:
        probe.close()
    assert stopping.status == 503
    assert stopping.getheader("Connection", "").lower() == "close"
    assert server.wait_exit(20) == 0


def test_second_sigterm_skips_the_delay_and_sigint_stops_quickly(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. shutdown_delay=30 2. SIGTERM twice (one server), SIGTERM then SIGINT (another).

    Result: each master exits within a few seconds, not after 30; the second
    runs the callbacks with reason "quick".
    """
    reasons = {}
    for second in (signal.SIGTERM, signal.SIGINT):
        server = gunicorn([*GRACEFUL, *worker_args("sync", workers=1), APP], delayed(30))
        server.wait_ready(workers=1)
        server.signal(signal.SIGTERM)
        wait_until(lambda s=server: http_get(s.port, READY, 5).status == 503, 5, "the delay")
        started = time.monotonic()
        server.signal(second)
        assert server.wait_exit(15) == 0
        assert time.monotonic() - started < 8
        pids = set(server.worker_pids())  # both servers write to the same events file
        reasons[second] = {e["reason"] for e in server.callbacks() if e["pid"] in pids}
    assert reasons == {signal.SIGTERM: {"terminate"}, signal.SIGINT: {"quick"}}


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_readiness_answers_only_get_and_head_on_its_exact_path(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """Result: GET and HEAD answer 200, other methods 405, other paths reach the app."""
    server = gunicorn([*GRACEFUL, *worker_args(worker_class, workers=1), APP], delayed(0))
    server.wait_ready(workers=1)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        head = request(connection, "HEAD", READY)
        post = request(connection, "POST", READY)
        sub = request(connection, "GET", READY + "/x")
    finally:
        connection.close()
    assert head.status == 200
    assert head.getheader("Content-Length") == "6"
    assert (post.status, post.getheader("Allow")) == (405, "GET, HEAD")
    assert sub.status == 404  # the app's answer
    assert server.callbacks() == []
    assert server.process is not None and server.process.poll() is None


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_idle_kept_alive_connection_does_not_hold_the_worker(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. --keep-alive 15, graceful_timeout 30; a connection made one request
    and stays open, idle 2. SIGTERM the master.

    Result: the worker exits a few seconds after the connection's 2 s linger
    (STOP_KEEPALIVE_LINGER), long before the keep-alive timeout (15 s) and the
    drain deadline (14.5 s).
    """
    server = gunicorn(
        [
            *GRACEFUL,
            *worker_args(worker_class, workers=1),
            "--keep-alive",
            "15",
            "--graceful-timeout",
            "30",
            APP,
        ]
    )
    server.wait_ready(workers=1)
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        assert request(idle, "GET", "/hello").status == 200
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(40) == 0
        took = time.monotonic() - started
    finally:
        idle.close()
    print(f"{worker_class}: exit {took:.2f}s after SIGTERM with an idle kept-alive connection")
    assert took < 10
    assert len(server.callbacks("after_shutdown")) == 1


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
@pytest.mark.parametrize("cut", ["short drain", "ctrl+c in the drain"])
def test_idle_kept_alive_connection_closes_when_the_drain_ends(
    gunicorn: Callable[..., Gunicorn], worker_class: str, cut: str
) -> None:
    """1. --keep-alive 10; a connection made one request and stays open, idle
    2. SIGTERM, with a drain shorter than the 2 s a stopping worker keeps such a
    connection (graceful_timeout 8 with 6 s of callbacks), or SIGTERM then SIGINT
    once the drain began.

    Result: the connection closes when the drain ends; the worker stops cleanly
    (gevent's lingered past the drain: the worker was forced to exit, status 1;
    after a Ctrl+C, gthread's lingered into gunicorn 25+'s SIGKILL).
    """
    timeout = "8" if cut == "short drain" else "30"
    server = gunicorn(
        [
            *GRACEFUL,
            *worker_args(worker_class, workers=1),
            "--keep-alive",
            "10",
            "--graceful-timeout",
            timeout,
            APP,
        ]
    )
    server.wait_ready(workers=1)
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        assert request(idle, "GET", "/hello").status == 200
        server.signal(signal.SIGTERM)
        if cut == "ctrl+c in the drain":
            wait_until(lambda: "shutdown started" in server.log(), 20, "the drain to begin")
            server.signal(signal.SIGINT)
        assert server.wait_exit(40) == 0
    finally:
        idle.close()
    assert "1 of 1 worker(s) stopped cleanly" in server.log(), server.log()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_request_running_when_the_stop_begins_closes_its_connection(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. a kept-alive connection made one request, then a second one that is
    held 2. SIGTERM the master 3. release the request.

    Result: the first response kept the connection alive (gthread, gevent);
    the held one completes 200 with "Connection: close", so the client does
    not send its next request to a stopping worker.
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class, workers=1), "--keep-alive", "15", APP])
    server.wait_ready(workers=1)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        first = request(connection, "GET", "/hello")
        connection.request("GET", "/hold/running")
        wait_until(lambda: server.events("entered"), 20, "the request in flight")
        server.signal(signal.SIGTERM)
        wait_until(lambda: server.callbacks("before_shutdown"), 20, "the stop to begin")
        server.release("running")
        held = connection.getresponse()
        held.read()
    finally:
        connection.close()
    expected_first = "close" if worker_class == "sync" else "keep-alive"
    assert (first.status, first.getheader("Connection")) == (200, expected_first)
    assert (held.status, held.getheader("Connection")) == (200, "close")
    assert server.wait_exit(30) == 0


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_connections_waiting_in_the_backlog_are_served(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. two workers; 8 slow requests at once (two sync workers serve 2 of
    them, the other 6 wait in the kernel's listen backlog) 2. SIGTERM the
    master 3. the requests end.

    Result: all 8 complete with 200 (plain gunicorn resets the 6 queued), and
    the summary counts 8 drained (it counted only those in flight at the stop).
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class), "--graceful-timeout", "20", APP])
    server.wait_ready(workers=2)
    keys = [f"q{i}" for i in range(8)]
    connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for _ in keys]
    for connection, key in zip(connections, keys, strict=True):
        # Returns once connected and sent: from here on the request waits in a
        # worker or in the kernel's listen backlog, however busy the machine is.
        connection.request("GET", f"/hold/{key}")
    # A gthread worker may queue more connections than it has threads.
    wait_until(lambda: len(server.events("entered")) >= 2, 10, "requests in flight")
    server.signal(signal.SIGTERM)
    wait_until(lambda: len(server.callbacks("before_shutdown")) == 2, 10, "the stop")
    for key in keys:
        server.release(key)
    assert server.wait_exit(30) == 0
    results: list[int | str] = []
    for connection in connections:
        try:
            results.append(request_status(connection))
        except (OSError, http.client.HTTPException) as exc:
            results.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()
    assert results == [200] * 8
    summary = server.log().split("shutdown summary")[1]
    assert "8 request(s) drained, 0 abandoned" in summary, server.log()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_reloads_and_recycling_under_load_fail_no_request(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. 8 keep-alive clients send requests all along 2. SIGHUP three times,
    each once the new workers serve 3. then max_requests=50 recycling (a
    second server) for the same length of load.

    Result: no request fails in either server.
    """
    failures = {}
    server = gunicorn([*GRACEFUL, *worker_args(worker_class), APP])
    server.wait_ready(workers=2)
    load = Load(server.port, "/hello", connections=8, max_seconds=60).start()
    for reload in range(1, 4):
        server.signal(signal.SIGHUP)
        wait_until(
            lambda n=reload: len(server.callbacks("after_shutdown")) >= 2 * n,
            30,
            f"reload {reload}",
        )
        print(f"reload {reload} done after {load.result.sent} requests")
    reloads = load.stop()
    failures["reload"] = (reloads.sent, reloads.failed, dict(reloads.errors))

    recycler = gunicorn([*GRACEFUL, *worker_args(worker_class), "--max-requests", "50", APP])
    recycler.wait_ready(workers=2)
    load = Load(recycler.port, "/hello", connections=8, max_seconds=60).start()
    first = {e["pid"] for e in server.callbacks()}  # both servers share the events file

    def recycled() -> list[dict[str, object]]:
        return [e for e in recycler.callbacks("after_shutdown") if e["pid"] not in first]

    wait_until(lambda: len(recycled()) >= 10, 60, "10 recycles")
    recycles = load.stop()
    failures["recycle"] = (recycles.sent, recycles.failed, dict(recycles.errors))

    print(f"{worker_class}: (sent, failed, errors) {failures}")
    assert failures["reload"][1:] == (0, {})
    assert failures["recycle"][1:] == (0, {})
    assert {e["reason"] for e in recycled()} == {"recycle"}
    # Each recycle ended once its replacement was ready, never at the timeout
    # (a replacement at max_requests before the master saw it ready once held it).
    assert "stops anyway" not in recycler.log()


def test_steady_traffic_does_not_hold_a_stopping_sync_worker(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. two sync workers under a steady load of new connections (no shutdown_delay,
    no load balancer to stop it) 2. SIGTERM.

    Result: each worker serves what was queued when it stopped, not what keeps
    arriving (plain gunicorn serves none of it): on_shutdown begins within a few
    seconds, not at the drain deadline (23 s here).
    """
    server = gunicorn([*GRACEFUL, *worker_args("sync"), APP])
    server.wait_ready(workers=2)
    load = Load(server.port, "/hello", connections=8, max_seconds=40).start()
    wait_until(lambda: load.result.sent > 200, 20, "the load to run")
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    wait_until(lambda: len(server.callbacks("on_shutdown")) >= 4, 40, "both workers' on_shutdown")
    load.stop()
    assert server.wait_exit(30) == 0
    began = max(float(e["t"]) for e in server.callbacks("on_shutdown")) - signalled
    print(f"on_shutdown began {began:.2f}s after SIGTERM under steady traffic")
    assert began < 5, f"{began:.1f}s"
