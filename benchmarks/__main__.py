"""``python -m benchmarks``: every benchmark, plain gunicorn side by side with ours.

Writes ``benchmarks/results.md`` (and the raw figures to ``results.json``).
``--quick`` is a short smoke run (a few minutes); the default full run takes
about 23 minutes. ``--only`` picks sections (and writes ``results-<sections>.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .instructions import have_valgrind
from .load import have_wrk
from .middleware_cost import find_pythons, run_middleware
from .report import Report
from .shutdown import run_shutdown
from .throughput import run_sendfile, run_throughput
from .worker_instructions import run_worker_instructions

SECTIONS = ("throughput", "instructions", "middleware", "shutdown", "sendfile")
WORKER_CLASSES = ("sync", "gthread", "gevent")
HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything to run."""

    rounds: int
    seconds: float
    connections: int
    shutdown_rounds: int
    sendfile_rounds: int
    sendfile_mib: int
    middleware_requests: int
    middleware_rounds: int
    middleware_counts: tuple[int, ...]
    flask_counts: tuple[int, ...]
    callgrind_every_python: bool
    instruction_rounds: int
    instruction_window: int
    instruction_windows: int


FULL = Plan(
    rounds=5,
    seconds=3,
    connections=8,
    shutdown_rounds=5,
    sendfile_rounds=3,
    sendfile_mib=32,
    middleware_requests=200_000,
    middleware_rounds=7,
    middleware_counts=(1000, 3000, 5000),
    flask_counts=(500, 1500, 2500),
    callgrind_every_python=True,
    instruction_rounds=2,
    instruction_window=300,
    instruction_windows=3,
)
QUICK = Plan(
    rounds=2,
    seconds=1,
    connections=8,
    shutdown_rounds=1,
    sendfile_rounds=1,
    sendfile_mib=8,
    middleware_requests=20_000,
    middleware_rounds=3,
    middleware_counts=(200, 600),
    flask_counts=(100, 300),
    callgrind_every_python=False,
    instruction_rounds=1,
    instruction_window=50,
    instruction_windows=2,
)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _jsonable(value: Any) -> Any:
    """Dataclasses as dicts, tuple keys as ``a/b`` strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {
            "/".join(k) if isinstance(k, tuple) else str(k): _jsonable(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections and write the report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (a few minutes)")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this section (repeatable)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="report path (default: benchmarks/results.md, "
        "benchmarks/results-quick.md with --quick, benchmarks/results-<sections>.md with --only)",
    )
    parser.add_argument(
        "--python",
        action="append",
        help="interpreters for the middleware section "
        "(default: 3.10 to 3.13 found on PATH or under pyenv)",
    )
    parser.add_argument(
        "--keep-callgrind",
        type=Path,
        metavar="DIR",
        help="keep the callgrind file of each window of the instructions section in DIR "
        "(to compare with callgrind_annotate)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        metavar="N",
        help="concurrent clients in the instructions section (default 1: one request at a time)",
    )
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error(f"--clients must be at least 1, got {args.clients}")
    plan = QUICK if args.quick else FULL
    sections = args.only or list(SECTIONS)
    # A partial run never replaces the full report kept in the repository.
    default_name = "results-quick.md" if args.quick else "results.md"
    if args.only and not args.quick:
        default_name = "results-" + "-".join(sorted(set(args.only))) + ".md"
    output: Path = args.output or HERE / default_name
    if {"throughput", "sendfile"} & set(sections) and not have_wrk():
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    started = time.monotonic()
    mode = "quick" if args.quick else "full"
    if args.only:
        mode += " (" + ", ".join(sections) + " only)"
    report = Report(mode=mode, duration=0.0)
    with tempfile.TemporaryDirectory(prefix="graceful-bench-") as tmp:
        workdir = Path(tmp)
        if "throughput" in sections:
            report.throughput = run_throughput(
                workdir, WORKER_CLASSES, plan.rounds, plan.seconds, plan.connections, _progress
            )
        if "instructions" in sections:
            if have_valgrind():
                report.instructions = run_worker_instructions(
                    workdir,
                    WORKER_CLASSES,
                    plan.instruction_rounds,
                    plan.instruction_window,
                    plan.instruction_windows,
                    _progress,
                    args.keep_callgrind.resolve() if args.keep_callgrind else None,
                    args.clients,
                )
            else:
                _progress("valgrind is not installed: no instructions per request in the worker")
        if "middleware" in sections:
            callgrind = have_valgrind()
            if not callgrind:
                _progress("valgrind is not installed: no instruction counts")
            report.middleware = run_middleware(
                workdir,
                args.python or find_pythons(),
                plan.middleware_requests,
                plan.middleware_rounds,
                plan.middleware_counts,
                plan.flask_counts,
                callgrind,
                plan.callgrind_every_python,
                _progress,
            )
        if "shutdown" in sections:
            report.shutdown = run_shutdown(workdir, WORKER_CLASSES, plan.shutdown_rounds, _progress)
        if "sendfile" in sections:
            report.sendfile = run_sendfile(
                workdir,
                ("sync", "gthread"),
                plan.sendfile_rounds,
                plan.seconds,
                plan.sendfile_mib,
                _progress,
            )
    report.duration = time.monotonic() - started
    output.write_text(report.markdown())
    raw = {"plan": _jsonable(plan), **_jsonable(report)}
    output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    _progress(f"wrote {output} and {output.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
