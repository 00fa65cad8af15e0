"""Configuration (flakebot/config.py): defaults, checks, errors, secrets, the example file."""
from __future__ import annotations

import dataclasses
import datetime
import re
from pathlib import Path

import pytest

from flakebot.config import (
    CLI_OVERRIDES,
    SECRET_KEYS,
    Config,
    ConfigError,
    default_db_path,
    load_config,
    reference_rows,
    toml_value,
)
from flakebot.model import KNOWN_TESTS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "flakebot.example.toml"
DOCS = ROOT / "docs" / "configuration.md"
KNOWN = ", ".join(KNOWN_TESTS)


def write(tmp_path: Path, text: str, name: str = "flakebot.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load_text(tmp_path: Path, text: str, env=None) -> Config:
    return load_config(write(tmp_path, text), env=env if env is not None else {})


# --------------------------------------------------------------------------
# Defaults


def test_defaults_with_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./flakebot.toml here
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.source is None
    assert cfg.executor.name == "sim" and cfg.sim.hosts == 4 and cfg.sim.seed == 0
    assert cfg.tests.names == ("vfio_user_nvme_restart_vm", "vfio_user_virtio_blk_restart_vm")
    assert cfg.tests.limit_s == 90 and cfg.tests.slow_threshold_s == 60.0
    assert cfg.bisect.confidence == 0.95 and cfg.bisect.wait_bins_s == (20.0, 60.0, 80.0)
    assert cfg.github.tracking_issues == {"vfio_user_nvme_restart_vm": 3322}
    assert cfg.gerrit.labels == {} and cfg.commands.allow == ()
    assert cfg.nightly.cron == "30 2 * * *" and cfg.nightly.timezone == "UTC"


def test_every_section_and_key_has_a_checked_default():
    rows = list(reference_rows())
    assert len(rows) == len({(s, k) for s, k, *_ in rows}) >= 55
    for section, key, type_name, default, doc in rows:
        assert doc and type_name
        # the default passes its own check
        cfg = Config().with_overrides({f"{section}.{key}": default})
        assert cfg == Config()


def test_empty_file_is_all_defaults(tmp_path):
    cfg = load_text(tmp_path, "# nothing here\n")
    assert cfg == Config()
    assert cfg.source == tmp_path / "flakebot.toml"


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sim.seed = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.github.tracking_issues["vfio_user_virtio_blk_restart_vm"] = 1  # type: ignore[index]
    assert cfg.github.tracking_issues == {"vfio_user_nvme_restart_vm": 3322}
    hash(cfg)


# --------------------------------------------------------------------------
# Good values


@pytest.mark.parametrize("toml, key, expected", [
    ("[bisect]\nconfidence = 1", "bisect.confidence", 1.0),  # int accepted for a number
    ("[bisect]\nconfidence = 0.5", "bisect.confidence", 0.5),
    ("[jenkins]\npoll_seconds = 5", "jenkins.poll_seconds", 5.0),
    ("[bisect]\nwait_bins_s = [10, 45.5]", "bisect.wait_bins_s", (10.0, 45.5)),
    ("[bisect]\nwait_bins_s = []", "bisect.wait_bins_s", ()),
    ("[tests]\nnames = [\"vfio_user_virtio_scsi_restart_vm\"]", "tests.names", ("vfio_user_virtio_scsi_restart_vm",)),
    ("[tests]\nlimit_s = 30\nslow_threshold_s = 20\n[bisect]\nwait_bins_s = [10, 20]", "tests.limit_s", 30),
    ("[executor]\nname = \"jenkins\"\n[jenkins]\nurl = \"https://ci.example.org/\"", "executor.name", "jenkins"),
    ("[gerrit]\nlabels = { Verified = -1, \"Code-Review\" = 0 }", "gerrit.labels", {"Verified": -1, "Code-Review": 0}),
    ("[github]\ntracking_issues = {}", "github.tracking_issues", {}),
    ("[github]\napi_url = \"https://ghe.example.org/api/v3\"\nrepo = \"my-org/spdk.fork\"", "github.repo", "my-org/spdk.fork"),
    ("[nightly]\ncron = \"0 3 * * mon-fri\"\ntimezone = \"Europe/Warsaw\"", "nightly.timezone", "Europe/Warsaw"),
    ("[nightly]\ncron = \"*/30 1-5 1,15 * *\"", "nightly.cron", "*/30 1-5 1,15 * *"),
    ("[commands]\nallow = [\"alice\", \"spdk-maintainers\"]\nrefuse_strangers = true", "commands.allow", ("alice", "spdk-maintainers")),
    ("[jenkins]\ntoken_env = \"\"", "jenkins.token_env", ""),
    ("[sim]\np_hang = 0.7\np_near_miss = 0.3", "sim.p_hang", 0.7),
])
def test_good_values(tmp_path, toml, key, expected):
    value = load_text(tmp_path, toml).get(key)
    assert value == expected and type(value) is type(expected) or (
        isinstance(expected, dict) and dict(value) == expected)


def test_relative_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    cfg = load_config(write(sub, '[store]\ndb = "data/fb.db"\n[spdk]\nrepo = "~/spdk"\n'
                                 '[report]\ndir = "/srv/reports"\n'), env={})
    assert cfg.store.db == str(sub / "data" / "fb.db")
    assert cfg.spdk.repo == str(Path.home() / "spdk")
    assert cfg.report.dir == "/srv/reports"
    assert cfg.db_path() == sub / "data" / "fb.db"
    assert cfg.spdk_dir() == Path.home() / "spdk"


def test_nightly_cron_fields_for_apscheduler():
    cfg = Config().with_overrides({"nightly.cron": "0 3 * * 0,6", "nightly.timezone": "Europe/Warsaw"})
    assert cfg.nightly.cron_fields() == {"minute": "0", "hour": "3", "day": "*", "month": "*",
                                         "day_of_week": "sun,sat", "timezone": "Europe/Warsaw"}
    from apscheduler.triggers.cron import CronTrigger

    fire = CronTrigger(**cfg.nightly.cron_fields()).get_next_fire_time(
        None, datetime.datetime(2026, 11, 25, tzinfo=datetime.timezone.utc))
    assert fire.strftime("%a %H:%M") == "Sat 03:00"  # cron's 6 is Saturday, not APScheduler's Sunday


# --------------------------------------------------------------------------
# Bad values: one exact line naming the key


BAD = [
    ("[bisect]\nconfidence = \"high\"", 'config: bisect.confidence must be a number between 0.5 and 1 (got "high")'),
    ("[bisect]\nconfidence = 0.4", "config: bisect.confidence must be a number between 0.5 and 1 (got 0.4)"),
    ("[bisect]\nconfidence = true", "config: bisect.confidence must be a number between 0.5 and 1 (got true)"),
    ("[bisect]\nconfidence = nan", "config: bisect.confidence must be a number between 0.5 and 1 (got NaN)"),
    ("[bisect]\nmax_runs = 0", "config: bisect.max_runs must be an integer between 1 and 1000000 (got 0)"),
    ("[bisect]\nmax_host_hours = -1", "config: bisect.max_host_hours must be a number at least 0 (got -1)"),
    ("[bisect]\nmax_host_hours = inf", "config: bisect.max_host_hours must be a number at least 0 (got Infinity)"),
    ("[bisect]\nwait_bins_s = [60, 20]", "config: bisect.wait_bins_s must be strictly increasing (got [60, 20])"),
    ("[bisect]\nwait_bins_s = [20, 20]", "config: bisect.wait_bins_s must be strictly increasing (got [20, 20])"),
    ("[bisect]\nwait_bins_s = [20, 95]", "config: bisect.wait_bins_s entries must be below tests.limit_s (90) (got 95.0)"),
    ("[bisect]\nwait_bins_s = [\"a\"]", 'config: bisect.wait_bins_s entries must each be a number above 0 (got "a")'),
    ("[bisect]\nwait_bins_s = 20", "config: bisect.wait_bins_s must be a list of numbers (got 20)"),
    ("[bisect]\npath_weights = \"yes\"", 'config: bisect.path_weights must be true or false (got "yes")'),
    ("[bisect]\npath_weights = 1", "config: bisect.path_weights must be true or false (got 1)"),
    ("[bisect]\nsuspect_paths = [\"/abs\"]", 'config: bisect.suspect_paths entries must be repository-relative paths (got "/abs")'),
    ("[bisect]\nsuspect_paths = [1]", "config: bisect.suspect_paths must be a list of strings (got [1])"),
    ("[bisect]\nconfirm_runs = 2.0", "config: bisect.confirm_runs must be an integer between 0 and 10000 (got 2.0)"),
    ("[tests]\nnames = [\"nope\"]", f'config: tests.names: unknown test "nope" (known: {KNOWN})'),
    ("[tests]\nnames = []", "config: tests.names must not be empty"),
    ("[tests]\nnames = \"vfio_user_nvme_restart_vm\"", 'config: tests.names must be a list of strings (got "vfio_user_nvme_restart_vm")'),
    ("[tests]\nnames = [\"vfio_user_nvme_restart_vm\", \"vfio_user_nvme_restart_vm\"]", 'config: tests.names lists "vfio_user_nvme_restart_vm" twice'),
    ("[tests]\nlimit_s = \"90\"", 'config: tests.limit_s must be an integer between 1 and 3600 (got "90")'),
    ("[tests]\nlimit_s = 90.0", "config: tests.limit_s must be an integer between 1 and 3600 (got 90.0)"),
    ("[tests]\nslow_threshold_s = 95", "config: tests.slow_threshold_s must be below tests.limit_s (90) (got 95.0)"),
    ("[tests]\nslow_threshold_s = 0", "config: tests.slow_threshold_s must be a number above 0 (got 0)"),
    ("[executor]\nname = \"ssh\"", 'config: executor.name must be one of "sim", "local", "jenkins" (got "ssh")'),
    ("[executor]\nname = \"jenkins\"", 'config: jenkins.url must be set when executor.name is "jenkins"'),
    ("[executor]\ncommand = \"\"", "config: executor.command must not be empty"),
    ("[executor]\ntimeout_minutes = 0", "config: executor.timeout_minutes must be an integer between 1 and 10080 (got 0)"),
    ("[executor]\nrun_minutes = 0", "config: executor.run_minutes must be a number above 0 (got 0)"),
    ("[sim]\nhosts = 0", "config: sim.hosts must be an integer between 1 and 1024 (got 0)"),
    ("[sim]\nhosts = 2.0", "config: sim.hosts must be an integer between 1 and 1024 (got 2.0)"),
    ("[sim]\nseed = -1", "config: sim.seed must be an integer at least 0 (got -1)"),
    ("[sim]\nformat = \"html\"", 'config: sim.format must be one of "jenkins", "gha", "plain" (got "html")'),
    ("[sim]\nera = 2024", 'config: sim.era must be one of "2023", "2024", "2025", "2026" (got 2024)'),
    ("[sim]\np_hang = 1.5", "config: sim.p_hang must be a number between 0 and 1 (got 1.5)"),
    ("[sim]\np_hang = 0.8", "config: sim.p_hang + sim.p_near_miss must be at most 1 (got 0.8 + 0.3)"),
    ("[jenkins]\nurl = \"jenkins.local\"", 'config: jenkins.url must be an http:// or https:// URL, or "" (got "jenkins.local")'),
    ("[jenkins]\ntoken_env = \"MY-TOKEN\"", 'config: jenkins.token_env must be an environment variable name such as "FLAKEBOT_TOKEN", or "" (got "MY-TOKEN")'),
    ("[jenkins]\npoll_seconds = 0", "config: jenkins.poll_seconds must be a number between 0.01 and 3600 (got 0)"),
    ("[jenkins]\nhttp_timeout_seconds = 0", "config: jenkins.http_timeout_seconds must be a number above 0 and at most 600 (got 0)"),
    ("[jenkins]\nmax_parallel = -3", "config: jenkins.max_parallel must be an integer between 1 and 1000 (got -3)"),
    ("[nightly]\ncron = \"30 2 * *\"", 'config: nightly.cron must have 5 fields (minute hour day-of-month month day-of-week) (got "30 2 * *")'),
    ("[nightly]\ncron = \"30 25 * * *\"", 'config: nightly.cron: bad hour field "25" (allowed 0-23) in "30 25 * * *"'),
    ("[nightly]\ncron = \"30 2 * * fry\"", 'config: nightly.cron: bad day of week field "fry" (allowed 0-7) in "30 2 * * fry"'),
    ("[nightly]\ncron = \"30 2 1 * 1\"", 'config: nightly.cron: restrict the day of month or the day of week, not both (cron ORs them, APScheduler ANDs them) (got "30 2 1 * 1")'),
    ("[nightly]\ncron = 230", "config: nightly.cron must be a string (got 230)"),
    ("[nightly]\ntimezone = \"Mars/Base\"", 'config: nightly.timezone must be an IANA time zone such as "UTC" or "Europe/Warsaw" (got "Mars/Base")'),
    ("[nightly]\ntimezone = \"../etc/passwd\"", 'config: nightly.timezone must be an IANA time zone such as "UTC" or "Europe/Warsaw" (got "../etc/passwd")'),
    ("[nightly]\nfalse_alarms_per_year = 0", "config: nightly.false_alarms_per_year must be a number above 0 and below 365 (got 0)"),
    ("[nightly]\nextra_iterations = -1", "config: nightly.extra_iterations must be an integer between 0 and 10000 (got -1)"),
    ("[nightly]\nmin_effect = 0", "config: nightly.min_effect must be a number above 0 and below 0.5 (got 0)"),
    ("[gerrit]\nnotify = \"owner\"", 'config: gerrit.notify must be one of "NONE", "OWNER", "OWNER_REVIEWERS", "ALL" (got "owner")'),
    ("[gerrit]\nlabels = { Verified = \"-1\" }", 'config: gerrit.labels.Verified must be an integer between -2 and 2 (got "-1")'),
    ("[gerrit]\nlabels = { Verified = 3 }", "config: gerrit.labels.Verified must be an integer between -2 and 2 (got 3)"),
    ("[gerrit]\nlabels = [\"Verified\"]", 'config: gerrit.labels must be a table of label names to integers (got ["Verified"])'),
    ("[gerrit]\nlabels = { \"Code Review\" = 1 }", 'config: gerrit.labels: bad Gerrit label name "Code Review"'),
    ("[github]\nrepo = \"spdk\"", 'config: github.repo must be owner/name (got "spdk")'),
    ("[github]\napi_url = \"\"", "config: github.api_url must not be empty"),
    ("[github]\ntracking_issues = { nope = 1 }", f'config: github.tracking_issues: unknown test "nope" (known: {KNOWN})'),
    ("[github]\ntracking_issues = { vfio_user_nvme_restart_vm = 0 }", "config: github.tracking_issues.vfio_user_nvme_restart_vm must be an integer at least 1 (got 0)"),
    ("[commands]\nallow = [\"two words\"]", 'config: commands.allow entries must be account or group names without spaces (got "two words")'),
    ("[commands]\nmax_verify_iterations = 0", "config: commands.max_verify_iterations must be an integer between 1 and 10000 (got 0)"),
    ("[report]\nbase_url = \"ftp://x\"", 'config: report.base_url must be an http:// or https:// URL, or "" (got "ftp://x")'),
    ("[store]\ndb = 5", "config: store.db must be a string (got 5)"),
    ("[store]\ndb = 1979-05-27", "config: store.db must be a string (got 1979-05-27)"),
    ("[store]\ndb = { path = \"x\" }", "config: store.db must be a string (got a table)"),
    ("[spdk]\nbranch = \"\"", "config: spdk.branch must not be empty"),
    ("[spdk]\nbranch = \"two words\"", 'config: spdk.branch must be a git branch name (got "two words")'),
]


@pytest.mark.parametrize("toml, message", BAD, ids=[m.split()[1] for _, m in BAD])
def test_bad_values(tmp_path, toml, message):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, toml)
    assert str(e.value) == message


