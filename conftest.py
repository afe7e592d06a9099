"""Loaded by every pytest run in this repository, whatever paths it is given (an option's
value such as ``--fault-report docs/reliability.json`` is one): the fault suite's ``tally``
fixture and ``--fault-report`` (``tests/faults/tally.py``), and pytester for its own test."""

pytest_plugins = ("tests.faults.tally", "pytester")
