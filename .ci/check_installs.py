#!/usr/bin/env python3
"""Install the built wheel as users install it, then serve once with each worker class.

Why: the test venv is not what a user gets. ``pip install graceful_gunicorn[gevent]``
in a fresh venv, then ``gunicorn -k gevent -c python:graceful_gunicorn.conf app:app``
on gunicorn 27 failed with ``Error: class uri 'gevent' invalid or not found ...
No module named 'packaging'``: gunicorn 27 moved ``packaging`` from its core
requirements into its own ``gevent`` extra, and our ``gevent`` extra copied
``gevent`` alone. The test suite could not see it, because pytest brings
``packaging`` into the test venv.

What: one wheel is built (``pip wheel --no-deps``) from a copy of the source tree.
For each set of extras that the README's ``pip install`` lines use (none,
``[flask]``, ``[gevent]``, ``[flask,gevent]``; the check fails if the README and
this list part), a bare venv is made in a temporary folder, outside any test venv,
and the wheel is installed into it with that extra, from the indexes pip is
configured with. A tiny app is written next to it: a plain WSGI callable wrapped by
``Lifecycle`` where Flask is not installed, a Flask app with ``GracefulShutdown``
where it is; each has one ``on_shutdown`` callback that logs a line. Then, for each
worker class the extra enables (``sync`` and ``gthread`` always, ``gevent`` with the
``gevent`` extra), ``gunicorn -c python:graceful_gunicorn.conf`` runs once on
127.0.0.1 port 0 with gunicorn's default settings: the port is read from the
``Listening at`` log line, one request must be answered 200, one ``SIGTERM`` goes
to the master, which must exit 0 with graceful_gunicorn's ``shutdown summary`` and
the callback's line in its log.

Every wait is bounded and waits for an event (a log line, an answer, an exit);
on failure the master and its workers are killed by PID. Standard library only,
for the system ``python3``: ``python3 .ci/check_installs.py [--keep]``. One line is
printed per venv and per worker class; the exit status is 0 only if all passed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The sets of extras installed, one bare venv each: the README's install lines.
EXTRAS: tuple[tuple[str, ...], ...] = ((), ("flask",), ("gevent",), ("flask", "gevent"))
#: The sets the README must keep documenting (issue 13: no extra, flask, gevent).
REQUIRED_EXTRAS = frozenset({(), ("flask",), ("gevent",)})

VENV_TIMEOUT = 120.0
PIP_TIMEOUT = 300.0
LISTEN_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
#: gunicorn's default graceful_timeout (30 s) and some slack.
EXIT_TIMEOUT = 45.0
POLL = 0.05

#: Not copied to the folder the wheel is built from: caches, venvs, build output.
SKIPPED: tuple[str, ...] = (".git", ".venv", ".tox", "build", "dist", "*.egg-info")
SKIPPED += ("__pycache__", ".*_cache", ".hypothesis", "*.sqlite3*")

CALLBACK_LINE = "check_installs: on_shutdown ran"
BODY = b"hello\n"

WSGI_APP = f'''\
"""A plain WSGI callable under graceful_gunicorn's framework-neutral core."""

import logging

from graceful_gunicorn import Lifecycle

lifecycle = Lifecycle()


@lifecycle.on_shutdown
def flush():
    logging.getLogger("gunicorn.error").info("{CALLBACK_LINE}")


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "{len(BODY)}")])
    return [{BODY!r}]


app = lifecycle.wrap(hello)
'''

FLASK_APP = f'''\
"""A Flask app with graceful_gunicorn's extension."""

import logging

from flask import Flask

from graceful_gunicorn import GracefulShutdown

app = Flask(__name__)
GracefulShutdown(app)


@app.on_shutdown
def flush():
    logging.getLogger("gunicorn.error").info("{CALLBACK_LINE}")


@app.route("/")
def hello():
    return {BODY!r}
