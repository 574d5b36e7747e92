"""What graceful_gunicorn keeps for this process, in one object.

The master sets it up before it forks, so each worker starts with a copy:
the master's shared state, the settings the master checked, the folder the
workers write their reports to. :func:`reset` forgets it all (tests that start
a master in-process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._core.settings import Settings
    from .master_state import MasterState


@dataclass
class ProcessState:
    """The process-wide state of graceful_gunicorn (see the module's docstring)."""

    #: The state shared between the master and its workers (``master_state``).
    master: MasterState | None = None
    #: The settings the master checked at start-up or at its last good reload.
    settings_in_force: Settings | None = None
    #: The folder of the workers' reports (``worker_reports``) ...
    report_folder: str | None = None
    #: ... and an open descriptor of it, locked (``flock``) while the master lives.
    report_folder_fd: int | None = None
    #: Whether the old gunicorn's warning was logged (once per process).
    warned_old_gunicorn: bool = False


#: This process's state.
STATE = ProcessState()


def reset() -> None:
    """Forget everything (for tests): a fresh :class:`ProcessState`."""
    for name, value in vars(ProcessState()).items():
        setattr(STATE, name, value)


__all__ = ["STATE", "ProcessState", "reset"]
