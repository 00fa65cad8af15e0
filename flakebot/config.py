"""flakebot's configuration: one TOML file, typed, with a default for every key.

Where the file comes from (first that applies):
  1. the `path` argument (the CLI's `--config`),
  2. the FLAKEBOT_CONFIG environment variable,
  3. ./flakebot.toml if it exists,
  4. nothing: every default (they serve the demo).

    >>> cfg = load_config(env={})            # no file: all defaults
    >>> cfg.bisect.confidence
    0.95
    >>> cfg.with_overrides({"sim.seed": 7}).sim.seed
    7

Every problem is a ConfigError whose message is one line naming the key:
`config: unknown key 'bisect.confidance'; did you mean 'bisect.confidence'?`,
`config: bisect.confidence must be a number between 0.5 and 1 (got "high")`.

Secrets never live in the file or in Config: the file names environment
variables (`[jenkins] token_env = "FLAKEBOT_JENKINS_TOKEN"`) and
`Config.secret("jenkins.token_env")` reads that variable when called.

The sections are frozen dataclasses; each field's metadata carries its check
and a one-line description, from which `reference_rows()` feeds the docs
(docs/configuration.md) and deploy/flakebot.example.toml is kept in step
(tests/test_config.py checks both).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from flakebot.model import DEFAULT_LIMIT_S, DEFAULT_SLOW_THRESHOLD_S, KNOWN_TESTS

ENV_CONFIG = "FLAKEBOT_CONFIG"
DEFAULT_FILE = "flakebot.toml"

EXECUTORS = ("sim", "local", "jenkins")
SIM_FORMATS = ("jenkins", "gha", "plain")
# Console-log eras the simulator prints (flakebot/demo/hosts.py ERAS; docs/spdk.md, "Console
# log formats"): 2023 = PS4 before 2024-04, timeout without `WARN: Not all VMs`
# (err_clean); 2024 = PS4 2024-04..2025-11 with the test domain; 2025 = since
# 2025-11 (`+` PS4, END TEST "(in Ns)", ANSI colours); 2026 = as 2025, no colours.
SIM_ERAS = ("2023", "2024", "2025", "2026")
GERRIT_NOTIFY = ("NONE", "OWNER", "OWNER_REVIEWERS", "ALL")

# Config keys that may point at files; relative values in a file are taken
# relative to that file's directory, and `~` is expanded.
PATH_KEYS = ("store.db", "spdk.repo", "executor.spdk_dir", "executor.local_workdir", "report.dir")

# CLI flags that override config keys (flag name -> dotted key).
CLI_OVERRIDES: dict[str, str] = {
    "db": "store.db",
    "repo": "spdk.repo",
    "executor": "executor.name",
    "command": "executor.command",
    "seed": "sim.seed",
}


class ConfigError(Exception):
    """A configuration problem; str() is one line starting with 'config: '."""

    def __init__(self, message: str):
        super().__init__("config: " + " ".join(str(message).split()))


# --------------------------------------------------------------------------
# Paths


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """$XDG_DATA_HOME/flakebot, else ~/.local/share/flakebot."""
    base = env.get("XDG_DATA_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "flakebot"


def default_db_path(env: Mapping[str, str] = os.environ) -> Path:
    """Where the database lives when [store] db is empty."""
    return default_data_dir(env) / "flakebot.db"


# --------------------------------------------------------------------------
# Value checks. Each takes (key, raw value) and returns the typed value or
# raises ConfigError naming the key.


def _show(value: Any) -> str:
    """A value as it would be written in TOML, short and on one line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, (str, int, float, list, tuple)):
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=True)
        except (TypeError, ValueError):
            text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _range_words(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None and not lo_open and not hi_open:
        return f" between {_fmt_num(lo)} and {_fmt_num(hi)}"
    parts = []
    if lo is not None:
        parts.append(("above " if lo_open else "at least ") + _fmt_num(lo))
    if hi is not None:
        parts.append(("below " if hi_open else "at most ") + _fmt_num(hi))
    return (" " + " and ".join(parts)) if parts else ""


class _Check:
    type_name = "?"

    def __call__(self, key: str, value: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


class Int(_Check):
    type_name = "integer"

    def __init__(self, lo: Optional[int] = None, hi: Optional[int] = None):
        self.lo, self.hi = lo, hi

    def __call__(self, key, value):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi):
            return value
        raise ConfigError(
            f"{key} must be an integer{_range_words(self.lo, self.hi, False, False)} (got {_show(value)})"
        )


class Num(_Check):
    type_name = "number"

    def __init__(self, lo=None, hi=None, lo_open=False, hi_open=False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True

    def words(self) -> str:
        return "a number" + _range_words(self.lo, self.hi, self.lo_open, self.hi_open)

    def __call__(self, key, value):
        if self.ok(value):
            return float(value)
        raise ConfigError(f"{key} must be {self.words()} (got {_show(value)})")


class Bool(_Check):
    type_name = "boolean"

    def __call__(self, key, value):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false (got {_show(value)})")


class Str(_Check):
    type_name = "string"

    def __init__(self, pattern: Optional[str] = None, what: str = "", nonempty=False, empty_ok=True):
        self.pattern = re.compile(pattern) if pattern else None
        self.what = what
        self.nonempty = nonempty
        self.empty_ok = empty_ok and not nonempty

    def __call__(self, key, value):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string (got {_show(value)})")
        if value == "":
            if self.empty_ok:
                return value
            raise ConfigError(f"{key} must not be empty")
        if "\x00" in value or (self.pattern and not self.pattern.fullmatch(value)):
            raise ConfigError(f"{key} must be {self.what or 'a valid string'} (got {_show(value)})")
        return value


_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_URL = r"https?://[^\s/?#]+[^\s]*"


def EnvName() -> Str:
    return Str(_ENV_NAME, 'an environment variable name such as "FLAKEBOT_TOKEN", or ""')


def Url(required: bool = False) -> Str:
    what = "an http:// or https:// URL" + ("" if required else ', or ""')
    return Str(_URL, what, nonempty=required)


class Choice(_Check):
    type_name = "string"

    def __init__(self, *options: str):
        self.options = options

    def __call__(self, key, value):
        if isinstance(value, str) and value in self.options:
            return value
        opts = ", ".join(f'"{o}"' for o in self.options)
        raise ConfigError(f"{key} must be one of {opts} (got {_show(value)})")


class StrList(_Check):
    type_name = "list of strings"

    def __init__(self, nonempty=False, known: Optional[Mapping] = None, what: str = "",
                 pattern: Optional[str] = None):
        self.nonempty, self.known, self.what = nonempty, known, what
        self.pattern = re.compile(pattern) if pattern else None

    def __call__(self, key, value):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings (got {_show(value)})")
        if self.nonempty and not value:
            raise ConfigError(f"{key} must not be empty")
        seen = set()
        for item in value:
            if item in seen:
                raise ConfigError(f"{key} lists {_show(item)} twice")
            seen.add(item)
            if self.known is not None and item not in self.known:
                names = ", ".join(self.known)
                raise ConfigError(f"{key}: unknown test {_show(item)} (known: {names})")
            if item == "" or (self.pattern and not self.pattern.fullmatch(item)):
                raise ConfigError(f"{key} entries must be {self.what or 'non-empty strings'} (got {_show(item)})")
        return tuple(value)


class NumList(_Check):
    type_name = "list of numbers"

    def __init__(self, item: Num, increasing=True):
        self.item, self.increasing = item, increasing

    def __call__(self, key, value):
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list of numbers (got {_show(value)})")
        for x in value:
            if not self.item.ok(x):
                raise ConfigError(f"{key} entries must each be {self.item.words()} (got {_show(x)})")
        out = tuple(float(x) for x in value)
        if self.increasing and any(b <= a for a, b in zip(out, out[1:])):
            raise ConfigError(f"{key} must be strictly increasing (got {_show(value)})")
        return out


class IntTable(_Check):
    """A TOML table of string keys to integers."""

    def __init__(self, key_check: Callable[[str, str], None], lo=None, hi=None, what_key="keys"):
        self.key_check, self.item, self.what_key = key_check, Int(lo, hi), what_key
        self.type_name = f"table of {what_key} to integers"

    def __call__(self, key, value):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table of {self.what_key} to integers (got {_show(value)})")
        out = {}
        for k, v in value.items():
            self.key_check(key, k)
            out[k] = self.item(f"{key}.{k}" if re.fullmatch(r"[A-Za-z0-9_-]+", k) else f"{key}[{_show(k)}]", v)
        return FrozenDict(out)


class Cron(_Check):
    """Five standard cron fields: minute hour day-of-month month day-of-week.

    Day of week follows crontab(5): 0 and 7 are Sunday. APScheduler 3.x reads
    numbers Monday-first (agronholm/apscheduler#286, not fixed in 3.x), so use
    `cron_fields()` to build its CronTrigger rather than from_crontab().
    """

    type_name = "string (cron)"
    _MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    _DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
    _FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
               ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))

    def __call__(self, key, value):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string (got {_show(value)})")
        parts = value.split()
        if len(parts) != 5:
            raise ConfigError(
                f"{key} must have 5 fields (minute hour day-of-month month day-of-week) (got {_show(value)})")
        for part, (name, lo, hi, names) in zip(parts, self._FIELDS):
            if self._expand(part.lower(), lo, hi, names) is None:
                raise ConfigError(f"{key}: bad {name} field {_show(part)} (allowed {lo}-{hi}) in {_show(value)}")
        if parts[2] != "*" and parts[4] != "*":
            raise ConfigError(f"{key}: restrict the day of month or the day of week, not both "
                              f"(cron ORs them, APScheduler ANDs them) (got {_show(value)})")
        return value

    @staticmethod
    def _expand(text: str, lo: int, hi: int, names: tuple[str, ...]) -> Optional[set[int]]:
        """The values a field selects, or None if it is not valid cron."""

        def num(tok):
            if tok in names:
                return names.index(tok) + lo
            if tok.isdigit() and lo <= int(tok) <= hi:
                return int(tok)
            return None

        values: set[int] = set()
        for item in text.split(","):
            base, slash, step_text = item.partition("/")
            step = 1
            if slash:
                if not (step_text.isdigit() and int(step_text) >= 1):
                    return None
                step = int(step_text)
            if base == "*":
                first, last = lo, hi
            else:
                a, dash, b = base.partition("-")
                first = num(a)
                last = num(b) if dash else (hi if slash else first)
                if first is None or last is None or last < first:
                    return None
            values.update(range(first, last + 1, step))
        return values

    @classmethod
    def fields(cls, expr: str) -> dict[str, str]:
        """APScheduler 3.x CronTrigger keyword arguments for a valid expression."""
        minute, hour, day, month, dow = expr.split()
        if dow != "*":
            days = {d % 7 for d in cls._expand(dow.lower(), 0, 7, cls._DAYS) or ()}
            dow = ",".join(cls._DAYS[d] for d in sorted(days))
        return {"minute": minute, "hour": hour, "day": day, "month": month.lower(), "day_of_week": dow}


