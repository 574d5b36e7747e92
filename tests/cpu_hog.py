"""Run a command while other processes keep the CPUs busy (stdlib only).

::

    python -m tests.cpu_hog --seconds 900 [--procs 2] [--nice 0] -- <command...>

Starts ``--procs`` busy-loop processes (default: one per CPU) at normal
priority, so that they really compete with the command (``--nice N`` lowers
theirs), runs the command, and stops the hogs by their PIDs when it exits, on
Ctrl+C or on SIGTERM. Exits with the command's exit code. Bounded: each hog
ends by itself after ``--seconds`` at the latest, even if this process is
killed with SIGKILL.

This is how CI's 2 busy cores are reproduced on a quiet machine: a test that
sleeps instead of waiting for an event, or that sends a "simultaneous"
signal as two separate sends, fails here within a few runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

#: A hog checks the clock every this many loop turns (cheap, and a few ms apart).
_TURNS_PER_CHECK = 100_000


def hog(seconds: float, nice: int) -> None:
    """Busy-loop until ``seconds`` have passed (runs in a forked child)."""
    if nice:
        os.nice(nice)
    deadline = time.monotonic() + seconds
    n = 0
    while True:
        for _ in range(_TURNS_PER_CHECK):
            n += 1
        if time.monotonic() >= deadline:
            os._exit(0)


def start_hogs(procs: int, seconds: float, nice: int) -> list[int]:
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:  # the child: never return into the parent's code
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                hog(seconds, nice)
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def stop_hogs(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cpu_hog", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--seconds", type=float, required=True, help="the hogs end after this at the latest"
    )
    parser.add_argument(
        "--procs", type=int, default=os.cpu_count() or 2, help="busy processes (default: CPUs)"
    )
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness added to the hogs (default 0: real load)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given (put it after --)")
    if args.seconds <= 0 or args.procs < 0:
        parser.error("--seconds must be positive and --procs not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    hogs = start_hogs(args.procs, args.seconds, args.nice)
    print(
        f"cpu_hog: {len(hogs)} busy process(es) {hogs} for {args.seconds:g}s at most",
        file=sys.stderr,
        flush=True,
    )

    def on_term(sig: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    command: subprocess.Popen[bytes] | None = None
    try:
        command = subprocess.Popen(args.command)
        code = command.wait()
    except KeyboardInterrupt:
        # Ctrl+C reached the command too (same process group); give it a moment.
        code = 130
        if command is not None:
            try:
                code = command.wait(10)
            except subprocess.TimeoutExpired:
                command.kill()
                command.wait()
    finally:
        stop_hogs(hogs)
    print(
        f"cpu_hog: command exited {code} after {time.monotonic() - started:.0f}s",
        file=sys.stderr,
        flush=True,
    )
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
