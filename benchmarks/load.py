"""Bounded HTTP load with ``wrk`` (Debian package ``wrk``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPORT_SCRIPT = Path(__file__).with_name("report.lua")


@dataclass(frozen=True)
class LoadResult:
    """What one ``wrk`` run measured."""

    requests: int
    seconds: float
    bytes: int
    errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds

    @property
    def mib_per_s(self) -> float:
        """Response bytes (headers included) per second, in MiB."""
        return self.bytes / self.seconds / 2**20


def have_wrk() -> bool:
    """Whether ``wrk`` is installed."""
    return shutil.which("wrk") is not None


def run_wrk(port: int, path: str, seconds: float, connections: int) -> LoadResult:
    """Load ``http://127.0.0.1:port/path`` for ``seconds`` with one thread."""
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(REPORT_SCRIPT),
        f"http://127.0.0.1:{port}{path}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no report:\n{done.stdout}\n{done.stderr}")
    data = json.loads(lines[-1])
    return LoadResult(
        requests=int(data["requests"]),
        seconds=int(data["duration_us"]) / 1e6,
        bytes=int(data["bytes"]),
        errors=int(data["errors"]),
        non_2xx=int(data["non_2xx"]),
        p50_ms=int(data["p50_us"]) / 1000,
        p99_ms=int(data["p99_us"]) / 1000,
    )