UNKNOWN = [
    ("[bisect]\nconfidance = 0.9", "config: unknown key 'bisect.confidance'; did you mean 'bisect.confidence'?"),
    ("[bisect]\nfoo = 1", "config: unknown key 'bisect.foo'"),
    ("[bisekt]\nconfidence = 0.9", "config: unknown section '[bisekt]'; did you mean '[bisect]'?"),
    ("[frobnicate]\n", "config: unknown section '[frobnicate]' (sections: store, spdk, tests, executor, sim, "
                       "jenkins, bisect, nightly, gerrit, github, commands, report)"),
    ("[bisect.extra]\nx = 1", "config: unknown key 'bisect.extra'"),
    ("db = \"x.db\"", "config: unknown key 'db'; did you mean 'store.db'?"),
    ("nonsense = 1", "config: unknown key 'nonsense'"),
    ("bisect = 3", "config: bisect must be a table ([bisect]) (got 3)"),
    ("[jenkins]\ntoken = \"s3cr3t-value\"", "config: unknown key 'jenkins.token'; did you mean 'jenkins.token_env'? "
                                             "(secrets are read from the environment variable it names)"),
    ("[gerrit]\npassword = \"s3cr3t-value\"", "config: unknown key 'gerrit.password'; did you mean "
                                                "'gerrit.password_env'? (secrets are read from the environment variable it names)"),
    ("[report]\nsecret = \"s3cr3t-value\"", "config: unknown key 'report.secret'; secrets come from the "
                                              "environment (set a *_env key to the variable's name)"),
]


