"""The fault suite's tally: what each test injected, survived and lost, summed into a report.

A pytest plugin (registered in ``tests/conftest.py``) giving every test a ``tally`` fixture::

    def test_label_studio_stopped_mid_sync(tally: Tally) -> None:
        with tally.fault("label_studio.stopped_mid_sync"):  # injected on entry,
            ...                                          # survived if the block passes
        tally.annotations_lost(len(expected - stored))    # record, then assert == 0
        tally.duplicate_pushes(duplicates)
        tally.bad_data_crash()                            # a bad input that crashed the planner

``fault(name)`` counts the fault as injected when the block starts and as survived when it
ends without an exception (a failed assertion inside counts it injected, not survived). The
loss counters take a number (0 is worth recording: the report shows what was checked).
Record before asserting, so a red run's report still shows the numbers.

``pytest -m fault --fault-report PATH`` writes the totals as JSON::

    {"faults_injected": 12, "faults_survived": 12, "annotations_lost": 0,
     "duplicate_pushes": 0, "crashes_on_bad_data": 0, "checks": {...},
     "by_fault": {"label_studio.stopped_mid_sync": {"injected": 1, "survived": 1}, ...},
     "tests": {"passed": 9, "failed": 0}}

Each test's tally travels in its report's ``user_properties``, so the totals are right under
pytest-xdist too (``-n 2``: the workers' reports reach the controller, which writes the file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_KEY = "fault_tally"
COUNTERS = ("annotations_lost", "duplicate_pushes", "crashes_on_bad_data")


@dataclass
class Tally:
    """One test's faults and losses (see the module docstring)."""

    injected: dict[str, int] = field(default_factory=dict)
    survived: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    checks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    @contextmanager
    def fault(self, name: str) -> Iterator[None]:
        """Inject fault ``name`` inside the block; survived when the block passes."""
        self.injected[name] = self.injected.get(name, 0) + 1
        yield
        self.survived[name] = self.survived.get(name, 0) + 1

    def annotations_lost(self, n: int) -> None:
        self._add("annotations_lost", n)

    def duplicate_pushes(self, n: int) -> None:
        self._add("duplicate_pushes", n)

    def bad_data_crash(self, n: int = 1) -> None:
        self._add("crashes_on_bad_data", n)

    def _add(self, counter: str, n: int) -> None:
        if n < 0:
            raise ValueError(f"{counter}: a count cannot be negative, got {n}")
        self.counts[counter] += n
        self.checks[counter] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "injected": self.injected,
            "survived": self.survived,
            "counts": self.counts,
            "checks": self.checks,
        }


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-report",
        metavar="PATH",
        default=None,
        help="write the fault suite's totals (faults injected/survived, losses) as JSON",
    )


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """This test's tally; attached to its report when the test ends."""
    found = Tally()
    yield found
    request.node.user_properties.append((_KEY, found.as_dict()))


@dataclass
class _Totals:
    by_fault: dict[str, dict[str, int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    checks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    tests: dict[str, int] = field(default_factory=lambda: {"passed": 0, "failed": 0})

    def add(self, one: dict[str, Any], passed: bool) -> None:
        for kind in ("injected", "survived"):
            for name, n in one[kind].items():
                self.by_fault.setdefault(name, {"injected": 0, "survived": 0})[kind] += n
        for counter in COUNTERS:
            self.counts[counter] += one["counts"][counter]
            self.checks[counter] += one["checks"][counter]
        self.tests["passed" if passed else "failed"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "faults_injected": sum(f["injected"] for f in self.by_fault.values()),
            "faults_survived": sum(f["survived"] for f in self.by_fault.values()),
            **self.counts,
            "checks": self.checks,
            "by_fault": dict(sorted(self.by_fault.items())),
            "tests": self.tests,
        }


class _Collector:
    """Sums the tallies of every test report (the controller's, under xdist) and writes them."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.totals = _Totals()
        self.failed: set[str] = set()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.failed.add(report.nodeid)
        if report.when != "teardown":  # the fixture attaches the tally at teardown
            return
        for key, value in report.user_properties:
            if key == _KEY:
                self.totals.add(value, passed=report.nodeid not in self.failed)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.path is None or hasattr(session.config, "workerinput"):
            return
        out = Path(self.path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.totals.as_dict(), indent=2) + "\n", encoding="utf-8")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--fault-report")
    config.pluginmanager.register(_Collector(path), "fault-tally-collector")
