"""State the gunicorn master shares with its workers, in memory mapped before the fork.

The master writes, its workers read (but for two bytes that workers write
at boot): whether the server is going away (so
that every worker answers the readiness path with 503 at once, also during
``shutdown_delay``), why the master is stopping and when its graceful stop
began (so that a worker knows its real deadline), and a generation number that
``SIGHUP`` increments (so that an old worker knows a ``SIGTERM`` means
"reload"). The map is anonymous (no path, no file) and holds plain numbers:
nothing is ever unpickled or executed from it.
"""

from __future__ import annotations

import fcntl
import mmap
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from .process_state import STATE

STOP_NONE = 0
STOP_TERMINATE = 1
STOP_QUICK = 2

# going away (uint8, first so that one byte read answers it), stop kind (uint8),
# padding, generation (uint64), stop time (double, monotonic)
_LAYOUT = struct.Struct("<BB6xQd")
# Two bytes after it, written by the workers: one of them has booted (and
# served); one of them failed to boot and stops the server.
_BOOTED = _LAYOUT.size
_BOOT_FAILED = _LAYOUT.size + 1
# Then, written by the master: when it last passed a quick stop on to its workers
# (monotonic).
_RELAYED = struct.Struct("<d")
_RELAYED_AT = _BOOT_FAILED + 1
# Then one byte: the master's graceful stop turned quick inside gunicorn's stop().
_ESCALATED = _RELAYED_AT + _RELAYED.size
# Then two: how many times the master began to send its workers SIGQUIT, and the
# first quick-stop signal it got (SIGINT or SIGQUIT; 0: none yet).
_RELAYS = _ESCALATED + 1
_FIRST_QUICK = _RELAYS + 1
# Then the reload gate (reload_gate.py): the generation whose readiness holds the
# old workers (0: none), the newest generation one of whose workers began to log
# its failure to boot, and the newest generation whose workers failed to boot.
# (Which workers are ready, each says in its own flags: worker_flags.py.)
_GENERATION = struct.Struct("<Q")
_GATE_AT = _FIRST_QUICK + 1
_CLAIMED_GENERATION_AT = _GATE_AT + _GENERATION.size
_FAILED_GENERATION_AT = _CLAIMED_GENERATION_AT + _GENERATION.size
# Then one byte: the master's listeners end with its graceful stop (listeners.py).
_LISTENERS_DIE = _FAILED_GENERATION_AT + _GENERATION.size
_SIZE = _LISTENERS_DIE + 1


