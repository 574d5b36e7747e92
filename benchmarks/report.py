"""The machine description and the Markdown report (``benchmarks/results.md``)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from .middleware_cost import MiddlewareResults
from .servers import REPO
from .shutdown import ShutdownResults
from .stats import Spread, ratios
from .throughput import ROUTES, SendfileResults, ThroughputResults
from .worker_instructions import WorkerInstructions

#: Targets of issue 5.
MIN_RPS_RATIO = 0.98
MAX_P99_RATIO = 1.02
MAX_FLASK_ADDED = 0.02
AIM_FLASK_ADDED = 0.005
MAX_LAST_REQUEST_TO_EXIT = 0.050
MAX_EXTRA_MEMORY_KIB = 1024
#: Throughput >= 98% of plain, for a worker whose requests are bound by its CPU.
MAX_INSTRUCTION_RATIO = 1 / MIN_RPS_RATIO


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command_output(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    cpuinfo = open("/proc/cpuinfo").read().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    meminfo = dict(
        line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line
    )
    mem_gib = int(meminfo["MemTotal"].split()[0]) / 2**20
    commit = _command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(REPO), "status", "--porcelain"])
    return [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", f"{len(models)} x {models[0] if models else platform.processor()}"),
        ("memory", f"{mem_gib:.1f} GiB"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("kernel", " ".join(platform.uname()[i] for i in (0, 2, 4))),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        (
            "packages",
            ", ".join(
                f"{p} {_version(p)}"
                for p in ("gunicorn", "Flask", "Werkzeug", "gevent", "graceful_gunicorn")
            ),
        ),
        ("wrk", _command_output(["wrk", "--version"]).split(" Copyright")[0]),
        ("valgrind", _command_output(["valgrind", "--version"])),
        ("repository", f"{commit}{' (with uncommitted changes)' if dirty else ''}"),
    ]


def _ok(passed: bool) -> str:
    return "met" if passed else "**missed**"


def _ms(values: Sequence[float]) -> str:
    return Spread.of(values).format("{:.1f}", 1000)


@dataclass
class Report:
    """All sections' results; any may be missing (not run)."""

    mode: str
    duration: float
    throughput: ThroughputResults | None = None
    instructions: WorkerInstructions | None = None
    middleware: MiddlewareResults | None = None
    shutdown: ShutdownResults | None = None
    sendfile: SendfileResults | None = None

    def markdown(self) -> str:
        """The whole report."""
        parts = [
            "# graceful_gunicorn benchmarks\n",
            "Written by `python -m benchmarks` (see `benchmarks/README.md`). "
            f"Run: {self.mode}, {self.duration / 60:.1f} minutes. "
            "`a (b to c)` is the median of alternated runs (or windows), "
            "then the smallest and largest; a ratio is graceful/plain of runs "
            "made one after the other.\n",
            "## Machine\n",
            "| | |\n| --- | --- |",
            *(f"| {k} | {v} |" for k, v in machine()),
            "",
            "## Targets\n",
            *self._targets(),
            "",
        ]
        if self.throughput:
            parts += self._throughput(self.throughput)
        if self.instructions:
            parts += self._instructions(self.instructions)
        if self.middleware:
            parts += self._middleware(self.middleware)
        if self.shutdown:
            parts += self._shutdown(self.shutdown)
        if self.throughput:
            parts += self._memory(self.throughput)
        if self.sendfile:
            parts += self._sendfile(self.sendfile)
        return "\n".join(parts) + "\n"

    # -- targets --------------------------------------------------------------

    def _targets(self) -> list[str]:
        lines = ["| target | figure | |", "| --- | --- | --- |"]
        t = self.throughput
        if t:
            for worker_class in sorted({k[0] for k in t.runs}):
                for route in ROUTES:
                    rps = t.rps_ratio(worker_class, route)
                    p99 = t.p99_ratio(worker_class, route)
                    control = t.control_ratio(worker_class, route)
                    lines.append(
                        f"| throughput {worker_class} {route} >= {MIN_RPS_RATIO:.0%} of plain "
                        f"(wall clock; plain/plain in brackets) "
                        f"| {rps.format()} [{control.format()}] "
                        f"| {_ok(rps.median >= MIN_RPS_RATIO)} |"
                    )
                    lines.append(
                        f"| p99 latency {worker_class} {route} within "
                        f"{MAX_P99_RATIO - 1:.0%} of plain "
                        f"| {p99.format()} | {_ok(p99.median <= MAX_P99_RATIO)} |"
                    )
        w = self.instructions
        if w:
            for worker_class in sorted({k[0] for k in w.runs}):
                ratio = w.ratio(worker_class)
                lines.append(
                    f"| throughput {worker_class} /hello >= {MIN_RPS_RATIO:.0%} of plain, "
                    "by the worker's instructions per request (<= "
                    f"{MAX_INSTRUCTION_RATIO - 1:.2%} more) | {w.added(worker_class):+,.0f} "
                    f"= {ratio - 1:+.2%} | {_ok(ratio <= MAX_INSTRUCTION_RATIO)} |"
                )
        m = self.middleware
        if m and m.flask_plain:
            added = m.flask_added()
            fraction = m.flask_added_fraction()
            lines.append(
                f"| Flask hello-world request: added instructions <= {MAX_FLASK_ADDED:.0%} "
                f"(aim {AIM_FLASK_ADDED:.1%}) | {added.format('{:.0f}')} = {fraction:.2%} "
                f"| {_ok(fraction <= MAX_FLASK_ADDED)}"
                f"{'' if fraction <= AIM_FLASK_ADDED else ' (aim missed)'} |"
            )
        s = self.shutdown
        if s:
            for worker_class in sorted({k[0] for k in s.idle_exit}):
                for what, series in (("worker", s.idle_worker_exit), ("master", s.idle_exit)):
                    plain = Spread.of(series[(worker_class, "plain")])
                    ours = Spread.of(series[(worker_class, "graceful")])
                    slack = " (in 0.1 s steps)" if what == "master" else ""
                    lines.append(
                        f"| idle shutdown {worker_class} no slower than plain: SIGTERM to "
                        f"{what} exit{slack} (ms, 5% + 5 ms slack) "
                        f"| {ours.format('{:.0f}', 1000)} vs {plain.format('{:.0f}', 1000)} "
                        f"| {_ok(ours.median <= plain.median * 1.05 + 0.005)} |"
                    )
            for worker_class in sorted({k[0] for k in s.last_request_to_worker_exit}):
                last = Spread.of(s.last_request_to_worker_exit[(worker_class, "graceful")])
                plain = Spread.of(s.last_request_to_worker_exit[(worker_class, "plain")])
                ours = Spread.of(s.last_request_to_atexit[(worker_class, "graceful")])
                lines.append(
                    f"| last request to worker exit {worker_class} < "
                    f"{MAX_LAST_REQUEST_TO_EXIT * 1000:.0f} ms (ms; plain gunicorn's in brackets; "
                    "before the interpreter's teardown in braces) "
                    f"| {last.format('{:.1f}', 1000)} [{plain.format('{:.1f}', 1000)}] "
                    f"{{{ours.format('{:.1f}', 1000)}}} | "
                    f"{_ok(last.median < MAX_LAST_REQUEST_TO_EXIT)} |"
                )
        if t:
            for worker_class in sorted({k[0] for k in t.memory}):
                extra = self._extra_memory(t, worker_class)
                lines.append(
                    f"| memory per {worker_class} worker <= 1 MiB extra (RSS, KiB) "
                    f"| {extra:+.0f} | {_ok(extra <= MAX_EXTRA_MEMORY_KIB)} |"
                )
        f = self.sendfile
        if f:
            for worker_class in sorted({k[0] for k in f.runs}):
                r = ratios(
                    [x.rps for x in f.runs[(worker_class, "graceful")]],
                    [x.rps for x in f.runs[(worker_class, "plain")]],
                )
                lines.append(
                    f"| sendfile kept {worker_class}: large-file throughput >= "
                    f"{MIN_RPS_RATIO:.0%} of plain | {r.format()} "
                    f"| {_ok(r.median >= MIN_RPS_RATIO)} |"
                )
        return lines

    @staticmethod
    def _extra_memory(t: ThroughputResults, worker_class: str) -> float:
        plain = Spread.of([m.rss for m in t.memory[(worker_class, "plain")]]).median
        ours = Spread.of([m.rss for m in t.memory[(worker_class, "graceful")]]).median
        return ours - plain

    # -- sections -------------------------------------------------------------

    @staticmethod
    def _throughput(t: ThroughputResults) -> list[str]:
        lines = [
            "## 1. Throughput and latency\n",
            f"`wrk -t1 -c{t.connections}`, {t.seconds:.0f} s per run after "
            "200 warm-up requests, one worker (the load generator needs the other core), "
            "gthread with 4 threads; a fresh server per run; "
            f"{t.rounds} rounds, plain and graceful alternated.\n",
            "*Control* is a second plain server in each round: the ratio control/plain "
            "is what two identical servers differ by here, the noise any ratio carries.\n",
            "| worker | route | req/s plain | req/s graceful | ratio | control/plain "
            "| p50 ms plain | p50 ms graceful | p99 ms plain | p99 ms graceful | p99 ratio "
            "| errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for worker_class in sorted({k[0] for k in t.runs}):
            for route in ROUTES:
                p = t.runs[(worker_class, route, "plain")]
                g = t.runs[(worker_class, route, "graceful")]
                errors = sum(r.errors + r.non_2xx for r in (*p, *g))
                lines.append(
                    f"| {worker_class} | {route} "
                    f"| {Spread.of([r.rps for r in p]).format('{:.0f}')} "
                    f"| {Spread.of([r.rps for r in g]).format('{:.0f}')} "
                    f"| {t.rps_ratio(worker_class, route).format()} "
                    f"| {t.control_ratio(worker_class, route).format()} "
                    f"| {Spread.of([r.p50_ms for r in p]).format('{:.2f}')} "
                    f"| {Spread.of([r.p50_ms for r in g]).format('{:.2f}')} "
                    f"| {Spread.of([r.p99_ms for r in p]).format('{:.2f}')} "
                    f"| {Spread.of([r.p99_ms for r in g]).format('{:.2f}')} "
                    f"| {t.p99_ratio(worker_class, route).format()} | {errors} |"
                )
        return [*lines, ""]

    @staticmethod
    def _instructions(w: WorkerInstructions) -> list[str]:
        lines = [
            "## 1b. Instructions per request in the worker\n",
            "The CPU cost that throughput is the inverse of, counted by callgrind "
            "instead of timed: a real gunicorn master and worker under "
            "`valgrind --tool=callgrind --dump-before=getsid`, serving `/hello` to "
            + (
                "one client, one request after the other (kept alive by gthread and gevent); "
                if w.clients == 1
                else f"{w.clients} concurrent clients, each on its own connection; "
            )
            + f"windows of {w.window} requests, each closed by a `/mark` request whose "
            "`getsid()` makes the worker write its count "
            f"(`benchmarks/worker_instructions.py`). {w.rounds} rounds of a fresh plain "
            f"and a fresh graceful server, alternated, {w.windows} windows each. "
            "Everything the worker executes is counted: gunicorn, Flask, graceful_gunicorn.\n",
            "| worker | plain instructions/request | graceful instructions/request "
            "| added | added / plain |",
            "| --- | --- | --- | --- | --- |",
        ]
        for worker_class in sorted({k[0] for k in w.runs}):
            lines.append(
                f"| {worker_class} "
                f"| {w.spread(worker_class, 'plain').format('{:,.0f}')} "
                f"| {w.spread(worker_class, 'graceful').format('{:,.0f}')} "
                f"| {w.added(worker_class):+,.0f} | {w.ratio(worker_class) - 1:+.2%} |"
            )
        return [*lines, ""]

    @staticmethod
    def _passthrough_added(m: MiddlewareResults) -> str:
        if not m.flask_passthrough:
            return "not measured"
        added = m.flask_added(m.flask_passthrough)
        return f"{added.format('{:.0f}')} = {m.flask_added_fraction(m.flask_passthrough):.2%}"

    def _middleware(self, m: MiddlewareResults) -> list[str]:
        lines = [
            "## 2. Middleware cost\n",
            "A trivial WSGI app, bare and inside the in-flight middleware, called, "
            "iterated and closed in-process (`benchmarks/inprocess.py`) with only "
            "`PYTHONPATH` set. Wall clock: "
            f"{m.rounds} alternated rounds of {m.requests} requests. Instructions: "
            f"callgrind, runs of {', '.join(map(str, m.counts))} requests (Flask: "
            f"{', '.join(map(str, m.flask_counts))}), one estimate per pair of consecutive "
            "runs, `PYTHONHASHSEED=0`.\n",
            "| Python | bare ns/request | ns added | bare instructions | wrapped instructions "
            "| instructions added |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for cost in m.pythons:
            if cost.bare_instructions:
                bare = Spread.of(cost.bare_instructions)
                wrapped = Spread.of(cost.wrapped_instructions)
                instructions = (
                    f"{bare.format('{:.0f}')} | {wrapped.format('{:.0f}')} "
                    f"| {wrapped.median - bare.median:.0f}"
                )
            else:
                instructions = "not measured | | "
            lines.append(
                f"| {cost.version} | {Spread.of(cost.bare_ns).format('{:.0f}')} "
                f"| {Spread.of(cost.added_ns).format('{:.0f}')} | {instructions} |"
            )
        if m.flask_plain:
            plain, ours = Spread.of(m.flask_plain), Spread.of(m.flask_graceful)
            added = m.flask_added()
            lines += [
                "",
                f"Flask hello-world route in-process (`app(environ, start_response)`), "
                f"instructions per request on CPython {m.flask_python}:\n",
                "| plain Flask | with GracefulShutdown(app) | added | added / plain "
                "| a pass-through middleware adds |",
                "| --- | --- | --- | --- | --- |",
                f"| {plain.format('{:.0f}')} | {ours.format('{:.0f}')} "
                f"| {added.format('{:.0f}')} | {m.flask_added_fraction():.2%} "
                f"| {self._passthrough_added(m)} |",
                "",
                "*A pass-through middleware* is a class whose `__call__` only calls the app "
                "(`benchmarks/inprocess.py`): what any WSGI middleware written in Python "
                "costs before it does anything.",
            ]
        return [*lines, ""]

    @staticmethod
    def _shutdown(s: ShutdownResults) -> list[str]:
        lines = [
            "## 3. Shutdown latency\n",
            "One worker, `shutdown_delay` 0, `SIGTERM` to the master; exits timed "
            f"with a pidfd. {s.rounds} rounds, alternated. Milliseconds.\n",
            "| worker | idle: SIGTERM to worker exit, plain | graceful "
            "| idle: SIGTERM to master exit, plain | graceful "
            "| last response to worker exit, plain | graceful "
            "| of which before the interpreter's teardown (`atexit`), plain | graceful "
            "| with a request in flight: SIGTERM to master exit, plain | graceful |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        series_in_order = (
            s.idle_worker_exit,
            s.idle_exit,
            s.last_request_to_worker_exit,
            s.last_request_to_atexit,
            s.busy_master_exit,
        )
        for worker_class in sorted({k[0] for k in s.idle_exit}):
            cells = [
                _ms(series[(worker_class, variant)])
                for series in series_in_order
                for variant in ("plain", "graceful")
            ]
            lines.append(f"| {worker_class} | " + " | ".join(cells) + " |")
        lines.append(
            "\nThe master's own stop loop sleeps 0.1 s between reaps, so master exits "
            "come in steps of about 100 ms for both: an idle worker that exits about "
            "100 ms after the signal, as both variants' do here, lands on either side of "
            "a step, and the master's median then jumps by 100 ms with the noise. The "
            "worker's exit is the fine figure. A worker's exit includes the "
            "interpreter's own teardown, which plain gunicorn's figure shows too: the "
            "time after `atexit` (the app's `atexit` handler) is CPython freeing the "
            "modules and objects of a Flask app, the same with or without graceful_gunicorn. "
            "gunicorn's gevent worker looks at its `alive` flag and at its pool once a "
            "second (`gevent.sleep(1.0)` in `GeventWorker.run`), in both variants."
        )
        if s.teardown:
            lines += [
                "",
                "What the teardown is: an interpreter that imported the benchmark app and "
                "gunicorn's worker modules, from the end of its script to its exit "
                "(milliseconds; alternated). Most of it is CPython's full garbage "
                "collections at finalization; `gc.freeze()` skips them, and with them the "
                "finalizers of objects in reference cycles (an unflushed file among them), "
                "so graceful_gunicorn does not call it.\n",
                "| as is | after `gc.freeze()` |",
                "| --- | --- |",
                f"| {_ms(s.teardown['as is'])} | {_ms(s.teardown['gc.freeze()'])} |",
            ]
        return [*lines, ""]

    @staticmethod
    def _memory(t: ThroughputResults) -> list[str]:
        lines = [
            "## 4. Memory per worker\n",
            "Read from `/proc/PID/smaps_rollup` of the one worker after its load runs. "
            "KiB, median of the rounds. USS is the memory only that worker holds.\n",
            "| worker | RSS plain | RSS graceful | RSS added | USS plain | USS graceful "
            "| USS added |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for worker_class in sorted({k[0] for k in t.memory}):
            p, g = t.memory[(worker_class, "plain")], t.memory[(worker_class, "graceful")]
            rss_p = Spread.of([m.rss for m in p]).median
            rss_g = Spread.of([m.rss for m in g]).median
            uss_p = Spread.of([m.uss for m in p]).median
            uss_g = Spread.of([m.uss for m in g]).median
            lines.append(
                f"| {worker_class} | {rss_p:.0f} | {rss_g:.0f} | {rss_g - rss_p:+.0f} "
                f"| {uss_p:.0f} | {uss_g:.0f} | {uss_g - uss_p:+.0f} |"
            )
        return [*lines, ""]

    @staticmethod
    def _sendfile(f: SendfileResults) -> list[str]:
        lines = [
            "## 5. sendfile\n",
            f"`GET /file`: a {f.file_mib} MiB file through Flask's `send_file` "
            "(`wsgi.file_wrapper`), `wrk -t1 -c2`, "
            f"{f.seconds:.0f} s per run, {f.rounds} rounds, the three variants rotated. "
            "*naive* wraps every response in a generator, as a careless counting "
            "middleware would: gunicorn then iterates the file instead of `sendfile()`.\n",
            "| worker | MiB/s plain | MiB/s graceful | graceful/plain | MiB/s naive "
            "| naive/plain |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for worker_class in sorted({k[0] for k in f.runs}):
            p = [r.mib_per_s for r in f.runs[(worker_class, "plain")]]
            g = [r.mib_per_s for r in f.runs[(worker_class, "graceful")]]
            n = [r.mib_per_s for r in f.runs[(worker_class, "naive")]]
            lines.append(
                f"| {worker_class} | {Spread.of(p).format('{:.0f}')} "
                f"| {Spread.of(g).format('{:.0f}')} | {ratios(g, p).format()} "
                f"| {Spread.of(n).format('{:.0f}')} | {ratios(n, p).format()} |"
            )
        return [*lines, ""]