'''

LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+) ")
BOOTING = re.compile(r"Booting worker with pid: (\d+)")
EXCEPTION = re.compile(r"\s*[\w.]+(?:Error|Exception): ")
README_INSTALL = re.compile(r"pip install\b[^\n]*")
#: This package in a pip install line: by name, or the source tree (``-e ".[...]"``).
README_TARGET = re.compile(r"(?:graceful_gunicorn|\.)(?:\[([a-z,]*)\])?")

_print_lock = threading.Lock()


class CheckFailed(Exception):
    """One step failed; the message says which and what was seen."""


def label(extras: tuple[str, ...]) -> str:
    """How a user names the install: ``graceful_gunicorn[flask,gevent]``."""
    return "graceful_gunicorn" + (f"[{','.join(extras)}]" if extras else "")


@dataclass(frozen=True)
class Venv:
    """A bare venv with the wheel installed with ``extras``."""

    path: Path
    extras: tuple[str, ...]

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def workers(self) -> tuple[str, ...]:
        """The worker classes this install enables."""
        return ("sync", "gthread") + (("gevent",) if "gevent" in self.extras else ())


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def child_env() -> dict[str, str]:
    """The environment minus what could reach into another venv or change our settings."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GRACEFUL_")}


def tail(text: str, lines: int = 8) -> str:
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("      | " + line for line in kept)


def run(cmd: Sequence[str], *, timeout: float, cwd: Path, what: str) -> str:
    """Run ``cmd`` to completion within ``timeout``; its output, or CheckFailed."""
    try:
        done = subprocess.run(
            cmd,
            cwd=cwd,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{what}: no end within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise CheckFailed(f"{what}: exit {done.returncode}\n{tail(done.stdout + done.stderr)}")
    return done.stdout


def readme_extras(readme: str) -> set[tuple[str, ...]]:
    """The sets of extras the README's ``pip install`` lines install this package with."""
    found: set[tuple[str, ...]] = set()
    for line in README_INSTALL.findall(readme):
        for word in line.split():
            match = README_TARGET.fullmatch(word.strip("\"'"))
            if match:
                found.add(tuple(sorted(filter(None, (match.group(1) or "").split(",")))))
    return found


def check_readme() -> None:
    """The README documents exactly the installs this check makes."""
    documented = readme_extras((ROOT / "README.md").read_text(encoding="utf-8"))
    checked = set(EXTRAS)
    if documented != checked or not REQUIRED_EXTRAS <= documented:
        raise CheckFailed(
            f"README.md's pip install lines use extras {sorted(documented)}, this check "
            f"installs {sorted(checked)} (and must cover {sorted(REQUIRED_EXTRAS)}): "
            "make the README's install lines and EXTRAS in .ci/check_installs.py the same"
        )


def build_wheel(work: Path) -> Path:
    """Build the wheel once, from a copy of the tree (the source tree stays untouched)."""
    skip = shutil.ignore_patterns(*SKIPPED)

    def ignore(folder: str, names: list[str]) -> set[str]:
        # The temporary folder itself, should TMPDIR lie inside the tree.
        return set(skip(folder, names)) | {n for n in names if Path(folder, n) == work}

    source = work / "source"
    shutil.copytree(ROOT, source, ignore=ignore)
    dist = work / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        timeout=PIP_TIMEOUT,
        cwd=work,
        what="pip wheel",
    )
    wheels = sorted(dist.glob("graceful_gunicorn-*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"pip wheel: expected one graceful_gunicorn wheel, got {wheels}")
    return wheels[0]


def make_venv(work: Path, wheel: Path, extras: tuple[str, ...]) -> Venv:
    """A fresh venv with the wheel installed the way the README says."""
    venv = Venv(work / ("venv-" + ("-".join(extras) or "bare")), extras)
    run([sys.executable, "-m", "venv", str(venv.path)], timeout=VENV_TIMEOUT, cwd=work, what="venv")
    target = str(wheel) + label(extras).removeprefix("graceful_gunicorn")
    run([venv.bin("pip"), "install", "-q", target], timeout=PIP_TIMEOUT, cwd=work, what="pip")
    app = venv.path / "app"
    app.mkdir()
    (app / "app.py").write_text(FLASK_APP if "flask" in extras else WSGI_APP, encoding="utf-8")
    return venv


def versions(venv: Venv) -> str:
    """The installed versions of the distributions that matter here."""
    names = ["gunicorn", "flask", "gevent", "packaging"]
    code = (
        "import importlib.metadata as m\n"
        f"for n in {names!r}:\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: print(n, '-')\n"
    )
    out = run([venv.bin("python"), "-c", code], timeout=VENV_TIMEOUT, cwd=venv.path, what="python")
    return ", ".join(line for line in out.splitlines() if not line.endswith(" -")) or "?"


def wait_for(
    what: str,
    timeout: float,
    found: re.Pattern[str],
    log: Path,
    out: Path,
    proc: subprocess.Popen[bytes],
) -> re.Match[str]:
    """Wait until ``found`` matches the log, or the process ends, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        match = found.search(read(log))
        if match:
            return match
        if proc.poll() is not None:
            raise CheckFailed(
                f"gunicorn exited {proc.returncode} before {what}\n{outputs(log, out)}"
            )
        if time.monotonic() > deadline:
            raise CheckFailed(f"no {what} within {timeout:.0f}s\n{outputs(log, out)}")
        time.sleep(POLL)


def read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def outputs(log: Path, out: Path) -> str:
    """gunicorn's own error line and the last exception, if any, then the last lines."""
    text = read(out) + "\n" + read(log)
    gist = [line for line in text.splitlines() if line.startswith("Error: ")][:1]
    gist += [line for line in text.splitlines() if EXCEPTION.match(line)][-1:]
    return "\n".join(["      " + line.strip() for line in gist] + [tail(text)])


@contextlib.contextmanager
def killed_on_failure(proc: subprocess.Popen[bytes], log: Path) -> Iterator[None]:
    """On any failure, SIGKILL the master and every worker it booted, by PID."""
    try:
        yield
    except BaseException:
        pids = [int(pid) for pid in BOOTING.findall(read(log))]
        if proc.poll() is None:
            proc.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        raise


def serve_once(venv: Venv, worker: str) -> str:
    """Start gunicorn, one request, SIGTERM, exit 0 with the summary; what was seen."""
    log, out = venv.path / f"{worker}.log", venv.path / f"{worker}.out"
    cmd = [venv.bin("gunicorn"), "-c", "python:graceful_gunicorn.conf", "-k", worker]
    cmd += ["--threads", "2"] if worker == "gthread" else []
    cmd += ["-b", "127.0.0.1:0", "--error-logfile", str(log), "--chdir", str(venv.path / "app")]
    cmd += ["app:app"]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            cmd,
            cwd=venv.path / "app",
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with killed_on_failure(proc, log):
        port = int(wait_for("'Listening at'", LISTEN_TIMEOUT, LISTENING, log, out, proc).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            raise CheckFailed(f"GET /: {exc!r}\n{outputs(log, out)}") from exc
        finally:
            conn.close()
        if response.status != 200 or body != BODY:
            raise CheckFailed(f"GET /: {response.status} {body[:80]!r}\n{outputs(log, out)}")
        os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(f"no exit within {EXIT_TIMEOUT:.0f}s of SIGTERM") from exc
        text = read(log)
        missing = [line for line in ("shutdown summary", CALLBACK_LINE) if line not in text]
        if code != 0 or missing:
            raise CheckFailed(f"exit {code}, missing {missing}\n{outputs(log, out)}")
    return "200, SIGTERM, exit 0, on_shutdown ran, shutdown summary logged"


def check_extras(work: Path, wheel: Path, extras: tuple[str, ...]) -> int:
    """Install one venv and serve with each of its worker classes; the number of failures."""
    name = label(extras)
    start = time.monotonic()
    try:
        venv = make_venv(work, wheel, extras)
        installed = versions(venv)
    except CheckFailed as exc:
        say(f"FAIL {name}: install: {exc}")
        return 1
    say(f"ok   {name}: installed ({installed}) in {time.monotonic() - start:.1f}s")
    failures = 0
    for worker in venv.workers():
        start = time.monotonic()
        try:
            seen = serve_once(venv, worker)
        except CheckFailed as exc:
            say(f"FAIL {name} -k {worker}: {exc}")
            failures += 1
        else:
            say(f"OK   {name} -k {worker}: {seen} ({time.monotonic() - start:.1f}s)")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="check_installs-"))
    try:
        check_readme()
        wheel = build_wheel(work)
        say(f"ok   built {wheel.name} in {time.monotonic() - start:.1f}s")
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(EXTRAS)) as pool:
            failures = sum(pool.map(lambda extras: check_extras(work, wheel, extras), EXTRAS))
    except CheckFailed as exc:
        say(f"FAIL {exc}")
        failures = 1
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    verdict = "passed" if failures == 0 else f"FAILED ({failures} failure(s))"
    say(f"check_installs: {verdict} in {time.monotonic() - start:.1f}s")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
