"""The configuration model: TOML + environment, one clear line per bad key, secrets kept out."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from planner.errors import ConfigError
from planner.settings import Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "planner.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PLANNER_"):
            monkeypatch.delenv(name)


def test_defaults_need_no_file() -> None:
    settings = load_settings(None)
    assert settings.planning.batch_size == 100
    assert settings.planning.split_ratios == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert settings.planning.max_oversample == 5.0
    assert settings.label_studio.token is None


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[label_studio]
url = "http://127.0.0.1:9090"
project_id = 3
[planning]
batch_size = 40
count_kind = "instances"
hierarchy = { Wheelchair = "Person" }
[quotas.Wheelchair]
splits = { train = 400, val = 50, test = 50 }
min_per_cycle = 20
criticality = 3
[schedule]
sync_interval = "PT2M"
timezone = "Europe/Berlin"
""",
    )
    settings = load_settings(path)
    assert str(settings.label_studio.url) == "http://127.0.0.1:9090/"
    assert settings.label_studio.project_id == 3
    assert settings.planning.batch_size == 40
    assert settings.planning.count_kind == "instances"
    assert settings.planning.hierarchy == {"Wheelchair": "Person"}
    quota = settings.quotas["Wheelchair"]
    assert quota.splits == {"train": 400, "val": 50, "test": 50}
    assert (quota.min_per_cycle, quota.criticality) == (20, 3.0)
    assert settings.schedule.sync_interval == timedelta(minutes=2)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[planning]\nbatch_size = 40\nseed = 1\n")
    monkeypatch.setenv("PLANNER_PLANNING__BATCH_SIZE", "250")
    settings = load_settings(path)
    assert settings.planning.batch_size == 250
    assert settings.planning.seed == 1
    assert load_settings(path, environ=False).planning.batch_size == 40


def test_a_quota_from_the_environment_overrides_the_files_whatever_the_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[quotas.Wheelchair]\ntarget = 10\n[quotas.Car]\ntarget = 5\n")
    # the environment's names reach the settings lowercased
    monkeypatch.setenv("PLANNER_QUOTAS__Wheelchair__TARGET", "20")
    monkeypatch.setenv("PLANNER_QUOTAS__CAR__CRITICALITY", "2")
    monkeypatch.setenv("PLANNER_QUOTAS__Bicycle__TARGET", "7")
    quotas = load_settings(path).quotas
    assert sorted(quotas) == ["Car", "Wheelchair", "bicycle"]
    assert (quotas["Wheelchair"].target, quotas["Car"].target) == (20, 5)
    assert quotas["Car"].criticality == 2.0
    assert quotas["bicycle"].target == 7, "no quota in the file to take the spelling from"


def test_every_bad_line_names_key_value_and_what_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[planning]
batch_size = -5
weight_scheme = "foo"
batchsize = 3
split_ratios = { train = 0.5, val = 0.1 }
[schedule]
timezone = "Mars/Olympus"
report_at = "25:00"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    lines = str(info.value).splitlines()
    assert str(path) in lines[0]
    by_key = {line.strip().split(" ", 1)[0].rstrip(":"): line for line in lines[1:]}
    assert "-5" in by_key["planning.batch_size"]
    assert "greater than 0" in by_key["planning.batch_size"]
    assert "'foo'" in by_key["planning.weight_scheme"]
    assert "'balanced'" in by_key["planning.weight_scheme"]
    assert "unknown key" in by_key["planning.batchsize"]
    assert "sum to 0.6" in by_key["planning.split_ratios"]
    assert "'Mars/Olympus'" in by_key["schedule.timezone"]
    assert "IANA" in by_key["schedule.timezone"]
    assert "HH:MM" in by_key["schedule.report_at"]
    assert len(lines) == 7


