"""Section 2: what the in-flight middleware adds to a request, on each Python.

For every Python found (3.10 to 3.13, on ``PATH`` or under pyenv), with only
``PYTHONPATH`` pointing at the repository (the core imports neither Flask nor
gunicorn, so nothing is installed):

- wall clock: :mod:`benchmarks.inprocess` ``time``, nanoseconds per request of
  a trivial WSGI app bare and wrapped, alternated;
- instructions per request of the same two workloads, under callgrind.

And on the Python running the benchmarks (it has Flask): instructions per
request of a hello-world Flask route, plain and with ``GracefulShutdown(app)``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .instructions import per_request
from .servers import REPO
from .stats import Spread

SUPPORTED_MINORS = (10, 11, 12, 13)

Progress = Callable[[str], None]


@dataclass
class PythonCost:
    """The middleware's cost on one Python."""

    python: str
    version: str
    bare_ns: list[float]
    added_ns: list[float]
    bare_instructions: list[float] = field(default_factory=list)
    wrapped_instructions: list[float] = field(default_factory=list)


@dataclass
class MiddlewareResults:
    """Per-Python costs, and the Flask hello-world instruction counts."""

    requests: int
    rounds: int
    counts: list[int]
    flask_counts: list[int]
    pythons: list[PythonCost] = field(default_factory=list)
    flask_python: str = ""
    flask_plain: list[float] = field(default_factory=list)
    flask_graceful: list[float] = field(default_factory=list)
    #: The same app behind a middleware that only calls it.
    flask_passthrough: list[float] = field(default_factory=list)

    def flask_added(self, variant: list[float] | None = None) -> Spread:
        """Instructions the package (or ``variant``'s wrapping) adds to a Flask
        hello-world request, per window."""
        pairs = zip(
            self.flask_graceful if variant is None else variant, self.flask_plain, strict=True
        )
        return Spread.of([v - p for v, p in pairs])

    def flask_added_fraction(self, variant: list[float] | None = None) -> float:
        """Median instructions added, as a fraction of plain Flask's median."""
        return self.flask_added(variant).median / Spread.of(self.flask_plain).median


def find_pythons() -> list[str]:
    """One interpreter per supported minor version: on ``PATH``, else under pyenv."""
    found = []
    for minor in SUPPORTED_MINORS:
        if sys.version_info[:2] == (3, minor):
            found.append(sys.executable)
            continue
        on_path = shutil.which(f"python3.{minor}")
        root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
        pyenv = sorted(
            glob.glob(f"{root}/versions/3.{minor}.*/bin/python3"),
            key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()],
        )
        if pyenv:
            found.append(pyenv[-1])
        elif on_path:
            found.append(on_path)
    return found


def time_middleware(python: str, requests: int, rounds: int) -> dict[str, Any]:
    """Run :mod:`benchmarks.inprocess` ``time`` under ``python`` with only PYTHONPATH set."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [
            python,
            "-m",
            "benchmarks.inprocess",
            "time",
            f"--requests={requests}",
            f"--rounds={rounds}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_middleware(
    workdir: Path,
    pythons: Sequence[str],
    requests: int,
    rounds: int,
    counts: Sequence[int],
    flask_counts: Sequence[int],
    callgrind: bool,
    callgrind_every_python: bool,
    progress: Progress,
) -> MiddlewareResults:
    """Section 2 on every Python, and the Flask instruction counts on this one."""
    results = MiddlewareResults(
        requests=requests, rounds=rounds, counts=list(counts), flask_counts=list(flask_counts)
    )
    for python in pythons:
        timed = time_middleware(python, requests, rounds)
        cost = PythonCost(python, timed["python"], timed["bare_ns"], timed["added_ns"])
        if callgrind and (callgrind_every_python or python == sys.executable):
            cost.bare_instructions = per_request(python, "bare", counts, workdir)
            cost.wrapped_instructions = per_request(python, "wrapped", counts, workdir)
        results.pythons.append(cost)
        progress(
            f"middleware Python {cost.version}: {Spread.of(cost.added_ns).format('{:.0f}')} ns "
            f"added; instructions {cost.bare_instructions} -> {cost.wrapped_instructions}"
        )
    if callgrind:
        results.flask_python = sys.version.split()[0]
        results.flask_plain = per_request(sys.executable, "flask-plain", flask_counts, workdir)
        results.flask_graceful = per_request(
            sys.executable, "flask-graceful", flask_counts, workdir
        )
        results.flask_passthrough = per_request(
            sys.executable, "flask-passthrough", flask_counts, workdir
        )
        progress(
            f"flask instructions plain {results.flask_plain} graceful {results.flask_graceful}"
        )
    return results