@pytest.mark.parametrize("toml, message", UNKNOWN)
def test_unknown_keys_and_sections(tmp_path, toml, message):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, toml)
    assert str(e.value) == message
    assert "s3cr3t" not in str(e.value)


@pytest.mark.parametrize("content, expected", [
    (b"[bisect]\nconfidence = = 0.9\n", "invalid TOML at line 2, column 14: Invalid value"),
    (b"[store\ndb = 1\n", "invalid TOML at line 1, column 7: Expected ']' at the end of a table declaration"),
    (b"[store]\ndb = \"x\"\ndb = \"y\"\n", "invalid TOML at line 3, column 9: Cannot overwrite a value"),
    (b"[store]\ndb = \"unterminated\n", "invalid TOML at line 2, column 19: Illegal character '\\n'"),
    (b"[store]\ndb = \"\xff\xfe\"\n", "invalid TOML: not UTF-8 text"),
])
def test_bad_toml(tmp_path, content, expected):
    p = tmp_path / "flakebot.toml"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    assert str(e.value) == f"config: {p}: {expected}"


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "missing.toml", env={})
    assert str(e.value) == f"config: {tmp_path / 'missing.toml'}: cannot read (No such file or directory)"
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, env={})
    assert str(e.value).startswith(f"config: {tmp_path}: cannot read (")


