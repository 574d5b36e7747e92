"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from .server import Gunicorn

WORKER_CLASSES = ["sync", "gthread", "gevent"]


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start real gunicorn masters; every process is killed by PID at teardown."""
    with ExitStack() as stack:

        def start(
            args: Sequence[str],
            env: dict[str, str] | None = None,
            port: int | None = None,
            command: Sequence[str] | None = None,
        ) -> Gunicorn:
            server = Gunicorn(tmp_path, args, env, port, command)
            stack.callback(server.stop)
            return server.start()

        yield start
