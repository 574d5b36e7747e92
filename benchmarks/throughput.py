"""Sections 1, 4 and 5: throughput and latency, memory per worker, ``sendfile``.

Every round starts a fresh server for each variant, in alternating order
(plain first in even rounds, graceful first in odd ones), so that a drift of
the machine shows as spread instead of favouring one variant. Ratios are
graceful/plain of the two runs of the same round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .load import LoadResult, run_wrk
from .servers import Server, http_get
from .stats import Spread, ratios

ROUTES = ("/hello", "/64k")
WARMUP_REQUESTS = 200

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Memory:
    """Memory of one worker process, in KiB (from /proc/PID/smaps_rollup)."""

    rss: int
    pss: int
    uss: int


@dataclass
class ThroughputResults:
    """``runs[(worker_class, route, variant)]``: one :class:`LoadResult` per round."""

    seconds: float
    rounds: int
    connections: int
    runs: dict[tuple[str, str, str], list[LoadResult]] = field(default_factory=dict)
    memory: dict[tuple[str, str], list[Memory]] = field(default_factory=dict)

    def rps_ratio(self, worker_class: str, route: str) -> Spread:
        """Throughput graceful/plain over the rounds."""
        g, p = self._pair(worker_class, route)
        return ratios([r.rps for r in g], [r.rps for r in p])

    def p99_ratio(self, worker_class: str, route: str) -> Spread:
        """p99 latency graceful/plain over the rounds."""
        g, p = self._pair(worker_class, route)
        return ratios([r.p99_ms for r in g], [r.p99_ms for r in p])

    def control_ratio(self, worker_class: str, route: str) -> Spread:
        """Throughput plain/plain (a second plain server, the control): the noise floor."""
        c, p = self._pair(worker_class, route, "control")
        return ratios([r.rps for r in c], [r.rps for r in p])

    def p50_ratio(self, worker_class: str, route: str) -> Spread:
        """p50 latency graceful/plain over the rounds."""
        g, p = self._pair(worker_class, route)
        return ratios([r.p50_ms for r in g], [r.p50_ms for r in p])

    def _pair(
        self, worker_class: str, route: str, variant: str = "graceful"
    ) -> tuple[list[LoadResult], list[LoadResult]]:
        """The runs of ``variant`` and of plain, round by round."""
        return (
            self.runs[(worker_class, route, variant)],
            self.runs[(worker_class, route, "plain")],
        )


@dataclass
class SendfileResults:
    """``runs[(worker_class, variant)]``: one :class:`LoadResult` per round on ``/file``."""

    file_mib: int
    seconds: float
    rounds: int
    runs: dict[tuple[str, str], list[LoadResult]] = field(default_factory=dict)


def worker_memory(pid: int) -> Memory:
    """Resident, proportional and unique memory of ``pid``."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return Memory(
        rss=fields["Rss"],
        pss=fields["Pss"],
        uss=fields["Private_Clean"] + fields["Private_Dirty"],
    )


def alternate(variants: Sequence[str], round_no: int) -> list[str]:
    """The order of ``variants`` in round ``round_no``: rotated by one each round."""
    shift = round_no % len(variants)
    return [*variants[shift:], *variants[:shift]]


def warm_up(server: Server, path: str) -> None:
    """Serve a few requests so that imports and caches are done before measuring."""
    for _ in range(WARMUP_REQUESTS):
        status, _ = http_get(server.port, path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}:\n{server.log()}")


def run_throughput(
    workdir: Path,
    worker_classes: Sequence[str],
    rounds: int,
    seconds: float,
    connections: int,
    progress: Progress,
) -> ThroughputResults:
    """Section 1 (and 4, memory, read after the load): each class, each route, alternated.

    A third server in each round, *control*, is plain gunicorn again: its ratio
    to plain shows how far two identical servers differ on this machine.
    """
    results = ThroughputResults(seconds=seconds, rounds=rounds, connections=connections)
    for worker_class in worker_classes:
        for round_no in range(rounds):
            for variant in alternate(("plain", "graceful", "control"), round_no):
                with Server(workdir, worker_class, graceful=variant == "graceful") as server:
                    server.wait_ready()
                    for route in ROUTES:
                        warm_up(server, route)
                        result = run_wrk(server.port, route, seconds, connections)
                        results.runs.setdefault((worker_class, route, variant), []).append(result)
                        progress(
                            f"throughput {worker_class:7} {route:6} {variant:8} round {round_no}: "
                            f"{result.rps:8.0f} req/s p50 {result.p50_ms:.2f} ms "
                            f"p99 {result.p99_ms:.2f} ms errors {result.errors + result.non_2xx}"
                        )
                    if variant != "control":
                        (worker,) = server.worker_pids()
                        memory = worker_memory(worker)
                        results.memory.setdefault((worker_class, variant), []).append(memory)
    return results


def run_sendfile(
    workdir: Path,
    worker_classes: Sequence[str],
    rounds: int,
    seconds: float,
    file_mib: int,
    progress: Progress,
) -> SendfileResults:
    """Section 5: a large file through ``wsgi.file_wrapper``, plain, graceful and naive."""
    path = workdir / "large.bin"
    with open(path, "wb") as f:
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(file_mib):
            f.write(block)
    results = SendfileResults(file_mib=file_mib, seconds=seconds, rounds=rounds)
    env = {"BENCH_FILE": str(path)}
    for worker_class in worker_classes:
        for round_no in range(rounds):
            for variant in alternate(("plain", "graceful", "naive"), round_no):
                with Server(
                    workdir, worker_class, graceful=variant == "graceful", app=variant, env=env
                ) as server:
                    server.wait_ready()
                    status, body = http_get(server.port, "/file", timeout=30)
                    if status != 200 or len(body) != file_mib * 2**20:
                        raise RuntimeError(f"/file answered {status}, {len(body)} bytes")
                    result = run_wrk(server.port, "/file", seconds, connections=2)
                    results.runs.setdefault((worker_class, variant), []).append(result)
                    progress(
                        f"sendfile   {worker_class:7} {variant:8} round {round_no}: "
                        f"{result.rps:8.1f} req/s {result.mib_per_s:8.0f} MiB/s"
                    )
    return results
