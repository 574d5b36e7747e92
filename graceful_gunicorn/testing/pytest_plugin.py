"""The ``gunicorn_server`` pytest fixture: your app under a real gunicorn.

pytest loads this plugin by itself once graceful_gunicorn is installed::

    import signal

    def test_sigterm_flushes_the_buffer(gunicorn_server):
        server = gunicorn_server("myapp:app", "-k", "gthread", "--threads", "4")
        server.wait_ready()
        assert server.get("/items/add?value=a")[0] == 200
        server.signal(signal.SIGTERM)
        assert server.wait_exit(30) == 0
        assert "0 killed" in server.log()

Each call starts one gunicorn master on 127.0.0.1 with graceful_gunicorn's
config, ``-c python:graceful_gunicorn.conf``, unless the arguments name a
config file with ``-c`` (so a ``gunicorn.conf.py`` in the working directory
is not read unless you pass ``-c gunicorn.conf.py``), in ``cwd``
(the test's working directory by default), logging to a file in ``tmp_path``. Every process it
started is killed by PID when the test ends, passed or failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import pytest

from .server import GunicornServer


class StartServer(Protocol):
    """The ``gunicorn_server`` fixture: start one server, return it."""

    def __call__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        port: int = 0,
        cwd: str | os.PathLike[str] | None = None,
    ) -> GunicornServer: ...


_CONFIG_OPTIONS = ("-c", "--config")


def _names_a_config(args: tuple[str, ...]) -> bool:
    return any(arg in _CONFIG_OPTIONS or arg.startswith("--config=") for arg in args)


@pytest.fixture
def gunicorn_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start real gunicorn masters for this test; all are killed at its end."""
    with ExitStack() as stack:
        count = 0

        def start(
            *args: str,
            env: Mapping[str, str] | None = None,
            port: int = 0,
            cwd: str | os.PathLike[str] | None = None,
        ) -> GunicornServer:
            nonlocal count
            count += 1
            if not _names_a_config(args):
                args = ("-c", "python:graceful_gunicorn.conf", *args)
            server = GunicornServer(
                args, env=env, port=port, cwd=cwd, log_path=tmp_path / f"gunicorn-{count}.log"
            )
            stack.callback(server.stop)
            return server.start()

        yield start
