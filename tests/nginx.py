"""A real nginx (Debian's ``nginx-light``) in front of gunicorn servers on 127.0.0.1.

It serves ``example_app/nginx.conf``, the file users copy, with only its
addresses changed, inside a minimal main configuration that keeps every file
in the test's folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .server import BOOT_TIMEOUT, REPO, free_port, http_get, wait_until

SHIPPED = REPO / "example_app" / "nginx.conf"

MAIN = """\
daemon off;
# One process: nginx started as root would run its workers as another user.
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format upstreams '$msec $status $upstream_addr $upstream_status';
    access_log {folder}/access.log upstreams;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {site};
}}
"""


def nginx_path() -> str | None:
    """The nginx binary (``.ci/run`` installs Debian's ``nginx-light``)."""
    default = "/usr/sbin/nginx"
    return shutil.which("nginx") or (default if os.path.exists(default) else None)


def site_config(port: int, backends: Sequence[int]) -> str:
    """The shipped file, listening on ``port`` and balancing over ``backends``."""
    text = SHIPPED.read_text()
    servers = re.findall(r"^    server 127\.0\.0\.1:\d+ .*$", text, re.M)
    assert len(servers) == 2 == len(backends), "example_app/nginx.conf lists two servers"
    for index, line in enumerate(servers):
        text = text.replace(line, re.sub(r":\d+ ", f":{backends[index]} ", line), 1)
    text, listens = re.subn(r"listen 127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{port};", text)
    assert listens == 1
    return text


class Nginx:
    """One nginx process serving the shipped site config over ``backends`` (ports)."""

    def __init__(self, workdir: Path, backends: Sequence[int]) -> None:
        self.port = free_port()
        self.folder = workdir / f"nginx-{self.port}"
        self.folder.mkdir()
        site = self.folder / "site.conf"
        site.write_text(site_config(self.port, backends))
        self.config_path = self.folder / "nginx.conf"
        self.config_path.write_text(MAIN.format(folder=self.folder, site=site))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str = "/") -> Nginx:
        binary = nginx_path()
        assert binary is not None, "nginx is not installed (.ci/run installs nginx-light)"
        with open(self.folder / "stderr.log", "wb") as log:
            self.process = subprocess.Popen(
                [binary, "-p", str(self.folder), "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_until(lambda: http_get(self.port, ready_path, 2).ok, BOOT_TIMEOUT, "nginx to serve")
        return self

    def access_log(self) -> str:
        """One line per request: time, status, the upstreams tried and their statuses."""
        path = self.folder / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