def test_bad_environment_value_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_PLANNING__BATCH_SIZE", "many")
    with pytest.raises(ConfigError, match=r"planning\.batch_size = 'many'.*integer"):
        load_settings(None)


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[planning\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_quota_split_targets_above_total_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[quotas.Crack]\ntarget = 10\nsplits = { train = 20 }\n")
    with pytest.raises(ConfigError, match=r"quotas\.Crack\.splits = .*sum to 20, above target 10"):
        load_settings(path)


def test_secret_in_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[label_studio]\ntoken = "hunter2-token"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "PLANNER_LABEL_STUDIO__TOKEN" in str(info.value)
    assert "hunter2-token" not in str(info.value)


def test_secret_in_file_does_not_hide_the_other_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[label_studio]\ntoken = "hunter2-token"\nurl = 5\n[quotas.Crack]\ntarget = -3\n',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=False)
    keys = [line.strip().split(" ")[0].rstrip(":") for line in str(info.value).splitlines()[1:]]
    assert keys == ["label_studio.token", "label_studio.url", "quotas.Crack.target"]
    assert "hunter2-token" not in str(info.value)


def test_secret_alone_in_a_valid_file_is_still_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[dashboard]\ntoken = "t0ken"\n[planning]\nbatch_size = 50\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=False)
    assert str(info.value).count("\n") == 1
    assert "dashboard.token:" in str(info.value)
    assert "t0ken" not in str(info.value)


def test_secret_from_environment_is_masked_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", "hunter2-token")
    settings = load_settings(None)
    assert settings.label_studio.token is not None
    assert settings.label_studio.token.get_secret_value() == "hunter2-token"
    for text in (repr(settings), str(settings), str(settings.public_dict())):
        assert "hunter2-token" not in text
    assert settings.public_dict()["label_studio"]["token"] == "**********"


def test_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n", encoding="utf-8")
    path = write(tmp_path, f'[label_studio]\ntoken_file = "{secret}"\n')
    token = load_settings(path).label_studio.token
    assert token is not None
    assert token.get_secret_value() == "from-a-file"


def test_unreadable_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, f'[label_studio]\ntoken_file = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match="cannot read token_file"):
        load_settings(path)


