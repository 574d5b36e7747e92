"""Each assumption about gunicorn's internals, checked against the gunicorn installed.

``graceful_gunicorn._gunicorn.compat`` names every gunicorn internal and version
difference the package relies on; each test here checks one against the
installed gunicorn's code or behaviour, so that the tox matrix runs them on
every gunicorn version and a release that changes one fails here, by name.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import selectors
import socket
from functools import partial
from types import SimpleNamespace

import gunicorn
import pytest
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import Response
from gunicorn.workers import base as worker_base
from gunicorn.workers import gthread

from graceful_gunicorn._gunicorn import compat


def _source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def test_version_is_gunicorns() -> None:
    assert compat.VERSION == tuple(gunicorn.version_info)
    assert compat.VERSION[:2] == tuple(int(p) for p in gunicorn.__version__.split(".")[:2])


def test_master_quick_limit_is_what_arbiter_stop_waits_after_a_quick_signal() -> None:
    stop = _source(Arbiter.stop)
    if compat.MASTER_QUICK_LIMIT is None:
        assert "SIG_QUEUE" not in stop  # deaf: reads no signal while it waits
        assert compat.MASTER_DEAF_WHILE_STOPPING
        return
    assert not compat.MASTER_DEAF_WHILE_STOPPING
    quick = stop[stop.index("Quick shutdown requested") :]
    found = re.search(r"limit = time\.time\(\) \+ ([0-9.]+)", quick)
    assert found is not None, "Arbiter.stop no longer sets a limit after a quick signal"
    assert float(found.group(1)) == compat.MASTER_QUICK_LIMIT
    assert "kill_workers(signal.SIGQUIT)" in quick


def test_gthread_drops_polled_connections_when_it_has_no_drain_loop() -> None:
    run = _source(gthread.ThreadWorker.run)
    has_drain_loop = "while self.nr_conns > 0" in run
    assert compat.GTHREAD_DROPS_POLLED_CONNECTIONS == (not has_drain_loop)
    assert compat.GTHREAD_DROPS_POLLED_CONNECTIONS == (not hasattr(gthread, "PollableMethodQueue"))


def test_gthread_holds_idle_keepalive_when_its_drain_does_not_force_them_closed() -> None:
    run = _source(gthread.ThreadWorker.run)
    holds = "while self.nr_conns > 0" in run and "murder_keepalived(force=True)" not in run
    assert compat.GTHREAD_HOLDS_IDLE_KEEPALIVE == holds


def test_gthread_closes_announced_keepalive_when_finish_request_asks_alive() -> None:
    finish = _source(gthread.ThreadWorker.finish_request)
    asks_alive = re.search(r"(keepalive|result) and self\.alive:", finish) is not None
    assert compat.GTHREAD_CLOSES_ANNOUNCED_KEEPALIVE == asks_alive


def _response() -> Response:
    cfg = Config()
    parser = RequestParser(cfg, [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], ("127.0.0.1", 1))
    return Response(next(parser), None, cfg)


def test_close_after_response_makes_gunicorns_response_close_its_connection() -> None:
    response = _response()
    response.start_response("200 OK", [("Content-Length", "0")])
    assert compat.response_of(response.start_response) is response
    assert not response.should_close()  # HTTP/1.1: kept alive
    compat.close_after_response(response.start_response)
    assert response.should_close()


def test_close_after_response_leaves_a_start_response_that_is_not_gunicorns() -> None:
    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        pass

    assert compat.response_of(start_response) is None
    compat.close_after_response(start_response)  # no error


def test_setting_and_set_graceful_timeout() -> None:
    # The drains read it from the config when they start, not a copy made earlier.
    assert "self.cfg.graceful_timeout" in _source(gthread.ThreadWorker.run)
    cfg = Config()
    assert compat.setting(cfg, "graceful_timeout") == cfg.graceful_timeout == 30
    compat.set_graceful_timeout(cfg, 1.5)
    assert cfg.graceful_timeout == 1.5
    assert compat.setting(cfg, "graceful_timeout") == 1.5


def test_wake_worker_writes_to_the_pipe_gunicorns_loops_wait_on() -> None:
    init_process = _source(worker_base.Worker.init_process)
    assert "self.PIPE = os.pipe()" in init_process
    assert "self.PIPE[0]" in init_process  # in wait_fds, beside the listeners
    read, write = os.pipe()
    try:
        compat.wake_worker(SimpleNamespace(PIPE=(read, write)))
        assert os.read(read, 1) == b"."
    finally:
        os.close(read)
        os.close(write)
    compat.wake_worker(SimpleNamespace(PIPE=(read, write)))  # closed: no error


def test_polled_connections_are_the_partials_arguments() -> None:
    if compat.GTHREAD_DROPS_POLLED_CONNECTIONS:
        source = inspect.getsource(gthread)
        assert re.search(
            r"partial\(self\.(on_client_socket_readable|reuse_connection), conn\)", source
        )
    poller = selectors.DefaultSelector()
    listener, conn_sock = socket.socketpair()
    try:
        conn = object()
        poller.register(listener, selectors.EVENT_READ, partial(print, None))
        poller.register(conn_sock, selectors.EVENT_READ, partial(print, conn))
        assert conn in compat.polled_connections(poller)
        assert len(compat.polled_connections(poller)) == 2  # the caller filters TConn
    finally:
        poller.close()
        listener.close()
        conn_sock.close()


@pytest.mark.skipif(
    not hasattr(gthread, "PollableMethodQueue"), reason="gunicorn before 24 has no method queue"
)
def test_guard_method_queue_never_writes_once_closed() -> None:
    queue = gthread.PollableMethodQueue()
    queue.init()
    defer = compat.guard_method_queue(queue)
    called: list[int] = []
    defer(called.append, 1)
    queue.run_callbacks(None)
    assert called == [1]
    queue.close()
    reused_read, reused_write = os.pipe()  # most likely the numbers just freed
    try:
        os.set_blocking(reused_read, False)
        defer(called.append, 2)
        with pytest.raises(BlockingIOError):
            os.read(reused_read, 1)
    finally:
        os.close(reused_read)
        os.close(reused_write)
    compat.replace_method_queue_defer(queue, defer)
    assert queue.defer is defer
    assert "self.method_queue.defer(" in inspect.getsource(gthread)
    # The guard learns of the end through close(): the loop must close it so.
    assert "self.method_queue.close()" in _source(gthread.ThreadWorker.run)


def test_replace_gevent_of_ggevent_is_what_its_loop_sleeps_through() -> None:
    pytest.importorskip("gevent")
    from gunicorn.workers import ggevent

    assert "gevent.sleep(" in _source(ggevent.GeventWorker.run)
    # Its drain reads graceful_timeout from the config (set_graceful_timeout).
    assert "self.cfg.graceful_timeout" in _source(ggevent.GeventWorker.run)
    original = ggevent.gevent  # type: ignore[attr-defined]
    replacement = SimpleNamespace()
    try:
        compat.replace_gevent_of_ggevent(replacement)
        assert ggevent.gevent is replacement  # type: ignore[attr-defined]
    finally:
        ggevent.gevent = original  # type: ignore[attr-defined]


def test_replace_handlers_wins_because_gunicorn_calls_them_through_self() -> None:
    assert '"handle_%s" % signame' in _source(Arbiter.run)
    arbiter_source = inspect.getsource(Arbiter)
    for name in ("murder_workers", "reap_workers", "kill_workers", "kill_worker", "spawn_worker"):
        assert f"self.{name}(" in arbiter_source, name
    arbiter = Arbiter.__new__(Arbiter)
    compat.replace_handlers(arbiter, {"handle_hup": len})
    assert arbiter.handle_hup is len
    assert Arbiter.handle_hup is not len


#: The graceful workers' own names: not gunicorn's, so not in WORKER_INTERNALS.
_OURS = {
    "graceful_gunicorn_worker",
    "stop_serving",
    "wake_main_loop",
    "interrupt_main",
    "serve_backlog",
    "release_idle_connections",
    "request_frames",
}


def _gunicorn_class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def _instance(cls: type) -> object:
    log = SimpleNamespace()
    worker = cls(1, os.getpid(), [], None, 30, Config(), log)
    worker.tmp.close()
    return worker


@pytest.mark.parametrize("dotted", sorted(compat.WORKER_INTERNALS))
def test_worker_internals_exist_on_the_gunicorn_installed(dotted: str) -> None:
    """Each method the graceful workers override and each attribute they read is
    still there: a gunicorn that renames one fails here, not in a scenario."""
    if dotted.endswith("GeventWorker"):
        pytest.importorskip("gevent")
    worker = _instance(_gunicorn_class(dotted))
    missing = [name for name in compat.WORKER_INTERNALS[dotted] if not hasattr(worker, name)]
    assert missing == [], f"{dotted} has no {missing} on gunicorn {gunicorn.__version__}"


def test_worker_internals_name_every_override() -> None:
    """Every name a graceful worker class defines is its own or listed in
    WORKER_INTERNALS under a gunicorn class it derives from."""
    from graceful_gunicorn._gunicorn.workers.base import GracefulWorkerMixin
    from graceful_gunicorn._gunicorn.workers.gthread import GracefulThread
    from graceful_gunicorn._gunicorn.workers.sync import GracefulSync

    classes: list[type] = [GracefulSync, GracefulThread]
    if importlib.util.find_spec("gevent") is not None:
        from graceful_gunicorn._gunicorn.workers.ggevent import GracefulGevent

        classes.append(GracefulGevent)
    unlisted: list[str] = []
    for cls in classes:
        listed = {
            name
            for dotted, names in compat.WORKER_INTERNALS.items()
            if issubclass(cls, _gunicorn_class(dotted))
            for name in names
        }
        for own in (cls, GracefulWorkerMixin):
            for name in vars(own):
                private = name.startswith("_") and name not in listed
                if name in _OURS or private or name in listed:
                    continue
                unlisted.append(f"{own.__name__}.{name}")
    assert unlisted == []


@pytest.mark.parametrize("module", ["sync", "gthread", "base_async"])
def test_max_requests_stops_the_worker_only_in_the_methods_named(module: str) -> None:
    """The graceful workers serve on at max_requests only when ``alive = False``
    comes from these methods: a gunicorn that moves it fails here."""
    source = inspect.getsource(importlib.import_module(f"gunicorn.workers.{module}"))
    stopping = [
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef)
        and "self.max_requests" in ast.unparse(node)
        and any(
            isinstance(sub, ast.Assign)
            and ast.unparse(sub) == "self.alive = False"
            and "max_requests" in ast.unparse(node)
            for sub in ast.walk(node)
        )
        and not any(isinstance(sub, ast.FunctionDef) and sub is not node for sub in ast.walk(node))
    ]
    assert stopping, f"gunicorn.workers.{module} no longer stops at max_requests"
    assert set(stopping) <= compat.MAX_REQUESTS_STOPS_IN, stopping


def test_listeners_die_with_server_mirrors_gunicorns_own_unlink_condition() -> None:
    """gunicorn's stop() unlinks a unix socket's file on the condition that the
    listeners are the master's alone; ours is the same."""
    stop = _source(Arbiter.stop)
    assert "self.reexec_pid == self.master_pid == 0" in stop
    assert "not self.systemd" in stop and "self.cfg.reuse_port" in stop
    cfg = SimpleNamespace(reuse_port=False, bind=["127.0.0.1:8000", "unix:/run/app.sock"])
    arbiter = SimpleNamespace(reexec_pid=0, master_pid=0, systemd=False, cfg=cfg)
    assert compat.listeners_die_with_server(arbiter)
    for name, value in (("reexec_pid", 7), ("master_pid", 7), ("systemd", True)):
        shared = SimpleNamespace(**{**vars(arbiter), name: value})
        assert not compat.listeners_die_with_server(shared)
    cfg.bind = ["127.0.0.1:8000", "fd://3"]  # a parent process's socket
    assert not compat.listeners_die_with_server(arbiter)
    cfg.bind, cfg.reuse_port = ["127.0.0.1:8000"], True
    assert not compat.listeners_die_with_server(arbiter)