def test_all_errors_are_one_line(tmp_path):
    for toml, _ in BAD + UNKNOWN:
        with pytest.raises(ConfigError) as e:
            load_text(tmp_path, toml)
        assert "\n" not in str(e.value) and str(e.value).startswith("config: ")
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, '[bisect]\nsuspect_paths = ["a\\nb"]')
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------
# Where the file comes from


def test_file_from_env_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path, "[sim]\nseed = 11\n", "elsewhere.toml")
    cfg = load_config(env={"FLAKEBOT_CONFIG": str(p)})
    assert cfg.sim.seed == 11 and cfg.source == p


def test_explicit_path_beats_env_and_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[sim]\nseed = 1\n")
    env_file = write(tmp_path, "[sim]\nseed = 2\n", "env.toml")
    arg_file = write(tmp_path, "[sim]\nseed = 3\n", "arg.toml")
    assert load_config(str(arg_file), env={"FLAKEBOT_CONFIG": str(env_file)}).sim.seed == 3
    assert load_config(env={"FLAKEBOT_CONFIG": str(env_file)}).sim.seed == 2
    assert load_config(env={}).sim.seed == 1  # ./flakebot.toml
    assert load_config(env={"FLAKEBOT_CONFIG": ""}).sim.seed == 1  # empty = unset


