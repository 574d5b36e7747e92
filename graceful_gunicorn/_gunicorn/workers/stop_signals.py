"""What each signal a worker gets means for its shutdown; the runner acts on it.

The worker's signal handlers hand their signal to :class:`StopSignals`, which
records it and returns a :class:`Decision`: the first stop, an escalation (a
quick signal during a graceful stop), a second quick stop (exit at once), or
nothing new. It runs nothing itself; the shutdown runner
(:mod:`.shutdown`) starts or escalates the sequence. One decision takes time:
whether a SIGTERM that the master has not explained is a recycle
(:meth:`StopSignals.settle`, in the runner's thread).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from enum import Enum

from ..._core.context import QUICK_REASONS, Reason
from .. import master_state
from ..worker_flags import WorkerFlags
from .quick_signals import QuickSignal, QuickSignals

#: How long a worker waits for the master to explain a SIGTERM it has not
#: recorded (yet): sent to the whole process group (systemd's default
#: KillMode, ``kill -TERM -PGID``), it can reach a worker long before a busy
#: master runs. A recycle the master sends (SIGTTOU) is recorded first and
#: needs no wait; only a SIGTERM sent to the worker by hand waits this long.
REASON_SETTLE = 2.0


class Decision(Enum):
    """What the runner does about one signal."""

    #: Nothing new: the stop already asked for stands.
    NOTHING = "nothing"
    #: The first stop: the runner begins the sequence.
    START = "start"
    #: A quick signal during a graceful stop: the runner makes the sequence quick.
    ESCALATE = "escalate"
    #: A SIGTERM while the master holds ``shutdown_delay``: ignored, and logged.
    IGNORED = "ignored"
    #: A second quick stop: the user pressed again; the worker exits at once.
    EXIT_NOW = "exit now"


def _master_holds_unhandled(sig: int) -> bool:
    """Whether this worker's master holds ``sig`` unhandled: pending (sent, not yet
    delivered: the master was not scheduled), or the master is stopped (``SIGSTOP``,
    a debugger), so that it runs its handlers only later. Linux's
    ``/proc/PID/status``; elsewhere, never."""
    try:
        with open(f"/proc/{os.getppid()}/status", "rb") as status:
            lines = status.read().splitlines()
    except OSError:
        return False
    bit = 1 << (sig - 1)
    for line in lines:
        if line.startswith(b"State:") and line.split()[1:2] in ([b"T"], [b"t"]):
            return True
        if line.startswith((b"SigPnd:", b"ShdPnd:")) and int(line.split()[1], 16) & bit:
            return True
    return False


def _master_holds_delay() -> bool:
    """Whether the master announced its stop but holds ``shutdown_delay`` before it."""
    state = master_state.current()
    return state is not None and not state.stop_recorded and state.flag[0] != 0


class StopSignals:
    """The stop signals one worker got, and the shutdown they ask for.

    Written from the main thread's signal handlers (flags only: they may run in
    the middle of a request) and from the shutdown thread (a SIGTERM it read
    from the wakeup pipe, the settle, a withdrawal); each check-then-write holds
    a re-entrant lock, so that a quick signal is never written over.
    """

    def __init__(self, generation: int, flags: WorkerFlags | None = None) -> None:
        #: The master's reload generation the worker belongs to (see WorkerShutdown).
        self.generation = generation
        #: What the master tells this worker alone (``None``: no master of ours).
        self._flags = flags
        self._reason: Reason | None = None
        self._started_at = 0.0
        self._signal_name: str | None = None
        self._quick = QuickSignals()
        #: A SIGTERM that read as a recycle: the master may not have recorded its stop yet.
        self._unsettled = False
        #: Whether the settle's wait saw the master hold its SIGTERM unhandled.
        self._master_was_held = False
        self._ignored_sigterm = False
        # Re-entrant: a handler may run inside another one in the main thread.
        self._lock = threading.RLock()

    @property
    def reason(self) -> Reason | None:
        """The shutdown asked for (quick once escalated), or ``None``."""
        return self._reason

    @property
    def started_at(self) -> float:
        """When the shutdown was asked for (monotonic); from the settle when that is later."""
        return self._started_at

    @property
    def signal_name(self) -> str | None:
        """The signal that asked (``None``: gunicorn's loop ended by itself)."""
        return self._signal_name

    def stop(self, reason: Reason, signal_name: str | None = None) -> Decision:
        """A shutdown for ``reason``; a quick reason during a graceful one escalates it."""
        with self._lock:
            if self._reason is None:
                self._started_at = time.monotonic()
                self._signal_name = signal_name  # before the reason: read without the lock
                self._reason = reason
                return Decision.START
            if reason in QUICK_REASONS and self._reason not in QUICK_REASONS:
                # A runner that has not begun its sequence yet begins it quick.
                self._signal_name = signal_name
                self._reason = reason
                return Decision.ESCALATE
            return Decision.NOTHING

    def sigterm(self, signal_name: str = "SIGTERM") -> Decision:
        """SIGTERM: a shutdown for the reason the master recorded.

        Ignored while the master holds ``shutdown_delay``: a SIGTERM sent to the
        whole process group reaches the workers too, and the master sends its
        own when the delay is over. Not the one the master sent this worker
        alone (a recycle it noted first).
        """
        with self._lock:
            if self._reason is not None:
                return Decision.NOTHING
            sent_alone = self._flags is not None and self._flags.recycle
            if _master_holds_delay() and not sent_alone:
                self._ignored_sigterm = True
                return Decision.IGNORED
            reason = self.term_reason()
            self._unsettled = reason == "recycle"
            return self.stop(reason, signal_name)

    def quick(self, sig: int, now: float) -> Decision:
        """SIGINT/SIGQUIT ``sig``, whose handler began at ``now``."""
        meaning = self._quick.receive(sig, now)
        if meaning is QuickSignal.SAME_STOP:
            return Decision.NOTHING
        if meaning is QuickSignal.SECOND_STOP:
            return Decision.EXIT_NOW
        return self.stop("quick", signal.Signals(sig).name)

    def merge_nested_quick(self) -> None:
        """A quick signal came while the handler of the first one ran: one stop."""
        self._quick.merge()

    def take_ignored_sigterm(self) -> bool:
        """Whether a SIGTERM was ignored since the last call (the runner logs it)."""
        ignored, self._ignored_sigterm = self._ignored_sigterm, False
        return ignored

    def term_reason(self) -> Reason:
        """Why this worker got SIGTERM, as the master recorded it."""
        state = master_state.current()
        if state is None or state.stop_kind == master_state.STOP_TERMINATE:
            return "terminate"
        if state.stop_kind == master_state.STOP_QUICK:
            return "quick"
        if state.generation != self.generation:
            return "reload"
        return "recycle"

    # -- in the runner's thread ---------------------------------------------------

    def settle(self, graceful_timeout: float) -> Reason | None:
        """The reason of the stop asked for, once the master explained it; ``None``:
        the SIGTERM is withdrawn (the master holds ``shutdown_delay``)."""
        reason = self._reason
        assert reason is not None  # the runner settles a stop that was asked for
        if reason in QUICK_REASONS:
            self._unsettled = False  # a quick stop needs no word of the master's
            return reason
        if not self._unsettled:
            return reason
        if self._flags is not None and self._flags.recycle:
            return reason  # the master said so before it sent it
        self._master_was_held = False
        settled = self._wait_for_the_masters_word(reason, graceful_timeout)
        if settled is None:
            self._withdraw()
            return None
        if self._master_was_held and not master_state.stop_recorded():
            # The wait went on while the master held its SIGTERM unhandled, and it
            # still recorded no stop: no master's clock runs yet, so the budget
            # counts from now. Otherwise from the SIGTERM, as gunicorn's own stop
            # (a halt, which we do not record) may have started its clock then.
            self._started_at = time.monotonic()
        return settled

    def _wait_for_the_masters_word(self, reason: Reason, graceful_timeout: float) -> Reason | None:
        until = time.monotonic() + REASON_SETTLE
        # A master that holds the SIGTERM unhandled (stopped, or not scheduled on a
        # busy machine) will explain it: wait on while it does, up to graceful_timeout.
        # The worker serves meanwhile; the budget counts from the master's stop.
        limit = self._started_at + graceful_timeout
        while time.monotonic() < until:
            if _master_holds_unhandled(signal.SIGTERM):
                self._master_was_held = True
                until = max(until, min(limit, time.monotonic() + REASON_SETTLE))
            requested = self._reason
            if requested is not None and requested != reason:  # a quick signal came
                return requested
            if _master_holds_delay():
                return None
            explained = self.term_reason()
            if explained != reason:
                return explained
            time.sleep(0.01)
        return reason

    def _withdraw(self) -> None:
        with self._lock:
            if self._reason in QUICK_REASONS:
                return  # a quick signal came meanwhile: it stands (settle runs it)
            self._reason = None
            self._signal_name = None
            self._unsettled = False


__all__ = ["REASON_SETTLE", "Decision", "StopSignals"]
