"""Which SIGINT/SIGQUIT a worker gets is a new quick stop, and which is the same one.

A stopping master sends its workers SIGQUIT once per SIGINT or SIGQUIT it gets
(gunicorn 25+: once per stop), never SIGINT. Ctrl+C and Ctrl+\\ (the whole
process group, as ``kill -QUIT -PGID`` and inits that forward to the group do)
and ``pkill`` (each process in turn) thus reach a worker twice: its own signal
and the master's SIGQUIT, in either order, however late a busy master runs. The
master counts the SIGQUITs it begins to send and notes the first quick signal
it got (``master_state``); where that cannot tell, in doubt it is one stop: a
user can press again. This module decides;
:class:`.stop_signals.StopSignals` turns it into the worker's decision.
"""

from __future__ import annotations

import signal
from enum import Enum

from .. import master_state

#: How soon after a worker's first quick handler a SIGQUIT may still be the other
#: half of the same action when the master's relay was out before that handler
#: ran: ``pkill -QUIT`` signals the master first and the worker a moment later.
#: A second Ctrl+\ is a separate keystroke.
RELAY_WINDOW = 0.25


class QuickSignal(Enum):
    """What one quick signal means to the worker that got it."""

    #: The first: the worker begins a quick stop (or turns its graceful one quick).
    FIRST = "first"
    #: The other half of the action that sent the first: nothing more to do.
    SAME_STOP = "same stop"
    #: A second stop: the user pressed again; the worker exits at once.
    SECOND_STOP = "second stop"


class QuickSignals:
    """The quick signals one worker got, and what each one means."""

    def __init__(self) -> None:
        #: The SIGINT/SIGQUIT signals this worker got.
        self.seen: set[int] = set()
        #: When this worker's first quick-stop handler ran (monotonic).
        self.first_at = 0.0
        #: How many SIGQUITs the master had begun to send its workers by then.
        self._relays_at_first = 0
        #: Whether a second quick signal was taken for the other half of the first's action.
        self._second_half_taken = False

    def receive(self, sig: int, now: float) -> QuickSignal:
        """Quick signal ``sig``, whose handler began at ``now``: record it, say what it is."""
        if not self.seen:
            state = master_state.current()
            self.seen.add(sig)
            self.first_at = now
            self._relays_at_first = state.quick_relays if state is not None else 0
            return QuickSignal.FIRST
        if self._second_half_of_one_stop(sig, now):
            self.seen.add(sig)
            return QuickSignal.SAME_STOP
        return QuickSignal.SECOND_STOP

    def merge(self) -> None:
        """A quick signal came while the handler of the first one ran: one stop."""
        self._second_half_taken = True

    def _second_half_of_one_stop(self, sig: int, now: float) -> bool:
        """Whether ``sig``, after this worker's first, comes from the same user
        action (once per stop); see the module's docstring."""
        state = master_state.current()
        if self._second_half_taken or state is None or not state.stop_recorded:
            return False
        first = signal.SIGQUIT if signal.SIGQUIT in self.seen else signal.SIGINT
        relays = state.quick_relays
        if sig == signal.SIGINT:
            # Only the worker's own SIGINT of a Ctrl+C that the master's SIGQUIT beat.
            taken = (
                first == signal.SIGQUIT
                and state.first_quick_signal == signal.SIGINT
                and relays == self._relays_at_first >= 1
            )
        elif first == signal.SIGINT:
            taken = True  # the master's SIGQUIT after Ctrl+C's SIGINT
        elif self._relays_at_first == 0:
            taken = relays >= 1  # the master began its SIGQUIT after our first handler
        elif relays > self._relays_at_first:
            taken = False  # a SIGQUIT for the master's second quick signal
        else:
            # One relay, begun before our first handler: that handler ran for it
            # (this is then our own, from the group or pkill), for our own signal
            # with the relay merged into it (signals do not queue: this is a
            # second stop), or for our own with the relay on its way. The master
            # notes when its relay is out; soon after our first, it is one stop.
            merged = 0 < state.quick_relayed_at < self.first_at
            taken = not merged or now - self.first_at < RELAY_WINDOW
        if taken:
            self._second_half_taken = True
        return taken


__all__ = ["RELAY_WINDOW", "QuickSignal", "QuickSignals"]
