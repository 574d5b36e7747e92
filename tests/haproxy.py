"""A real HAProxy (Debian's ``haproxy``) in front of gunicorn servers on 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .server import BOOT_TIMEOUT, free_port, http_get, wait_until

CONFIG = """\
global
    log stdout format raw local0 info
    maxconn 512

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    # A check's answer may take this long (without it HAProxy waits ``inter``,
    # 300 ms below): a server counts as down when it says so (503) or refuses
    # connections, not when a busy machine is slow. On CI's 2 busy cores the one
    # server left serving while the other restarted was once stalled for 0.9 s:
    # two checks timed out, both servers were down, thousands of requests got 503.
    timeout check 2s
    # A kept-alive server connection that the server closed just as HAProxy
    # sent a request on it (a race of HTTP keep-alive itself) is retried; a
    # refused connection is not: that failure is what this test looks for.
    retries 1
    retry-on empty-response

frontend web
    bind 127.0.0.1:{port}
    default_backend app

backend app
    balance roundrobin
    option httpchk GET {check_path}
    http-check expect status 200
    default-server inter 300ms fastinter 300ms downinter 300ms fall 2 rise 2
{servers}
"""


def haproxy_path() -> str | None:
    """The haproxy binary (``.ci/run`` installs Debian's package)."""
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )


class HAProxy:
    """One HAProxy process balancing over ``backends`` (ports), checking ``check_path``."""

    def __init__(self, workdir: Path, backends: Sequence[int], check_path: str) -> None:
        self.port = free_port()
        self.config_path = workdir / f"haproxy-{self.port}.cfg"
        self.log_path = workdir / f"haproxy-{self.port}.log"
        servers = "\n".join(
            f"    server s{i} 127.0.0.1:{port} check" for i, port in enumerate(backends)
        )
        self.config_path.write_text(
            CONFIG.format(port=self.port, check_path=check_path, servers=servers)
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        binary = haproxy_path()
        assert binary is not None, "haproxy is not installed (.ci/run installs it)"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_until(lambda: http_get(self.port, "/", 2).ok, BOOT_TIMEOUT, "haproxy to serve")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def state_changes(self, server: int) -> list[str]:
        """ "UP"/"DOWN" for each state change HAProxy logged for server ``s<server>``."""
        return re.findall(rf"Server app/s{server} is (UP|DOWN)", self.log())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