def test_password_in_database_url_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nurl = "postgresql://planner:pw123@127.0.0.1/test"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "PLANNER_STORE__PASSWORD" in str(info.value)
    assert "pw123" not in str(info.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.planning = settings.planning  # type: ignore[misc]


def test_dashboard_secrets_come_from_env_or_file_only(tmp_path: Path) -> None:
    config = tmp_path / "planner.toml"
    config.write_text('[dashboard]\nwebhook_secret = "abc"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="PLANNER_DASHBOARD__WEBHOOK_SECRET"):
        load_settings(config, environ=False)
    secret_file = tmp_path / "token"
    secret_file.write_text("from-a-file\n", encoding="utf-8")
    config.write_text(f'[dashboard]\ntoken_file = "{secret_file}"\n', encoding="utf-8")
    settings = load_settings(config, environ=False)
    assert settings.dashboard.token is not None
    assert settings.dashboard.token.get_secret_value() == "from-a-file"
    assert "from-a-file" not in json.dumps(settings.public_dict())


def test_the_readme_documents_every_setting() -> None:
    from pydantic import BaseModel

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    keys = []
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            keys += [f"{name}.{sub}" for sub in section.model_fields]
        else:
            keys.append(name)
    assert len(keys) > 50
    missing = [key for key in keys if f"`{key}`" not in readme]
    assert not missing, f"add these to the README's configuration reference: {missing}"


def test_a_split_named_total_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "planner.toml"
    config.write_text("[planning.split_ratios]\ntrain = 0.9\ntotal = 0.1\n")
    with pytest.raises(ConfigError, match="'total' names the sum over the splits"):
        load_settings(config, environ=False)


def test_a_misfire_grace_under_a_second_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "planner.toml"
    config.write_text("[schedule]\nmisfire_grace = 0.5\n")
    with pytest.raises(ConfigError, match=r"schedule\.misfire_grace.*at least 1 second"):
        load_settings(config, environ=False)


@pytest.mark.parametrize(
    ("section", "file_key", "secret_env"),
    [
        ("dashboard", "webhook_secret_file", "PLANNER_DASHBOARD__TOKEN"),
        ("dashboard", "token_file", "PLANNER_DASHBOARD__WEBHOOK_SECRET"),
        ("label_studio", "token_file", "PLANNER_DASHBOARD__TOKEN"),
        ("store", "password_file", "PLANNER_DASHBOARD__WEBHOOK_SECRET"),
    ],
)
def test_an_unreadable_secret_file_names_its_key_and_shows_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, file_key: str, secret_env: str
) -> None:
    # the section's input holds the secrets the environment gave it beside the missing file
    path = write(tmp_path, f'[{section}]\n{file_key} = "{tmp_path / "missing"}"\n')
    monkeypatch.setenv(secret_env, "SUPERSECRET-1")
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__URL", "http://user:URLPASS-2@127.0.0.1:8080")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = str(info.value)
    assert "SUPERSECRET-1" not in text
    assert "URLPASS-2" not in text
    lines = text.splitlines()[1:]
    assert len(lines) == 1, lines
    assert lines[0].strip().startswith(f"{section}.{file_key}: cannot read"), lines


def test_a_section_shown_whole_masks_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_DASHBOARD", '[1, {"token": "SUPERSECRET-3"}]')
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert "SUPERSECRET-3" not in str(info.value)
    assert "'token': '**********'" in str(info.value)


UNUSABLE_WORKERS = [  # key, value, what the message suggests
    ("broker_url", "http://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("broker_url", "amqp://guest@127.0.0.1//", "rediss://"),
    ("device", "gpu", "cuda:N"),
    ("device", "cuda:x", "cuda:N"),
    ("device", "CUDA", "cuda:N"),
]


@pytest.mark.parametrize(("key", "value", "words"), UNUSABLE_WORKERS)
def test_a_broker_or_device_the_workers_cannot_use_is_refused_at_load(
    tmp_path: Path, key: str, value: str, words: str
) -> None:
    path = write(tmp_path, f'[workers]\n{key} = "{value}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=False)
    line = str(info.value).splitlines()[1].strip()
    assert line.startswith(f"workers.{key} = {value!r}: write"), line
    assert words in line


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_device_the_workers_pick_is_accepted(tmp_path: Path, device: str) -> None:
    path = write(tmp_path, f'[workers]\ndevice = "{device}"\n')
    assert load_settings(path, environ=False).workers.device == device


def test_redis_brokers_are_accepted_and_an_empty_one_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://redis.example:6380/1"):
        path = write(tmp_path, f'[workers]\nbroker_url = "{url}"\n')
        assert load_settings(path).workers.broker_url == url
    monkeypatch.setenv("PLANNER_WORKERS__BROKER_URL", "")
    assert load_settings(path).workers.broker_url is None, "scores in-process"


def test_a_bad_value_names_the_source_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[planning]\nbatch_size = 5\n")
    monkeypatch.setenv("PLANNER_PLANNING__BATCH_SIZE", "abc")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    header, line = str(info.value).splitlines()
    assert header == "invalid configuration in the environment:", "not the file"
    assert line.strip().startswith("planning.batch_size = 'abc': ")
    assert line.endswith(" (from PLANNER_PLANNING__BATCH_SIZE)")

    path = write(tmp_path, "[planning]\nseed = -1\n")
    monkeypatch.setenv("PLANNER_SCHEDULE__SYNC_INTERVAL", "soon")
    monkeypatch.delenv("PLANNER_PLANNING__BATCH_SIZE")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    header, *lines = str(info.value).splitlines()
    assert header == f"invalid configuration in {path} and the environment:"
    assert "(from PLANNER_SCHEDULE__SYNC_INTERVAL)" in lines[1]
    assert "PLANNER_" not in lines[0]


def test_an_unknown_planner_variable_is_a_warning_naming_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PLANNER_PLANING__BATCH_SIZE", "3")
    monkeypatch.setenv("PLANNER_NOTHING_LIKE_IT", "1")
    for own in ("PLANNER_CONFIG", "PLANNER_LS_HOME", "PLANNER_TEST_HOOK_DIR"):
        monkeypatch.setenv(own, "/tmp/x")  # read by the planner or its tests, not settings
    with caplog.at_level("WARNING", logger="planner.settings"):
        settings = load_settings(None)
    assert settings.planning.batch_size == 100
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("PLANNER_NOTHING_LIKE_IT names no setting and is ignored")
    assert warnings[1] == (
        "PLANNER_PLANING__BATCH_SIZE names no setting and is ignored; "
        "did you mean PLANNER_PLANNING__BATCH_SIZE?"
    )
    caplog.clear()
    load_settings(None, environ=False)
    assert not caplog.records, "the environment is not read"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("PLANNER_PLANNING__STRATA_FIELDS", 'a list is read from the environment as JSON, e.g. ["'),
        ("PLANNER_DASHBOARD", "PLANNER_DASHBOARD__KEY"),
    ],
)
def test_a_list_or_table_from_the_environment_that_is_not_json_is_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, words: str
) -> None:
    monkeypatch.setenv(name, "time")
    monkeypatch.setenv("PLANNER_PLANNING__BATCH_SIZE", "not json, but no table either")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 1, lines
    assert lines[0].strip().startswith(f"{name}: ")
    assert words in lines[0]