class TimeZone(_Check):
    type_name = "string (IANA zone)"

    def __call__(self, key, value):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string (got {_show(value)})")
        if value == "UTC":
            return value
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ConfigError(f'{key} must be an IANA time zone such as "UTC" or "Europe/Warsaw" (got {_show(value)})') from None
        return value


def _label_key(key: str, name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ConfigError(f"{key}: bad Gerrit label name {_show(name)}")


def _test_key(key: str, name: str) -> None:
    if name not in KNOWN_TESTS:
        raise ConfigError(f"{key}: unknown test {_show(name)} (known: {', '.join(KNOWN_TESTS)})")


class FrozenDict(dict):
    """A dict that refuses changes (for table-valued settings in frozen sections)."""

    def _refuse(self, *a, **k):
        raise TypeError("configuration tables are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore
    __ior__ = _refuse  # type: ignore

    def __hash__(self):  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return dict.__repr__(self)


def _k(default: Any, check: _Check, doc: str):
    """One setting: its default, its check and a one-line description."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, dict):
        frozen = FrozenDict(default)
        return field(default_factory=lambda: frozen, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class StoreConfig:
    """Where results are kept."""

    db: str = _k("", Str(), "SQLite database file; empty = $XDG_DATA_HOME/flakebot/flakebot.db "
                 "(~/.local/share/flakebot/flakebot.db). CLI: --db.")
    lease_seconds: float = _k(120.0, Num(1, 86400), "A campaign is driven by one process at a time: its "
                              "lease, renewed while it runs, lets another take over only this many seconds "
                              "after the holder stopped renewing (at once if the holder died on this host); "
                              "at least 4 x the executor's poll interval.")


@dataclass(frozen=True)
class SpdkConfig:
    """The SPDK clone commits are resolved in."""

    repo: str = _k("", Str(), "Path to the local SPDK git clone; empty = none (the demo builds its own). CLI: --repo.")
    remote: str = _k("origin", Str(r"[^\s]+", "a git remote name", nonempty=True),
                     "Git remote fetched before the nightly run.")
    branch: str = _k("master", Str(r"[^\s]+", "a git branch name", nonempty=True),
                     "Branch whose tip the nightly run tests.")


@dataclass(frozen=True)
class TestsConfig:
    """Which tests are rerun and how a run is judged."""

    __test__ = False  # not a pytest class

    names: tuple[str, ...] = _k(
        ("vfio_user_nvme_restart_vm", "vfio_user_virtio_blk_restart_vm"),
        StrList(nonempty=True, known=KNOWN_TESTS),
        "Tests to rerun; each one of " + ", ".join(KNOWN_TESTS) + ".")
    slow_threshold_s: float = _k(float(DEFAULT_SLOW_THRESHOLD_S), Num(0, lo_open=True),
                                 "A passing run whose longest vm_shutdown_all wait reaches this is 'slow' "
                                 "(a near miss); must be below limit_s.")
    limit_s: int = _k(DEFAULT_LIMIT_S, Int(1, 3600),
                      "vm_shutdown_all limit in seconds when the log does not show `local timeo=N`.")


@dataclass(frozen=True)
class ExecutorConfig:
    """Where runs happen."""

    name: str = _k("sim", Choice(*EXECUTORS), "Backend: sim (simulated hosts), local (this host), "
                   "jenkins (real hosts). CLI: --executor.")
    command: str = _k("jobs/run-restart-tests.sh", Str(nonempty=True),
                      "Host script the local executor runs (and the Jenkins job calls). CLI: --command.")
    spdk_dir: str = _k("", Str(), "SPDK checkout the host script builds in (SPDK_DIR); empty = spdk.repo.")
    timeout_minutes: int = _k(240, Int(1, 10080), "Wall-clock limit for one request (build plus all "
                              "iterations); past it the request is cancelled and its unfinished runs are infra.")
    build_minutes: float = _k(10.0, Num(0), "Estimated host minutes to build SPDK at a new commit "
                              "(the bisection's cost model; the sim's build time).")
    run_minutes: float = _k(2.0, Num(0, lo_open=True), "Estimated host minutes for one test iteration "
                            "(cost model; the sim's run time).")
    local_workdir: str = _k("", Str(), "Where the local executor keeps each run's console log, pid file "
                            "and exit status (found again after a restart); empty = <data dir>/local.")
    local_keep_logs: int = _k(20, Int(0, 100_000), "Finished local runs whose console logs are kept; older "
                              "ones are removed when a new run starts.")
    local_keep_days: float = _k(30.0, Num(0), "Days a finished local run's console log is kept at most; "
                                "0 = no age limit.")
    local_poll_seconds: float = _k(2.0, Num(0, 3600, lo_open=True), "Seconds between checks on a "
                                   "running local host script.")


@dataclass(frozen=True)
class SimConfig:
    """The simulated hosts (executor.name = "sim")."""

    hosts: int = _k(4, Int(1, 1024), "Number of simulated hosts (parallel slots).")
    seed: int = _k(0, Int(0), "Random seed; same seed, same logs. CLI: --seed.")
    format: str = _k("jenkins", Choice(*SIM_FORMATS), "Console prefix: jenkins (timestamper elapsed), "
                     "gha (ISO 8601), plain (none).")
    era: str = _k("2024", Choice(*SIM_ERAS), "Log era: 2023 (old PS4, timeout via err_clean), "
                  "2024 (PS4 with test domain), 2025 (current PS4, END TEST in Ns, colours), "
                  "2026 (as 2025, no colours).")
    p_hang: float = _k(0.15, Num(0, 1), "At a bad commit, chance a shutdown hangs past the limit (timeout).")
    p_near_miss: float = _k(0.30, Num(0, 1), "At a bad commit, chance a shutdown is slow but passes "
                            "(a near miss); p_hang + p_near_miss <= 1.")
    background_fail: float = _k(0.01, Num(0, 1), "At any commit, chance a run fails for an unrelated reason.")
    infra: float = _k(0.005, Num(0, 1), "Chance a request hits an infrastructure fault (build or host lost).")


@dataclass(frozen=True)
class JenkinsConfig:
    """The Jenkins that owns the real hosts (executor.name = "jenkins")."""

    url: str = _k("", Url(), "Jenkins base URL, e.g. https://jenkins.example.org/; required for the jenkins executor.")
    user: str = _k("", Str(), "Jenkins user the API token belongs to.")
    token_env: str = _k("FLAKEBOT_JENKINS_TOKEN", EnvName(), "Environment variable holding the Jenkins API token.")
    job: str = _k("flakebot-vfio-user-restart", Str(r"[^\s]+(?: [^\s]+)*", "a Jenkins job name", nonempty=True),
                  "Parameterised job that runs the host script (folders as a/b).")
    label: str = _k("vfio-user", Str(), "Agent label expression the job runs on; empty = the job's own setting.")
    max_parallel: int = _k(8, Int(1, 1000), "Most builds flakebot keeps queued or running at once.")
    poll_seconds: float = _k(15.0, Num(0.01, 3600), "Seconds between status polls (a few seconds or more "
                             "against a real Jenkins; only a fake wants less).")
    http_timeout_seconds: float = _k(30.0, Num(0, 600, lo_open=True), "Timeout of each HTTP request to Jenkins.")


@dataclass(frozen=True)
class BisectConfig:
    """The flake-aware bisection."""

    confidence: float = _k(0.95, Num(0.5, 1), "Stop when one hypothesis (a culprit, or no change) "
                           "reaches this posterior probability.")
    max_runs: int = _k(2000, Int(1, 1_000_000), "Budget: most test runs one bisection may spend.")
    max_host_hours: float = _k(0.0, Num(0), "Budget: most host hours (builds plus runs) one bisection "
                               "may spend; 0 = no limit.")
    max_builds: int = _k(1000, Int(0, 1_000_000), "Budget: most builds (requests sent to hosts, failed ones "
                         "included) one bisection may spend; 0 = no limit.")
    max_infra_per_commit: int = _k(3, Int(1, 1000), "A commit with no test result after this many requests "
                                   "that came back infra (lost host, cut log) is skipped as untestable; one "
                                   "whose every host said \"cannot test here\" is skipped at once.")
    confirm_runs: int = _k(10, Int(0, 10_000), "After a culprit is found, this many extra runs at it and "
                           "at its parent to confirm; 0 = none.")
    wait_bins_s: tuple[float, ...] = _k((20.0, 60.0, 80.0), NumList(Num(0, lo_open=True)),
                                        "Bin edges (s) splitting passing runs by longest shutdown wait, so an "
                                        "83 s pass counts as evidence; strictly increasing, below tests.limit_s.")
    path_weights: bool = _k(False, Bool(), "Weight the prior towards commits touching suspect_paths.")
    suspect_paths: tuple[str, ...] = _k(
        ("test/vhost", "test/vfio_user", "lib/vfio_user", "lib/nvmf"),
        StrList(pattern=r"[^/\s][^\s]*", what="repository-relative paths"),
        "Path prefixes favoured when path_weights is true.")
    history_cap: int = _k(50, Int(0, 100_000), "Most pseudo-runs of nightly history used as the baseline "
                          "prior; 0 = ignore history.")
    host_builds_kept: int = _k(1, Int(0, 1000), "Builds a host keeps (the host script builds in one SPDK_DIR: "
                               "1). The planner prefers a host that has the commit built, pins the request to "
                               "it and prices a build elsewhere; 0 = treat a build as available to every host.")


@dataclass(frozen=True)
class NightlyConfig:
    """The scheduled run on the branch tip (`flakebot serve`)."""

    cron: str = _k("30 2 * * *", Cron(), "When to run: 5 crontab(5) fields (minute hour day month weekday; 0 and 7 "
                   "= Sunday), read in timezone.")
    timezone: str = _k("UTC", TimeZone(), "IANA time zone the cron expression is read in.")
    iterations: int = _k(20, Int(1, 10_000), "Iterations of each test per nightly run.")
    min_effect: float = _k(0.05, Num(0, 0.5, lo_open=True, hi_open=True), "Smallest rise (or fall) of a "
                           "class's rate (near misses, timeouts, failures) worth acting on, as a fraction of runs.")
    false_alarms_per_year: float = _k(0.1, Num(0, 365, lo_open=True, hi_open=True), "False-alarm budget of "
                                      "the rise (and fall) detection per test and year at one nightly a day; "
                                      "sets the CUSUM threshold h = ln(3 x 365 / budget).")
    extra_iterations: int = _k(40, Int(0, 10_000), "Extra iterations at the tip on a night whose evidence is "
                               "suggestive (a CUSUM at 0.4 of its threshold or more); 0 = never.")
    misfire_grace_minutes: int = _k(60, Int(0, 1440), "A run missed while the service was down still "
                                    "starts if this many minutes late or less.")

    def cron_fields(self) -> dict[str, Any]:
        """Keyword arguments for APScheduler 3.x `CronTrigger(**cfg.nightly.cron_fields())`,
        weekdays as names (cron's 0 = Sunday; APScheduler's 0 = Monday) and the time zone."""
        return {**Cron.fields(self.cron), "timezone": self.timezone}


@dataclass(frozen=True)
class GerritConfig:
    """Posting results on Gerrit changes (REST, HTTP password)."""

    url: str = _k("", Url(), "Gerrit base URL, e.g. https://review.spdk.io/; empty = do not post to Gerrit.")
    user: str = _k("", Str(), "Gerrit account flakebot posts as.")
    password_env: str = _k("FLAKEBOT_GERRIT_PASSWORD", EnvName(), "Environment variable holding that "
                           "account's HTTP password.")
    notify: str = _k("OWNER", Choice(*GERRIT_NOTIFY), "Who Gerrit emails about flakebot's comments.")
    labels: Mapping[str, int] = _k({}, IntTable(_label_key, -2, 2, "label names"),
                                   'Votes to cast with a verdict, e.g. {Verified = -1}; empty = comment only.')


@dataclass(frozen=True)
class GithubConfig:
    """Posting results on GitHub issues and pull requests (REST, token)."""

    api_url: str = _k("https://api.github.com", Url(required=True), "GitHub REST API base URL "
                      "(GitHub Enterprise: https://HOST/api/v3).")
    repo: str = _k("spdk/spdk", Str(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", "owner/name", nonempty=True),
                   "Repository the issues and pull requests are in.")
    token_env: str = _k("FLAKEBOT_GITHUB_TOKEN", EnvName(), "Environment variable holding the GitHub token.")
    tracking_issues: Mapping[str, int] = _k({"vfio_user_nvme_restart_vm": 3322},
                                            IntTable(_test_key, 1, None, "test names"),
                                            "Issue that tracks each test's flakiness; results are posted there.")


@dataclass(frozen=True)
class CommandsConfig:
    """Review comments such as `/flakebot verify`."""

    allow: tuple[str, ...] = _k((), StrList(pattern=r"[^\s]+", what="account or group names without spaces"),
                                "Accounts or groups whose review commands are obeyed (group:NAME for a "
                                "group); empty = nobody may command.")
    refuse_strangers: bool = _k(False, Bool(), "Reply with a short refusal to commands from accounts not in "
                                "allow (false = ignore them silently).")
    max_verify_iterations: int = _k(100, Int(1, 10_000), "Most iterations a `/flakebot verify N` may ask for.")
    poll_minutes: int = _k(5, Int(1, 1440), "Minutes between checks for new comments.")
    max_age_days: int = _k(14, Int(1, 3650), "Gerrit: look for commands on changes updated in the last "
                           "this many days, open or not (`-age:Nd`); older comments are never read.")


@dataclass(frozen=True)
class ReportConfig:
    """Rendered reports."""

    dir: str = _k("", Str(), "Directory for HTML reports; empty = <data dir>/reports.")
    base_url: str = _k("", Url(), "URL the report directory is served at, for links in comments; "
                       "empty = no links.")


# --------------------------------------------------------------------------
# The whole


@dataclass(frozen=True)
class Config:
    """All settings. Holds no secret values: see `secret()`."""

    store: StoreConfig = field(default_factory=StoreConfig)
    spdk: SpdkConfig = field(default_factory=SpdkConfig)
    tests: TestsConfig = field(default_factory=TestsConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    jenkins: JenkinsConfig = field(default_factory=JenkinsConfig)
    bisect: BisectConfig = field(default_factory=BisectConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)
    gerrit: GerritConfig = field(default_factory=GerritConfig)
    github: GithubConfig = field(default_factory=GithubConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    # Not fields (kept out of repr, ==, asdict): set by load_config.
    #   _env: the environment secrets are read from (os.environ by default)
    #   _source: the file loaded, or None

    @property
    def source(self) -> Optional[Path]:
        """The file this configuration was read from (None = defaults only)."""
        return getattr(self, "_source", None)

    def get(self, dotted: str) -> Any:
        """A value by dotted key: cfg.get("bisect.confidence")."""
        section, _, key = dotted.partition(".")
        if dotted not in _all_keys():
            raise ConfigError(_unknown_key(dotted))
        return getattr(getattr(self, section), key)

    def secret(self, name: str) -> Optional[str]:
        """The secret named by an `*_env` setting, read from the environment now.

        `name` is the dotted key ("jenkins.token_env") or the variable it
        names ("FLAKEBOT_JENKINS_TOKEN"). Only variables the configuration
        names can be read this way. None when unset or empty.
        """
        env = self._environ()
        if name in SECRET_KEYS:
            var = self.get(name)
        elif name in {self.get(k) for k in SECRET_KEYS}:
            var = name
        else:
            raise KeyError(f"{name!r} is not a secret setting ({', '.join(SECRET_KEYS)}) "
                           "nor a variable one of them names")
        if not var:
            return None
        return env.get(var) or None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (lists, dicts), e.g. for --json; no secrets in it."""
        out: dict[str, dict[str, Any]] = {}
        for sec in dataclasses.fields(self):
            values = {}
            for f in dataclasses.fields(getattr(self, sec.name)):
                v = getattr(getattr(self, sec.name), f.name)
                values[f.name] = list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v
            out[sec.name] = values
        return out

    def with_overrides(self, overrides: Optional[Mapping[str, Any]] = None, /, **kwargs: Any) -> "Config":
        """A copy with some keys replaced and everything re-checked.

        Keys are dotted ("store.db") in `overrides`, or `section__key` as
        keyword arguments (store__db=...). None values are skipped, so
        unset CLI options can be passed straight through:

            cfg.with_overrides({CLI_OVERRIDES[k]: v for k, v in opts.items()})
        """
        items = dict(overrides or {})
        for k, v in kwargs.items():
            items[k.replace("__", ".", 1)] = v
        raw = self.to_dict()
        for dotted, value in items.items():
            if value is None:
                continue
            if dotted not in _all_keys():
                raise ConfigError(_unknown_key(dotted))
            section, _, key = dotted.partition(".")
            if dotted in PATH_KEYS and isinstance(value, (str, os.PathLike)):
                value = os.path.expanduser(os.fspath(value))
            raw[section][key] = list(value) if isinstance(value, tuple) else value
        new = _build(raw, base_dir=None)
        object.__setattr__(new, "_env", getattr(self, "_env", None))
        object.__setattr__(new, "_source", self.source)
        return new

    def __getstate__(self) -> dict[str, Any]:
        # pickles and copies never carry the environment (it holds the secrets);
        # an unpickled Config reads os.environ
        return {k: v for k, v in self.__dict__.items() if k != "_env"}

    def _environ(self) -> Mapping[str, str]:
        env = getattr(self, "_env", None)
        return os.environ if env is None else env

    # Resolved paths -------------------------------------------------------

    def db_path(self) -> Path:
        """store.db, or the default under the data dir."""
        return Path(self.store.db) if self.store.db else default_db_path(self._environ())

    def report_dir(self) -> Path:
        return Path(self.report.dir) if self.report.dir else default_data_dir(self._environ()) / "reports"

    def local_workdir(self) -> Path:
        """executor.local_workdir, or <data dir>/local."""
        d = self.executor.local_workdir
        return Path(d) if d else default_data_dir(self._environ()) / "local"

    def spdk_dir(self) -> Optional[Path]:
        """Where the host script builds SPDK: executor.spdk_dir, else spdk.repo, else None."""
        d = self.executor.spdk_dir or self.spdk.repo
        return Path(d) if d else None


SECTIONS: dict[str, type] = {
    "store": StoreConfig, "spdk": SpdkConfig, "tests": TestsConfig, "executor": ExecutorConfig,
    "sim": SimConfig, "jenkins": JenkinsConfig, "bisect": BisectConfig, "nightly": NightlyConfig,
    "gerrit": GerritConfig, "github": GithubConfig, "commands": CommandsConfig, "report": ReportConfig,
}
assert list(SECTIONS) == [f.name for f in dataclasses.fields(Config)]


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


SECRET_KEYS: tuple[str, ...] = tuple(k for k in _all_keys() if k.endswith("_env"))


def _unknown_key(dotted: str) -> str:
    msg = f"unknown key '{dotted}'"
    close = difflib.get_close_matches(dotted, _all_keys(), n=1, cutoff=0.75)
    if "." not in dotted:  # a key outside any section
        close = [k for k in _all_keys() if k.endswith("." + dotted)][:1] or close
    secretish = re.search(r"(token|password|secret|key)$", dotted.rpartition(".")[2])
    if close:
        msg += f"; did you mean '{close[0]}'?"
        if secretish and close[0].endswith("_env"):
            msg += " (secrets are read from the environment variable it names)"
    elif secretish:
        msg += "; secrets come from the environment (set a *_env key to the variable's name)"
    return msg


def reference_rows() -> Iterator[tuple[str, str, str, Any, str]]:
    """(section, key, type, default, description) for every setting, in order."""
    for s, cls in SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            yield s, f.name, f.metadata["check"].type_name, getattr(defaults, f.name), f.metadata["doc"]


def toml_value(value: Any) -> str:
    """A setting's value written as TOML (for docs and `flakebot config`-style output)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        parts = []
        for k, v in value.items():
            kk = k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)
            parts.append(f"{kk} = {toml_value(v)}")
        return "{ " + ", ".join(parts) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


# --------------------------------------------------------------------------
# Loading


def _build(raw: Mapping[str, Any], base_dir: Optional[Path]) -> Config:
    """Check a parsed TOML document and build the Config (raises ConfigError)."""
    sections: dict[str, Any] = {}
    for name, body in raw.items():
        if name not in SECTIONS:
            if isinstance(body, dict):
                close = difflib.get_close_matches(name, list(SECTIONS), n=1, cutoff=0.7)
                hint = f"; did you mean '[{close[0]}]'?" if close else f" (sections: {', '.join(SECTIONS)})"
                raise ConfigError(f"unknown section '[{name}]'{hint}")
            raise ConfigError(_unknown_key(name))
        if not isinstance(body, dict):
            raise ConfigError(f"{name} must be a table ([{name}]) (got {_show(body)})")
        cls = SECTIONS[name]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in body.items():
            dotted = f"{name}.{key}"
            if key not in fields:
                raise ConfigError(_unknown_key(dotted))
            value = fields[key].metadata["check"](dotted, value)
            if dotted in PATH_KEYS and value:
                value = os.path.expanduser(value)
                if base_dir is not None and not os.path.isabs(value):
                    value = os.path.normpath(os.path.join(base_dir, value))
            values[key] = value
        sections[name] = cls(**values)
    cfg = Config(**sections)
    _cross_checks(cfg)
    return cfg


def _cross_checks(cfg: Config) -> None:
    limit = cfg.tests.limit_s
    if cfg.tests.slow_threshold_s >= limit:
        raise ConfigError(f"tests.slow_threshold_s must be below tests.limit_s ({limit}) "
                          f"(got {_show(cfg.tests.slow_threshold_s)})")
    for edge in cfg.bisect.wait_bins_s:
        if edge >= limit:
            raise ConfigError(f"bisect.wait_bins_s entries must be below tests.limit_s ({limit}) "
                              f"(got {_show(edge)})")
    if cfg.sim.p_hang + cfg.sim.p_near_miss > 1:
        raise ConfigError(f"sim.p_hang + sim.p_near_miss must be at most 1 "
                          f"(got {_fmt_num(cfg.sim.p_hang)} + {_fmt_num(cfg.sim.p_near_miss)})")
    if cfg.executor.name == "jenkins" and not cfg.jenkins.url:
        raise ConfigError('jenkins.url must be set when executor.name is "jenkins"')
    poll = {"jenkins": ("jenkins.poll_seconds", cfg.jenkins.poll_seconds),
            "local": ("executor.local_poll_seconds", cfg.executor.local_poll_seconds)}.get(cfg.executor.name)
    if poll and cfg.store.lease_seconds < 4 * poll[1]:  # renewed on poll ticks: several per lease
        raise ConfigError(f"store.lease_seconds must be at least 4 x {poll[0]} ({_fmt_num(4 * poll[1])}) "
                          f"(got {_fmt_num(cfg.store.lease_seconds)})")


def find_config_file(path: Optional[str | os.PathLike] = None,
                     env: Mapping[str, str] = os.environ) -> Optional[Path]:
    """The file load_config would read: path, $FLAKEBOT_CONFIG, ./flakebot.toml, or None."""
    if path is not None and os.fspath(path) != "":
        return Path(path).expanduser()
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    local = Path(DEFAULT_FILE)
    return local if local.is_file() else None


def load_config(path: Optional[str | os.PathLike] = None,
                env: Mapping[str, str] = os.environ) -> Config:
    """Read, check and return the configuration (see the module docstring)."""
    file = find_config_file(path, env)
    raw: dict[str, Any] = {}
    if file is not None:
        shown = " ".join(str(file).split())
        try:
            with open(file, "rb") as fh:
                raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            msg = str(e)
            m = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", msg)
            if m:
                where = f"at line {m.group(1)}, column {m.group(2)}"
                msg = msg[: m.start()]
            else:
                m = re.search(r"\s*\(at end of document\)\s*$", msg)
                where = "at end of document" if m else "somewhere"
                msg = msg[: m.start()] if m else msg
            raise ConfigError(f"{shown}: invalid TOML {where}: {msg}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{shown}: invalid TOML: not UTF-8 text") from None
        except OSError as e:
            raise ConfigError(f"{shown}: cannot read ({e.strerror or e.__class__.__name__})") from None
    base = file.resolve().parent if file is not None else None
    cfg = _build(raw, base)
    object.__setattr__(cfg, "_env", env)
    object.__setattr__(cfg, "_source", file)
    return cfg
