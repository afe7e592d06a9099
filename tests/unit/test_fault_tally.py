"""The fault suite's tally plugin: per-test records summed into the ``--fault-report`` JSON."""

from __future__ import annotations

import json

import pytest

SUITE = """
def test_survived(tally):
    with tally.fault("ls.down"):
        pass
    tally.annotations_lost(0)
    tally.duplicate_pushes(0)

def test_not_survived(tally):
    with tally.fault("ls.down"):
        tally.annotations_lost(2)
        assert False, "the daemon did not resume"

def test_bad_data(tally):
    with tally.fault("data.huge_rle"):
        tally.bad_data_crash()
"""


def test_the_report_sums_every_test_and_a_failed_block_is_not_survived(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_faults=SUITE)
    report = pytester.path / "out" / "faults.json"
    result = pytester.runpytest("-p", "tests.faults.tally", "--fault-report", str(report))
    result.assert_outcomes(passed=2, failed=1)
    totals = json.loads(report.read_text())
    assert totals["faults_injected"] == 3
    assert totals["faults_survived"] == 2
    assert totals["by_fault"] == {
        "data.huge_rle": {"injected": 1, "survived": 1},
        "ls.down": {"injected": 2, "survived": 1},
    }
    assert (totals["annotations_lost"], totals["duplicate_pushes"]) == (2, 0)
    assert totals["crashes_on_bad_data"] == 1
    assert totals["checks"] == {
        "annotations_lost": 2,
        "duplicate_pushes": 1,
        "crashes_on_bad_data": 1,
    }
    assert totals["tests"] == {"passed": 2, "failed": 1}


def test_without_the_option_nothing_is_written(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_faults=SUITE)
    pytester.runpytest("-p", "tests.faults.tally").assert_outcomes(passed=2, failed=1)
    assert not list(pytester.path.rglob("*.json"))
