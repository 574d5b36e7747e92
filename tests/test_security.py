"""Security: what the package exposes, what it shares between processes, what it writes.

The real-process tests start gunicorn on 127.0.0.1; the others check the
files and the code the package uses between master and workers.
"""

from __future__ import annotations

import ast
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import graceful_gunicorn
from graceful_gunicorn._gunicorn import worker_reports
from graceful_gunicorn._gunicorn.process_state import STATE

from .scenarios import (
    APP,
    GRACEFUL,
    assert_each_callback_ran_once,
    exchange,
    status_of,
    worker_args,
)
from .server import Gunicorn, http_get

READY = "/-/ready"
PACKAGE = Path(graceful_gunicorn.__file__).parent

#: Headers a readiness answer may carry: ours, and gunicorn's own.
ALLOWED_HEADERS = {
    "content-type",
    "content-length",
    "cache-control",
    "allow",
    "server",
    "date",
    "connection",
}


def split_response(raw: bytes) -> tuple[int | None, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_of(raw), headers, body


def test_readiness_reveals_nothing_and_no_request_changes_the_shutdown(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. readiness_path is set 2. requests with every method, look-alike paths
    and headers that try to steer a shutdown 3. SIGTERM.

    Result: the readiness answer is a status and one word, with no header of
    its own beyond type, length and cache control; other methods get 405,
    look-alike paths reach the app; no request starts a shutdown, and the
    SIGTERM runs every callback once, in order, with reason "terminate".
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args("gthread", workers=1), APP],
        {"GRACEFUL_READINESS_PATH": READY},
    )
    server.wait_ready(workers=1)
    port = server.port
    steer = (
        "X-Graceful-Shutdown: now\r\nX-Shutdown-Reason: quick\r\n"
        "X-Shutdown-Timeout: 0\r\nConnection: close\r\n"
    )

    status, headers, body = split_response(
        exchange(port, f"GET {READY} HTTP/1.1\r\nHost: t\r\n{steer}\r\n".encode())
    )
    assert (status, body) == (200, b"ready\n")
    assert set(headers) <= ALLOWED_HEADERS, headers
    assert headers["cache-control"] == "no-store"
    assert "graceful" not in str(headers).lower()

    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "SHUTDOWN"]:
        request = f"{method} {READY} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n{steer}\r\n"
        status, headers, body = split_response(exchange(port, request.encode()))
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD"
        assert len(body) < 32

    for path in [READY + "/", READY.upper(), READY + "/../x", "/" + READY, READY + "%00"]:
        request = f"GET {path} HTTP/1.1\r\nHost: t\r\n{steer}\r\n"
        status, _, body = split_response(exchange(port, request.encode()))
        assert status in (400, 404), path
        assert b"ready" not in body

    assert server.callbacks() == []
    assert http_get(port, "/hello").status == 200

    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    assert_each_callback_ran_once(server)
    assert [e["name"] for e in server.callbacks()] == ["b1", "o2", "o1", "a1"]
    assert {e["reason"] for e in server.callbacks()} == {"terminate"}


