"""Every gunicorn internal graceful_gunicorn relies on, and every version difference.

Each name below says what it relies on, in which gunicorn versions and where
in gunicorn's source; ``tests/test_compat.py`` checks each against the
gunicorn installed, in every environment of the tox matrix, so that a gunicorn
release that breaks an assumption fails a test named after it, not a timing
scenario. What the graceful workers override or read as subclasses of
gunicorn's is named in :data:`WORKER_INTERNALS`; the test checks that each
exists on the gunicorn installed, that no override is missing from it, and
that none of the attributes the graceful workers add is gunicorn's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import gunicorn

#: The gunicorn installed, as ``(major, minor, ...)``.
VERSION: tuple[int, ...] = tuple(gunicorn.version_info)

#: What the graceful workers override in gunicorn's worker classes, or read from
#: them, by the class that defines it (gunicorn/workers/base.py, sync.py,
#: gthread.py, ggevent.py; an instance's attributes are set in ``__init__``,
#: but for ``wsgi``, which ``Worker.load_wsgi`` sets and the mixin reads after it).
#: gthread's lock guards its poller before 24; from 24 on, a method queue
#: (``PollableMethodQueue``) hands work to its main loop instead, and the
#: kept-alive connections are ``keepalived_conns`` (``_keep`` before).
WORKER_INTERNALS: dict[str, tuple[str, ...]] = {
    "gunicorn.workers.base.Worker": (
        "init_signals",
        "load_wsgi",
        "run",
        "notify",
        "handle_exit",
        "handle_quit",
        "handle_abort",
        "alive",
        "age",
        "cfg",
        "log",
        "sockets",
        "tmp",
    ),
    "gunicorn.workers.sync.SyncWorker": ("handle",),
    "gunicorn.workers.gthread.ThreadWorker": (
        "run",
        "finish_request",
        "murder_keepalived",
        "nr_conns",
        "poller",
        *(("_lock",) if VERSION < (24, 0) else ("method_queue", "keepalived_conns")),
    ),
    "gunicorn.workers.ggevent.GeventWorker": (
        "run",
        "load_wsgi",
        "notify",
        "handle",
        "timeout_ctx",
    ),
}

#: The worker methods in which gunicorn sets ``alive = False`` on ``max_requests``
#: (workers/sync.py, gthread.py and base_async.py ``handle_request``; 25+ also
#: ``handle_http2_request``); elsewhere it means another stop.
MAX_REQUESTS_STOPS_IN = frozenset({"handle_request", "handle_http2_request"})

#: gunicorn 24+ waits inside ``Arbiter.reload`` for the old workers to exit, up to
#: ``graceful_timeout``, reaping every 0.1 s, before its loop runs again
#: (arbiter.py ``reload``: "wait for old workers to terminate"); earlier ones return.
RELOAD_WAITS_FOR_OLD_WORKERS = VERSION >= (24, 0)


def make_newest(server: Any, pids: list[int]) -> None:
    """Make the workers ``pids`` the newest of ``server``, in their order.

    gunicorn tells old from new workers by ``age``, its spawn counter: on too
    many workers it stops the lowest ages first (arbiter.py ``manage_workers``),
    and 24+ ends its reload's wait when every worker is newer than the reload
    (``reload``: ``oldest > last_worker_age``). After a failed reload the old
    workers are the server again: given the newest ages, they are the ones kept,
    and gunicorn's wait ends. All versions.
    """
    for pid in pids:
        worker = server.WORKERS.get(pid)
        if worker is not None:
            server.worker_age += 1
            worker.age = server.worker_age


def listeners_die_with_server(server: Any) -> bool:
    """Whether the master's listening sockets end with it: not inherited from
    systemd or from a parent process (``--bind fd://N``), not shared with a
    master of a binary upgrade (``USR2``), not given to each worker
    (``reuse_port``, 27+). gunicorn unlinks a unix socket's file on the same
    condition, but for ``fd://`` (arbiter.py ``stop``, every version)."""
    return (
        server.reexec_pid == server.master_pid == 0
        and not server.systemd
        and not server.cfg.reuse_port
        and not any(str(address).startswith("fd://") for address in server.cfg.bind)
    )


def make_oldest(server: Any, pid: int) -> None:
    """Make worker ``pid`` the oldest of ``server``: with one worker too many,
    gunicorn stops the lowest ``age`` first (arbiter.py ``manage_workers``, every
    version; see :func:`make_newest`)."""
    worker = server.WORKERS.get(pid)
    if worker is not None:
        # A copy first: gunicorn < 24 reaps in its SIGCHLD handler (arbiter.py
        # handle_chld), which may run while a generator walks the dict.
        worker.age = min(w.age for w in list(server.WORKERS.values())) - 1


#: gunicorn 25+ reads SIGINT/SIGQUIT while its master waits for the workers in
#: ``Arbiter.stop`` ("Quick shutdown requested"), passes SIGQUIT on and SIGKILLs
#: the workers this many seconds later (arbiter.py ``stop``: ``limit =
#: time.time() + 2.0``); earlier masters keep ``graceful_timeout``: ``None``.
MASTER_QUICK_LIMIT: float | None = 2.0 if VERSION >= (25, 0) else None

#: gunicorn before 25 reads no signal while its master waits in ``Arbiter.stop``:
#: a SIGINT/SIGQUIT during a graceful stop never reaches the workers.
MASTER_DEAF_WHILE_STOPPING = MASTER_QUICK_LIMIT is None

#: gunicorn before 24 leaves the gthread loop as soon as ``alive`` is False and
#: drops the connections still in its poller: accepted but not yet readable
#: (21-23) and idle keep-alive ones, which are reset at exit (workers/gthread.py
#: ``ThreadWorker.run``; 24 added ``PollableMethodQueue`` and a drain loop).
GTHREAD_DROPS_POLLED_CONNECTIONS = VERSION < (24, 0)

#: gunicorn 24-26 drain the gthread worker without heartbeats and wait for idle
#: keep-alive connections until ``graceful_timeout``: their ``run()`` only
#: murders them after a blocking select (27 closes them, ``murder_keepalived(force=True)``).
GTHREAD_HOLDS_IDLE_KEEPALIVE = (24, 0) <= VERSION < (27, 0)

#: gunicorn before 27 closes a connection whose response announced keep-alive if
#: the worker stopped during the request (workers/gthread.py ``finish_request``:
#: ``keepalive and self.alive``, 26: ``result and self.alive``). A recycle stops
#: it in the middle of other threads' requests, and their clients, already
#: sending the next request, get a reset.
GTHREAD_CLOSES_ANNOUNCED_KEEPALIVE = VERSION < (27, 0)

#: gunicorn before 23 has known HTTP request-smuggling vulnerabilities (fixed in
#: 22.0 and 23.0).
KNOWN_REQUEST_SMUGGLING = VERSION < (23, 0)


def response_of(start_response: Any) -> Any | None:
    """The gunicorn response a WSGI ``start_response`` belongs to, or ``None``.

    gunicorn passes its response's bound method ``Response.start_response``
    (http/wsgi.py, every version); anything else (a test client's) has none.
    """
    return getattr(start_response, "__self__", None)


def close_after_response(start_response: Any) -> None:
    """Make gunicorn close this request's connection after its response.

    gunicorn drops a ``Connection`` header set by the app; its response's
    ``force_close()`` (http/wsgi.py ``Response``, every version) does it.
    """
    force_close = getattr(response_of(start_response), "force_close", None)
    if force_close is not None:
        force_close()


def setting(cfg: Any, name: str) -> Any:
    """The value of gunicorn setting ``name`` in ``cfg``, as validated
    (config.py ``Config.settings[name].get()``, every version)."""
    return cfg.settings[name].get()


def set_graceful_timeout(cfg: Any, seconds: float) -> None:
    """Set ``cfg.graceful_timeout`` in this process, past validation.

    The gthread and gevent workers read ``self.cfg.graceful_timeout`` when their
    own drain starts, after their loop (workers/gthread.py and
    workers/ggevent.py ``run``, every version); the sync worker has no drain.
    The worker's copy of the config belongs to its process alone.
    """
    cfg.settings["graceful_timeout"].value = seconds


def wake_worker(worker: Any) -> None:
    """Wake a worker's loop from its ``select()``: one byte to ``worker.PIPE``,
    the pipe gunicorn's loops wait on beside the listeners (workers/base.py
    ``Worker.init_process``, every version). A closed pipe is no error."""
    try:
        os.write(worker.PIPE[1], b".")
    except OSError:
        pass


def polled_connections(poller: Any) -> list[Any]:
    """The connections registered in a gthread worker's poller (gunicorn before 24).

    Each one is registered with ``partial(self.on_client_socket_readable, conn)``
    (21-23: workers/gthread.py ``accept`` and ``finish_request``) or
    ``partial(self.reuse_connection, conn)`` (20.1: ``finish_request``) as its
    data; the listeners' is ``partial(self.accept, server)``, whose argument is
    no connection.
    """
    return [
        key.data.args[0]
        for key in poller.get_map().values()
        if isinstance(key.data, partial) and key.data.args
    ]


def guard_method_queue(queue: Any) -> Callable[..., None]:
    """A ``defer`` for gunicorn 24+'s gthread method queue that never writes once
    the queue is closed; the queue's ``close`` is wrapped to say so.

    ``PollableMethodQueue`` (workers/gthread.py, 24 and newer) is a pipe that
    ``ThreadWorker.run`` closes when its loop ends, and ``defer`` writes to it:
    a write after that lands in whatever file or socket reuses the descriptor.
    """
    lock = threading.RLock()  # reentrant: gunicorn's handle_exit defers in signal context
    close, defer = queue.close, queue.defer
    closed = False

    def close_for_good() -> None:
        nonlocal closed
        with lock:
            closed = True
            close()

    def defer_while_open(callback: Any, *args: Any) -> None:
        with lock:
            if not closed:
                defer(callback, *args)

    queue.close = close_for_good
    return defer_while_open


def replace_method_queue_defer(queue: Any, defer: Callable[..., None]) -> None:
    """Make gunicorn 24+'s gthread worker defer through ``defer``: it calls
    ``self.method_queue.defer`` through the instance (workers/gthread.py)."""
    queue.defer = defer


def replace_gevent_of_ggevent(replacement: object) -> None:
    """Make gunicorn's gevent worker module use ``replacement`` as its ``gevent``.

    ``GeventWorker.run`` calls ``gevent.sleep(1.0)`` through the module global
    ``gevent`` of workers/ggevent.py (every version), between looks at ``alive``.
    """
    from gunicorn.workers import ggevent

    ggevent.gevent = replacement  # type: ignore[attr-defined]


def replace_handlers(arbiter: Any, handlers: dict[str, Callable[..., Any]]) -> None:
    """Replace methods of one ``Arbiter`` by instance attributes.

    gunicorn dispatches a queued signal to ``getattr(self, "handle_%s" %
    signame)`` from its main loop (arbiter.py ``Arbiter.run``), and calls
    ``spawn_worker``, ``murder_workers``, ``reap_workers``, ``kill_workers`` and
    ``kill_worker`` through ``self`` (every version), so attributes of the
    instance win.
    """
    for name, method in handlers.items():
        setattr(arbiter, name, method)


__all__ = [
    "GTHREAD_CLOSES_ANNOUNCED_KEEPALIVE",
    "GTHREAD_DROPS_POLLED_CONNECTIONS",
    "GTHREAD_HOLDS_IDLE_KEEPALIVE",
    "KNOWN_REQUEST_SMUGGLING",
    "MASTER_DEAF_WHILE_STOPPING",
    "MASTER_QUICK_LIMIT",
    "MAX_REQUESTS_STOPS_IN",
    "RELOAD_WAITS_FOR_OLD_WORKERS",
    "VERSION",
    "WORKER_INTERNALS",
    "close_after_response",
    "guard_method_queue",
    "listeners_die_with_server",
    "make_newest",
    "make_oldest",
    "polled_connections",
    "replace_gevent_of_ggevent",
    "replace_handlers",
    "replace_method_queue_defer",
    "response_of",
    "set_graceful_timeout",
    "setting",
    "wake_worker",
]