def test_reload_waits_for_old_workers_when_its_source_has_the_wait_loop() -> None:
    reload = _source(Arbiter.reload)
    waits = "last_worker_age" in reload and "self.reap_workers()" in reload
    assert compat.RELOAD_WAITS_FOR_OLD_WORKERS == waits
    # Both: the old workers' SIGTERMs come from manage_workers, through kill_worker.
    assert "self.manage_workers()" in reload
    assert "self.kill_worker(pid, signal.SIGTERM)" in _source(Arbiter.manage_workers)


def test_load_wsgi_sets_the_app_that_the_mixin_reads_after_it() -> None:
    assert "self.wsgi = self.app.wsgi()" in _source(worker_base.Worker.load_wsgi)


#: The attributes the graceful workers add to gunicorn's worker objects.
_ADDED = {
    "shutdown",
    "generation",
    "reload_gated",
    "flags",
    "_alive",
    # GracefulThread
    "_serving",
    "_finishing",
    "_lingered",
    "_linger_until",
    "_defer_while_open",
    # GracefulGevent
    "_connections",
    "_stop_requested",
    "_listener_names",
    "_stopped_at",
    "_close_idle_by",
}


def _graceful_classes() -> list[tuple[type, type]]:
    from gunicorn.workers.sync import SyncWorker

    from graceful_gunicorn._gunicorn.workers.gthread import GracefulThread
    from graceful_gunicorn._gunicorn.workers.sync import GracefulSync

    pairs: list[tuple[type, type]] = [
        (GracefulSync, SyncWorker),
        (GracefulThread, gthread.ThreadWorker),
    ]
    if importlib.util.find_spec("gevent") is not None:
        from gunicorn.workers.ggevent import GeventWorker

        from graceful_gunicorn._gunicorn.workers.ggevent import GracefulGevent

        pairs.append((GracefulGevent, GeventWorker))
    return pairs


@pytest.mark.parametrize(("ours", "theirs"), _graceful_classes(), ids=lambda c: c.__name__)
def test_the_attributes_the_graceful_workers_add_are_not_gunicorns(
    ours: type, theirs: type
) -> None:
    """A gunicorn that gains a ``shutdown`` method (or any name we add) fails here:
    ours would hide it. The list is complete: every attribute our workers set is in it."""
    mine, gunicorns = _instance(ours), _instance(theirs)
    added = set(vars(mine)) - set(vars(gunicorns))
    assert added <= _ADDED, f"add {sorted(added - _ADDED)} to _ADDED"
    taken = sorted(n for n in _ADDED if n in vars(gunicorns) or hasattr(theirs, n))
    assert taken == [], f"gunicorn {gunicorn.__version__} has {taken} of its own"
