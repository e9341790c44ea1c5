"""A pytest plugin bench/server_suite.py loads into llama.cpp's server test suite
(``-p server_suite_plugin``; the harness copies this file next to the suite's
conftest.py).

* ``ServerPreset.load_all`` (the suite's session start, which starts every preset
  server once so that pytest-xdist workers find the Hugging Face downloads
  cached) becomes a no-op: the launcher maps every model to one local file, so
  there is nothing to download, and its router-mode preset would otherwise abort
  the whole session in cortex mode.
* Each test phase runs under a SIGALRM deadline (``$SERVER_SUITE_TEST_TIMEOUT``
  seconds, default 120): the suite's requests wait up to 600 s, and a server that
  never answers should cost one failure, not the run.
* Every report is appended as one JSON line to ``$SERVER_SUITE_RESULTS``:
  nodeid, phase, outcome, duration, the first line of the error and the tail of
  the captured output (the server's log goes there).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import Any, Generator, Iterator

import pytest

_TAIL = 3000


class SuiteTestTimeout(Exception):
    """A test phase ran past $SERVER_SUITE_TEST_TIMEOUT."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise SuiteTestTimeout(f"test phase ran past {os.environ.get('SERVER_SUITE_TEST_TIMEOUT', '120')} s "
                           "(server_suite_plugin deadline)")


def _no_preload() -> None:
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    utils = sys.modules.get("utils")
    if utils is not None and hasattr(utils, "ServerPreset"):
        utils.ServerPreset.load_all = staticmethod(_no_preload)
    signal.signal(signal.SIGALRM, _on_alarm)


def _deadline() -> int:
    return int(os.environ.get("SERVER_SUITE_TEST_TIMEOUT", "120"))


@contextlib.contextmanager
def _alarm() -> Iterator[None]:
    """SIGALRM after the deadline while one test phase runs."""
    signal.alarm(_deadline())
    try:
        yield
    finally:
        signal.alarm(0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _alarm():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _alarm():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    with _alarm():
        yield


def _first_error_line(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple):  # a skip: (path, lineno, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if message:
        return str(message).strip().splitlines()[0] if str(message).strip() else ""
    text = str(longrepr).strip()
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return errors[0] if errors else (text.splitlines()[-1] if text else "")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("SERVER_SUITE_RESULTS")
    if not path:
        return
    record: dict[str, Any] = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                              "duration": round(report.duration, 3)}
    if report.outcome != "passed":
        record["error"] = _first_error_line(report)
        if report.failed:
            record["wasxfail"] = hasattr(report, "wasxfail")
            out = report.capstdout + report.capstderr
            record["output_tail"] = out[-_TAIL:]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