def test_env_variable_naming_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(env={"FLAKEBOT_CONFIG": str(tmp_path / "nope.toml")})


def test_os_environ_is_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path, "[sim]\nhosts = 9\n", "x.toml")
    monkeypatch.setenv("FLAKEBOT_CONFIG", str(p))
    assert load_config().sim.hosts == 9


# --------------------------------------------------------------------------
# Secrets


def test_secrets_from_named_env_variables_never_in_repr(tmp_path):
    env = {"FLAKEBOT_JENKINS_TOKEN": "jenkins-s3cr3t", "MY_GERRIT_PW": "gerrit-s3cr3t"}
    cfg = load_text(tmp_path, '[jenkins]\nuser = "bot"\n[gerrit]\npassword_env = "MY_GERRIT_PW"\n', env=env)
    assert cfg.secret("jenkins.token_env") == "jenkins-s3cr3t"
    assert cfg.secret("FLAKEBOT_JENKINS_TOKEN") == "jenkins-s3cr3t"
    assert cfg.secret("gerrit.password_env") == "gerrit-s3cr3t"
    assert cfg.secret("github.token_env") is None  # unset
    for text in (repr(cfg), str(cfg), repr(dataclasses.asdict(cfg)), repr(cfg.to_dict()),
                 repr(cfg.jenkins), repr(cfg.with_overrides({"sim.seed": 2}))):
        assert "s3cr3t" not in text
    assert "FLAKEBOT_JENKINS_TOKEN" in repr(cfg)  # the name is fine to show