def test_an_unknown_key_names_the_closest_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[quotas.Car]\ntarget = 3\ncritcality = 2\n[workers]\ndevise = "cpu"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=False)
    lines = str(info.value).splitlines()[1:]
    assert lines[0].endswith(
        "unknown key; check the spelling against the configuration "
        "reference; did you mean criticality? (line 3)"
    )
    assert lines[1].endswith("did you mean device? (line 5)")


def test_a_config_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config .*: it is a folder; pass the path"):
        load_settings(tmp_path)
    utf16 = tmp_path / "utf16.toml"
    utf16.write_bytes("[planning]\nseed = 1\n".encode("utf-16"))  # starts with \xff\xfe
    with pytest.raises(ConfigError, match=r"byte 0xff at offset 0 is not UTF-8; save the file"):
        load_settings(utf16)
    # reading /proc/self/mem at offset 0 fails with EIO, as a failing disk would
    with pytest.raises(ConfigError, match="cannot read config /proc/self/mem: Input/output error"):
        load_settings(Path("/proc/self/mem"))


def test_a_bad_key_names_its_line_in_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """# a comment quoting \"\"\" is no string
[planning]
batch_size = -5
strata_fields = [
  "time",
]
"seed" = -1

[quotas.Car]
target = 5
splits = { train = 10 }
[dashboard]
token = "abc"
[workers]
device = "gpu"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=False)
    lines = [line.strip() for line in str(info.value).splitlines()[1:]]
    assert lines[0].startswith("dashboard.token: secrets are not read")
    assert [line.rsplit(" (", 1)[1] for line in lines] == [
        "line 13)",
        "line 3)",
        "line 7)",
        "line 11)",
        "line 15)",
    ], lines
    assert lines[3].startswith("quotas.Car.splits = {'train': 10}: per-split targets sum to 10")


def test_a_bare_number_as_a_quota_says_to_write_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[quotas]\nPed = 5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).splitlines()[1].strip() == (
        "quotas.Ped = 5: a quota is a table; write [quotas.Ped] with target = 5 on the next "
        "line (and splits, min_per_cycle, criticality as needed) (line 2)"
    )
    monkeypatch.setenv("PLANNER_QUOTAS__PED", "5")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert str(info.value).splitlines()[1].strip() == (
        "quotas.ped = 5: a quota is a table; set PLANNER_QUOTAS__PED__TARGET=5 instead "
        "(from PLANNER_QUOTAS__PED)"
    )


def test_a_missing_file_named_by_planner_config_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("PLANNER_CONFIG", str(missing))
    with pytest.raises(ConfigError, match=r"named by \$PLANNER_CONFIG: point \$PLANNER_CONFIG at"):
        load_settings(missing)
    with pytest.raises(ConfigError, match="pass the path of an existing file with --config"):
        load_settings(tmp_path / "other.toml")  # --config, whatever the variable says


def test_the_readme_gives_the_soft_time_limit_the_code_derives() -> None:
    from planner.settings import worker_time_limits

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if "`workers.soft_time_limit_s` |" in line)
    minus = "\N{MINUS SIGN}"
    assert f"hard {minus} 60 s; under 600 s, hard {minus} a tenth of it (rounded down" in row
    assert [
        worker_time_limits(hard, None, None, retry_backoff_max_s=300)[1]
        for hard in (2, 10, 599, 600, 10800)
    ] == [
        1,
        9,
        540,
        540,
        10740,
    ]
