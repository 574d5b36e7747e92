"""A stop that cuts requests in flight counts them as abandoned (review defect 11)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from .conftest import WORKER_CLASSES
from .scenarios import APP, GRACEFUL, send_in_background, worker_args
from .server import Gunicorn, wait_until


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_quick_stop_counts_the_requests_it_cuts(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. one worker holds a request 2. SIGINT to the master (a quick stop: no drain).

    Result: the worker's report and the master's summary say 1 abandoned, 0 drained.
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class, workers=1), APP])
    server.wait_ready(workers=1)
    results, threads = send_in_background(server, ["/hold/q"])
    wait_until(lambda: server.events("entered"), 30, "the held request")
    server.signal(signal.SIGINT)
    assert server.wait_exit(30) == 0
    for thread in threads:
        thread.join(10)
    log = server.log()
    assert "(reason quick): 0 request(s) drained, 1 abandoned" in log, log
    assert "0 request(s) drained, 1 abandoned; callbacks" in log.split("shutdown summary")[1]
    assert not results[0].ok