def test_copies_and_pickles_carry_no_environment(tmp_path):
    import copy
    import pickle

    env = {"FLAKEBOT_JENKINS_TOKEN": "s3cr3t"}
    cfg = load_text(tmp_path, "[gerrit]\nlabels = { Verified = -1 }\n", env=env)
    data = pickle.dumps(cfg)
    assert b"s3cr3t" not in data
    back = pickle.loads(data)
    assert back == cfg and back.source == cfg.source and back.gerrit.labels == {"Verified": -1}
    deep = copy.deepcopy(cfg)
    assert deep == cfg and "s3cr3t" not in repr(vars(deep))
    assert copy.copy(cfg) == cfg


def test_secret_is_read_at_call_time(tmp_path, monkeypatch):
    env: dict[str, str] = {}
    cfg = load_text(tmp_path, "", env=env)
    assert cfg.secret("jenkins.token_env") is None
    env["FLAKEBOT_JENKINS_TOKEN"] = "later"
    assert cfg.secret("jenkins.token_env") == "later"
    assert cfg.with_overrides({"sim.seed": 1}).secret("jenkins.token_env") == "later"
    env["FLAKEBOT_JENKINS_TOKEN"] = ""
    assert cfg.secret("jenkins.token_env") is None  # empty = unset

    monkeypatch.chdir(tmp_path)
    live = load_config()  # os.environ
    monkeypatch.setenv("FLAKEBOT_GITHUB_TOKEN", "gh-token")
    assert live.secret("github.token_env") == "gh-token"


def test_secret_only_reads_variables_the_config_names(tmp_path):
    cfg = load_text(tmp_path, '[jenkins]\ntoken_env = ""\n', env={"HOME": "/root", "FLAKEBOT_JENKINS_TOKEN": "x"})
    assert cfg.secret("jenkins.token_env") is None  # disabled
    for name in ("HOME", "FLAKEBOT_JENKINS_TOKEN", "sim.seed"):
        with pytest.raises(KeyError):
            cfg.secret(name)
    assert SECRET_KEYS == ("jenkins.token_env", "gerrit.password_env", "github.token_env")


# --------------------------------------------------------------------------
# Overrides (CLI flags)


