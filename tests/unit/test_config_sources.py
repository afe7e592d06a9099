"""Where a setting came from: the line of a key in the file, the variables meant as settings."""

from __future__ import annotations

import tomllib

from planner.config_sources import key_lines, setting_variables

TEXT = """# top
title = "x"
[label_studio]   # the server
url = "http://a"
"project_id" = 3
[planning]
split_ratios.train = 0.8
note = '''
batch_size = 1
'''
hierarchy = { Wheelchair = "Person" }
[quotas."Traffic light"]
target = 4
[[runs]]
when = 1
"""


def test_key_lines_finds_tables_keys_dotted_and_quoted_keys() -> None:
    tomllib.loads(TEXT)  # the text is valid TOML
    lines = key_lines(TEXT)
    assert lines[("title",)] == 2
    assert lines[("label_studio",)] == 3
    assert lines[("label_studio", "url")] == 4
    assert lines[("label_studio", "project_id")] == 5
    assert lines[("planning", "split_ratios", "train")] == 7
    assert lines[("planning", "note")] == 8
    assert ("planning", "batch_size") not in lines, "inside a multi-line string"
    assert lines[("planning", "hierarchy")] == 11
    assert lines[("quotas", "Traffic light")] == 12
    assert lines[("quotas", "Traffic light", "target")] == 13
    assert lines[("runs", "when")] == 15


def test_setting_variables_leave_out_the_planners_other_variables() -> None:
    environ = {
        "PLANNER_PLANNING__BATCH_SIZE": "3",
        "planner_stop__yield_window": "2",
        "PLANNER_CONFIG": "planner.toml",
        "PLANNER_LS_HOME": "/opt/ls",
        "PLANNER_TEST_BLOCK_AT": "8",
        "PATH": "/bin",
    }
    assert setting_variables(environ) == {
        "PLANNER_PLANNING__BATCH_SIZE": ("planning", "batch_size"),
        "planner_stop__yield_window": ("stop", "yield_window"),
    }
