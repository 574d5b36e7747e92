"""A write-behind buffer in front of SQLite, and a small pool of connections.

Writes are acknowledged as soon as they are in memory and reach the database
in batches: fast, and exactly the kind of data a careless shutdown loses.
Once :meth:`WriteBehindBuffer.close` has flushed, later writes go straight to
the database, so a request that finishes during the shutdown is not lost either.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

SCHEMA = "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, value TEXT NOT NULL)"


class ConnectionPool:
    """A fixed number of SQLite connections, shared by the request threads."""

    def __init__(self, path: str, size: int = 4) -> None:
        self._idle: queue.Queue[sqlite3.Connection] = queue.Queue()
        self.size = size
        for _ in range(size):
            connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
            # The mode stays with the file. Changing it while another process uses
            # the file fails at once ("database is locked"; SQLite's busy timeout
            # does not cover it), and several workers and servers share one file:
            # whoever changes it first does it for all.
            (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
            if mode != "wal":
                with suppress(sqlite3.OperationalError):
                    connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(SCHEMA)
            self._idle.put(connection)
        self.closed = False

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection; it goes back to the pool afterwards."""
        connection = self._idle.get(timeout=30)
        try:
            yield connection
        finally:
            self._idle.put(connection)

    def close(self) -> None:
        """Close every idle connection."""
        self.closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class WriteBehindBuffer:
    """Acknowledge writes at once, store them in batches."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._write_through = False

    def add(self, value: str) -> None:
        """Accept one value (in memory, or in the database once closing)."""
        with self._lock:
            if not self._write_through:
                self._pending.append(value)
                return
        self._store([value])

    def flush(self) -> int:
        """Store everything pending; return how many values were stored."""
        with self._lock:
            batch, self._pending = self._pending, []
        self._store(batch)
        return len(batch)

    def close(self) -> int:
        """Flush, and from now on write straight through."""
        with self._lock:
            self._write_through = True
        return self.flush()

    @property
    def pending(self) -> int:
        """Values accepted but not stored yet."""
        return len(self._pending)

    def _store(self, values: list[str]) -> None:
        if not values:
            return
        with self._pool.connection() as connection, connection:
            connection.executemany("INSERT INTO items (value) VALUES (?)", [(v,) for v in values])