def test_with_overrides():
    base = Config()
    cfg = base.with_overrides({"store.db": "/tmp/x.db", "executor.name": "local", "sim.seed": 5,
                               "executor.command": None}, executor__spdk_dir="/src/spdk")
    assert cfg.store.db == "/tmp/x.db" and cfg.db_path() == Path("/tmp/x.db")
    assert cfg.executor.name == "local" and cfg.sim.seed == 5
    assert cfg.executor.command == "jobs/run-restart-tests.sh"  # None = not given
    assert cfg.executor.spdk_dir == "/src/spdk" and cfg.spdk_dir() == Path("/src/spdk")
    assert base == Config()  # unchanged
    assert cfg.with_overrides(tests__names=["vfio_user_virtio_scsi_restart_vm"]).tests.names == (
        "vfio_user_virtio_scsi_restart_vm",)
    assert cfg.with_overrides({"spdk.repo": Path("~/spdk")}).spdk.repo == str(Path.home() / "spdk")


@pytest.mark.parametrize("overrides, message", [
    ({"executor.name": "ssh"}, 'config: executor.name must be one of "sim", "local", "jenkins" (got "ssh")'),
    ({"executor.name": "jenkins"}, 'config: jenkins.url must be set when executor.name is "jenkins"'),
    ({"sim.seed": "7"}, 'config: sim.seed must be an integer at least 0 (got "7")'),
    ({"sim.sed": 7}, "config: unknown key 'sim.sed'; did you mean 'sim.seed'?"),
    ({"seed": 7}, "config: unknown key 'seed'; did you mean 'sim.seed'?"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError) as e:
        Config().with_overrides(overrides)
    assert str(e.value) == message


def test_cli_override_names_are_real_keys():
    for flag, key in CLI_OVERRIDES.items():
        Config().get(key)


def test_get_unknown_key():
    with pytest.raises(ConfigError, match="unknown key 'bisect.nope'"):
        Config().get("bisect.nope")


# --------------------------------------------------------------------------
# Data dir


@pytest.mark.parametrize("env, expected", [
    ({"XDG_DATA_HOME": "/data"}, Path("/data/flakebot/flakebot.db")),
    ({}, Path.home() / ".local/share/flakebot/flakebot.db"),
    ({"XDG_DATA_HOME": ""}, Path.home() / ".local/share/flakebot/flakebot.db"),
    ({"XDG_DATA_HOME": "relative/dir"}, Path.home() / ".local/share/flakebot/flakebot.db"),  # XDG: ignore relative
])
def test_default_db_path(env, expected, tmp_path):
    assert default_db_path(env) == expected
    cfg = load_text(tmp_path, "", env=env)
    assert cfg.db_path() == expected
    assert cfg.report_dir() == expected.parent / "reports"


# --------------------------------------------------------------------------
# The example file and the reference docs


def test_example_file_loads_and_equals_the_defaults():
    cfg = load_config(EXAMPLE, env={})
    assert cfg == Config()


def test_example_file_shows_every_key_with_a_comment():
    lines = EXAMPLE.read_text().splitlines()
    section = None
    seen = set()
    for i, line in enumerate(lines):
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"(\w+) = ", line)
        if m:
            assert lines[i - 1].startswith("# "), f"{section}.{m.group(1)} has no comment"
            seen.add(f"{section}.{m.group(1)}")
    assert seen == {f"{s}.{k}" for s, k, *_ in reference_rows()}


def test_docs_have_a_row_for_every_key_with_its_default():
    text = DOCS.read_text()
    for section, key, type_name, default, _ in reference_rows():
        assert f"### [{section}]" in text
        row = f"| `{key}` | {type_name} | `{toml_value(default)}` |"
        assert row in text, row


def test_sim_choices_match_the_simulator():
    sim = pytest.importorskip("flakebot.demo.hosts")
    from flakebot.config import SIM_ERAS, SIM_FORMATS

    assert SIM_ERAS == tuple(getattr(sim, "ERAS", SIM_ERAS))
    assert SIM_FORMATS == tuple(getattr(sim, "FORMATS", SIM_FORMATS))