class MasterState:
    """A few numbers shared between a gunicorn master and its forked workers."""

    def __init__(self) -> None:
        # Anonymous and MAP_SHARED: the forked workers see the master's writes.
        self._map = mmap.mmap(-1, _SIZE)
        # An unlinked file whose POSIX record lock (per process, unlike flock's,
        # which forked workers would share) makes claim_boot_failure atomic.
        self._lock = tempfile.TemporaryFile()

    def _read(self) -> tuple[int, int, float]:
        _, kind, generation, stop_at = _LAYOUT.unpack_from(self._map, 0)
        return int(kind), int(generation), float(stop_at)

    def _write(self, kind: int, generation: int, stop_at: float) -> None:
        going_away = self._map[0]
        _LAYOUT.pack_into(self._map, 0, going_away, kind, generation, stop_at)

    @property
    def flag(self) -> mmap.mmap:
        """The shared memory itself: byte 0 is non-zero once the server is going away."""
        return self._map

    def announce_going_away(self) -> None:
        """From now on every worker reports not ready (readiness 503)."""
        self._map[0] = 1

    @property
    def stop_kind(self) -> int:
        """``STOP_NONE``, ``STOP_TERMINATE`` or ``STOP_QUICK``."""
        return self._read()[0]

    @property
    def stop_recorded(self) -> bool:
        """Whether the master recorded a stop of its own (terminate or quick)."""
        return self.stop_kind != STOP_NONE

    @property
    def stop_at(self) -> float:
        """The master's :func:`time.monotonic` time when it began to stop (0 if not)."""
        return self._read()[2]

    @property
    def generation(self) -> int:
        """How many times the master reloaded (``SIGHUP``)."""
        return self._read()[1]

    @property
    def worker_booted(self) -> bool:
        """Whether a worker of this master has booted: the server has served."""
        return self._map[_BOOTED] != 0

    def mark_worker_booted(self) -> None:
        """Record, from a worker, that it booted (its app loaded and checked)."""
        self._map[_BOOTED] = 1

    def note_quick_relay(self, at: float) -> None:
        """From the master: it has just sent its workers SIGQUIT (a quick stop)."""
        _RELAYED.pack_into(self._map, _RELAYED_AT, at)

    @property
    def quick_relayed_at(self) -> float:
        """When the master last sent its workers SIGQUIT (0: never)."""
        return float(_RELAYED.unpack_from(self._map, _RELAYED_AT)[0])

    def count_quick_relay(self) -> None:
        """From the master: it is about to send its workers SIGQUIT."""
        self._map[_RELAYS] = min(255, self._map[_RELAYS] + 1)

    @property
    def quick_relays(self) -> int:
        """How many times the master began to send its workers SIGQUIT."""
        return self._map[_RELAYS]

    def note_quick_signal(self, signum: int) -> None:
        """From the master: it got the quick-stop signal ``signum`` (the first one counts)."""
        if self._map[_FIRST_QUICK] == 0:
            self._map[_FIRST_QUICK] = signum & 0xFF

    @property
    def first_quick_signal(self) -> int:
        """The first quick-stop signal the master got (0: none yet)."""
        return self._map[_FIRST_QUICK]

    def note_escalation(self) -> None:
        """From the master: its graceful stop just turned quick inside gunicorn's
        ``stop()``, which gunicorn 25+ ends 2 s after that relay (arbiter.py)."""
        self._map[_ESCALATED] = 1

    @property
    def escalated(self) -> bool:
        """Whether the master's graceful stop turned quick inside gunicorn's ``stop()``."""
        return self._map[_ESCALATED] != 0

    def note_listeners_die(self) -> None:
        """From the master: its graceful stop began, and its listeners are its own
        (no other server will use them): a stopping worker makes them refuse new
        connections, and accepts what is queued first (listeners.py)."""
        self._map[_LISTENERS_DIE] = 1

    @property
    def listeners_die(self) -> bool:
        """Whether the master's listeners end with its graceful stop."""
        return self._map[_LISTENERS_DIE] != 0

    def _generation_at(self, offset: int) -> int:
        return int(_GENERATION.unpack_from(self._map, offset)[0])

    def hold_reload(self, generation: int) -> None:
        """From the master: the old workers serve until ``generation`` is ready (0: none)."""
        _GENERATION.pack_into(self._map, _GATE_AT, generation)

    @property
    def reload_gate(self) -> int:
        """The generation whose readiness the old workers wait for (0: none)."""
        return self._generation_at(_GATE_AT)

    def claim_reload_failure(self, generation: int) -> bool:
        """From a worker of ``generation`` that could not load the app: whether it is
        the first of its generation (the one that logs why)."""
        with self._locked():
            first = self._generation_at(_CLAIMED_GENERATION_AT) != generation
            _GENERATION.pack_into(self._map, _CLAIMED_GENERATION_AT, generation)
        return first

    def note_reload_failure(self, generation: int) -> None:
        """From a worker of ``generation`` that could not load the app, once it logged."""
        _GENERATION.pack_into(self._map, _FAILED_GENERATION_AT, generation)

    def reload_failed(self, generation: int) -> bool:
        """Whether a worker of ``generation`` could not load the app."""
        return self._generation_at(_FAILED_GENERATION_AT) == generation

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._lock, fcntl.LOCK_UN)

    def claim_boot_failure(self) -> bool:
        """From a worker whose app cannot work: whether it is the one to say so.

        Every worker of a server fails at the same point; one line and one
        boot-error exit stop the server, where several would have the master
        raise HaltServer again inside its own halt (arbiter.py reap_workers).
        """
        with self._locked():
            first = self._map[_BOOT_FAILED] == 0
            self._map[_BOOT_FAILED] = 1
        return first

    def begin_stop(self, kind: int, at: float) -> None:
        """Record that the master's stop begins now (the first stop wins its time)."""
        self.announce_going_away()
        current, generation, stop_at = self._read()
        if current == STOP_NONE:
            stop_at = at
        self._write(max(kind, current), generation, stop_at)

    def restart_stop_clock(self, at: float) -> None:
        """From the master: its graceful stop's clock really starts at ``at`` (gunicorn
        counts ``graceful_timeout`` from when it signals the workers)."""
        kind, generation, _ = self._read()
        if kind == STOP_TERMINATE:
            self._write(kind, generation, at)

    def next_generation(self) -> None:
        """Record a reload."""
        kind, generation, stop_at = self._read()
        self._write(kind, generation + 1, stop_at)


def current() -> MasterState | None:
    """The state of this process's master, if graceful_gunicorn.conf set it up."""
    return STATE.master


def stop_recorded() -> bool:
    """Whether this process's master recorded a stop (``False`` without a master)."""
    state = STATE.master
    return state is not None and state.stop_recorded


def create() -> MasterState:
    """Create the state in the master (once, before the first fork)."""
    if STATE.master is None:
        STATE.master = MasterState()
    return STATE.master