# -- sockets --------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _listening_sockets(pids: list[int]) -> set[str]:
    """Listening TCP/UDP/unix sockets that ``pids`` hold, as "proto address"."""
    inodes = set().union(*(_socket_inodes(pid) for pid in pids))
    found = set()
    for proto in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(f"{proto} {fields[1]}")
    for proto in ("udp", "udp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.add(f"{proto} {fields[1]}")
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        # flags 00010000: __SO_ACCEPTCON, a listening unix socket
        if fields[6] in inodes and fields[3] == "00010000":
            found.add(f"unix {fields[7] if len(fields) > 7 else '(unnamed)'}")
    return found


def _sockets_of_a_running_server(
    gunicorn: Callable[..., Gunicorn], args: list[str]
) -> tuple[set[str], set[str]]:
    """(TCP listeners, other listeners) of a master with two gthread workers."""
    server = gunicorn([*args, *worker_args("gthread", workers=2), APP])
    server.wait_ready(workers=2)
    found = _listening_sockets([server.pid, *server.worker_pids()])
    # How it stops is not the subject here: plain gunicorn 27's gthread worker can
    # hang in its own quick exit, and its master then waits graceful_timeout.
    server.stop()
    tcp = {entry for entry in found if entry.startswith("tcp")}
    # gunicorn 27's own control socket is started by a thread of the master
    # some time after the workers: whether it is seen yet is a race.
    control = {entry for entry in found if entry.endswith("/gunicorn.ctl")}
    return tcp, found - tcp - control


def test_no_new_listening_socket(gunicorn: Callable[..., Gunicorn]) -> None:
    """1. plain gunicorn, then gunicorn with graceful_gunicorn, same settings.

    Result: both listen on exactly one TCP port, the bound one, and on the
    same other sockets, apart from the control socket gunicorn 27 adds
    itself (at ``~/.gunicorn/gunicorn.ctl``, with or without this package).
    """
    plain_tcp, plain_other = _sockets_of_a_running_server(gunicorn, [])
    ours_tcp, ours_other = _sockets_of_a_running_server(gunicorn, GRACEFUL)
    assert len(plain_tcp) == len(ours_tcp) == 1
    assert ours_other == plain_other


# -- what master and workers share -------------------------------------------------


def _imports(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def _called_names(tree: ast.AST) -> Iterator[str]:
    """``f`` for ``f(...)``, ``a.f`` for ``a.f(...)`` and ``x.f`` for ``a.b.f(...)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                yield node.func.id
            elif isinstance(node.func, ast.Attribute):
                owner = node.func.value
                yield f"{owner.id if isinstance(owner, ast.Name) else 'x'}.{node.func.attr}"


#: Calls that would make a socket, or make one listen.
SOCKET_MAKERS = {
    "socket.socket",
    "socket.socketpair",
    "socket.create_server",
    "socket.create_connection",
    "socket.fromfd",
    "x.bind",
    "x.listen",
}


def test_no_code_executing_format_and_no_new_socket_in_the_package() -> None:
    """No pickle (nor multiprocessing, which pickles), marshal, shelve, eval or
    exec anywhere in the package's code, and no call that makes a socket (the
    gevent worker uses the socket module only on gunicorn's connections)."""
    forbidden_modules = {"pickle", "marshal", "shelve", "dill", "cloudpickle"}
    forbidden_prefixes = ("multiprocessing", "xmlrpc", "socketserver")
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        modules = set(_imports(tree))
        assert not modules & forbidden_modules, path
        assert not [m for m in modules if m.startswith(forbidden_prefixes)], path
        calls = {name.replace("self.", "x.") for name in _called_names(tree)}
        calls |= {"x." + name.split(".", 1)[1] for name in calls if "." in name}
        assert not {"eval", "exec"} & calls, path
        assert not SOCKET_MAKERS & calls, path


def test_shared_state_is_anonymous_memory(gunicorn: Callable[..., Gunicorn]) -> None:
    """A worker maps no file under a world-writable folder: the master's state
    is anonymous shared memory, created before the fork."""
    server = gunicorn([*GRACEFUL, *worker_args("sync", workers=1), APP])
    server.wait_ready(workers=1)
    [worker] = server.worker_pids()
    maps = Path(f"/proc/{worker}/maps").read_text().splitlines()
    mapped = {line.split(maxsplit=5)[5] for line in maps if len(line.split(maxsplit=5)) == 6}
    # the Python environment's own libraries may live anywhere (tox: under /tmp)
    environment = (sys.prefix, sys.base_prefix, sys.exec_prefix)
    public = [
        p
        for p in mapped
        if p.startswith(("/tmp", "/dev/shm", "/var/tmp")) and not p.startswith(environment)
    ]
    assert public == []
    assert any(p.startswith("/dev/zero") for p in mapped)  # MAP_SHARED | MAP_ANONYMOUS


@pytest.fixture
def report_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(STATE, "report_folder", None)
    folder = worker_reports.create()
    try:
        yield folder
    finally:
        worker_reports.remove()


def test_report_folder_is_private_and_unpredictable(report_folder: str) -> None:
    info = os.stat(report_folder)
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    name = Path(report_folder).name
    assert name.startswith("graceful_gunicorn-")
    assert len(name) >= len("graceful_gunicorn-") + 8  # mkdtemp's random part


def test_worker_report_is_owner_only_and_never_follows_a_symlink(
    report_folder: str, tmp_path: Path
) -> None:
    worker_reports.write({"pid": os.getpid()})
    mine = Path(report_folder) / f"{os.getpid()}.json"
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600
    mine.unlink()

    target = tmp_path / "target"
    target.write_text("untouched")
    mine.symlink_to(target)
    # the worker's rename replaces the link itself: nothing is written through it
    worker_reports.write({"pid": os.getpid()})
    assert target.read_text() == "untouched"
    assert not mine.is_symlink() and stat.S_IMODE(mine.stat().st_mode) == 0o600
    # and the master does not read through one either
    mine.unlink()
    mine.symlink_to(target)
    target.write_text('{"pid": 1}')
    assert worker_reports.collect([os.getpid()]) == {}


@pytest.mark.parametrize(
    "content", [b"not json", b"[1, 2]", b'"text"', b"{" * 100_000, b"\xff\xfe"], ids=repr
)
def test_master_ignores_reports_that_are_not_a_json_object(
    report_folder: str, content: bytes
) -> None:
    pid = 4_000_000  # above any pid_max: never a real worker
    (Path(report_folder) / f"{pid}.json").write_bytes(content)
    assert worker_reports.collect([pid]) == {}


def test_the_code_scan_finds_what_it_looks_for() -> None:
    """Guards the scan above from passing because of a broken AST walk."""
    tree = ast.parse("from pickle import loads\neval('1')\nsocket.socket()\nsock.listen(5)")
    assert "pickle" in set(_imports(tree))
    assert {"eval", "socket.socket", "sock.listen"} <= set(_called_names(tree))
