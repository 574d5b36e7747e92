"""Instructions per request, counted by ``valgrind --tool=callgrind``.

Wall-clock time on a shared machine varies by 10% or more; an instruction
count does not. A workload of :mod:`benchmarks.inprocess` is run under
callgrind for several numbers of requests ``n0 < n1 < ...``; the difference of
the totals of two consecutive runs divided by the difference of their
request counts is the cost of one request, without start-up and teardown.
Each such window gives one estimate; their median is reported, with their
spread (a few hundred instructions: the interpreter's caches depend on where
objects happen to live).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .servers import REPO

_TOTAL = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def have_valgrind() -> bool:
    """Whether ``valgrind`` is installed."""
    return shutil.which("valgrind") is not None


def total_instructions(python: str, workload: str, requests: int, workdir: Path) -> int:
    """Instructions of one whole run of ``workload`` serving ``requests`` requests."""
    out = workdir / f"callgrind-{os.getpid()}-{workload}-{requests}.out"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        python,
        "-m",
        "benchmarks.inprocess",
        "run",
        workload,
        str(requests),
    ]
    subprocess.run(command, env=env, cwd=workdir, capture_output=True, check=True, timeout=1800)
    try:
        return read_total(out)
    finally:
        out.unlink(missing_ok=True)


def read_total(path: Path) -> int:
    """The instruction total of one callgrind output file."""
    match = _TOTAL.search(path.read_bytes())
    if match is None:
        raise RuntimeError(f"no instruction total in callgrind's output {path}")
    return int(match.group(1))


def per_request(python: str, workload: str, counts: Sequence[int], workdir: Path) -> list[float]:
    """One estimate of instructions per request for each window between ``counts``."""
    totals = [total_instructions(python, workload, n, workdir) for n in counts]
    return [
        (totals[i + 1] - totals[i]) / (counts[i + 1] - counts[i]) for i in range(len(counts) - 1)
    ]
