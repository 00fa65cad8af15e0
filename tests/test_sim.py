"""flakebot.demo.hosts (simulated SPDK logs) and the `sim` executor."""
from __future__ import annotations

import collections
import datetime as dt
import re
import time

import pytest

from flakebot.demo import hosts as sim
from flakebot.executors import EXECUTORS, make_executor, register
from flakebot.executors.base import ExecutorError
from flakebot.executors.sim import SimExecutor
from flakebot.model import BuildState, Commit, KNOWN_TESTS, Outcome, RunRequest
from flakebot.demo.hosts import Behaviour, Scenario, SimClock, console_lines, simulate, truths

SHA = "0123456789abcdef0123456789abcdef01234567"
NVME = "vfio_user_nvme_restart_vm"
BLK = "vfio_user_virtio_blk_restart_vm"
SCSI = "vfio_user_virtio_scsi_restart_vm"

PREFIX = {
    "jenkins": r"\d{2}:\d{2}:\d{2}\.\d{3}  ",
    "gha": r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z ",
    "plain": r"",
}
XTRACE = {
    "2023": r"( {1,2})(\d{2}:\d{2}:\d{2})\t-- (vhost/common\.sh|nvme/vfio_user_restart_vm\.sh|virtio/fio_restart_vm\.sh)@(\d+) -- # (.*)",
    "2024": r"( {1,2})(\d{2}:\d{2}:\d{2}) vfio_user_qemu\.(\w+) -- (vhost/common\.sh|nvme/vfio_user_restart_vm\.sh|virtio/fio_restart_vm\.sh)@(\d+) -- # (.*)",
    "2025": r"(\+{1,2}) (\d{2}:\d{2}:\d{2}) vfio_user_qemu\.(\w+) -- (test/vhost/common\.sh|test/vfio_user/nvme/vfio_user_restart_vm\.sh|test/vfio_user/virtio/fio_restart_vm\.sh)@(\d+): (.*)",
}
XTRACE["2026"] = XTRACE["2025"]


def _lines(test=NVME, n=3, b=Behaviour(0.3, 0.3, 0.1), **kw):
    kw.setdefault("rng_seed", 7)
    return list(console_lines(test, SHA, n, behaviour=b, **kw))


def _elapsed(line: str) -> float:
    h, m, s = line[:12].split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


# ------------------------------------------------------------------ determinism


def test_same_inputs_same_log():
    a = _lines(run_id="r1")
    assert a == _lines(run_id="r1")
    assert a != _lines(run_id="r2")
    assert a != _lines(run_id="r1", rng_seed=8)
    assert a != list(console_lines(NVME, "f" * 40, 3, behaviour=Behaviour(0.3, 0.3, 0.1), rng_seed=7, run_id="r1"))


def test_truths_without_lines_are_the_same():
    for era in sim.ERAS:
        kw = dict(behaviour=Behaviour(0.2, 0.3, 0.1, 0.02), rng_seed=9, era=era, run_id="q")
        assert truths(BLK, SHA, 200, **kw) == [t for t, _ in simulate(BLK, SHA, 200, **kw)]


def test_does_not_sleep_or_use_global_random(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("sim must not sleep / use the global RNG")

    monkeypatch.setattr(time, "sleep", boom)
    import random

    monkeypatch.setattr(random, "random", boom)
    monkeypatch.setattr(random, "seed", boom)
    assert len(_lines(n=5, b=Behaviour(1.0, 0.0))) > 5 * 350


# ------------------------------------------------------------------ rates and durations


def test_rates_roughly_as_configured():
    b = Behaviour(p_hang=0.1, p_near_miss=0.2, p_fail=0.05)
    ts = truths(NVME, SHA, 3000, behaviour=b, rng_seed=3)
    kinds = collections.Counter(t.kind for t in ts)
    assert abs(kinds["hang"] / 3000 - 0.1) < 0.02
    assert abs(kinds["near_miss"] / 3000 - 0.2) < 0.025
    assert abs(kinds["fail"] / 3000 - 0.05) < 0.015
    outcomes = collections.Counter(t.outcome for t in ts)
    assert outcomes[Outcome.TIMEOUT] == kinds["hang"]
    assert outcomes[Outcome.SLOW] == kinds["near_miss"]
    assert outcomes[Outcome.FAIL] == kinds["fail"]
    assert outcomes[Outcome.PASS] == kinds["pass"]


def test_infra_rate_and_cut():
    b = Behaviour(0.0, 0.0, p_infra=0.2)
    n_infra = 0
    for k in range(500):
        (t,) = truths(NVME, SHA, 1, behaviour=b, rng_seed=k)
        n_infra += t.outcome is Outcome.INFRA
    assert abs(n_infra / 500 - 0.2) < 0.05
    # an infra fault ends the log mid-iteration: no END marker, nothing after it
    out = list(simulate(NVME, SHA, 5, behaviour=sim.HEALTHY, rng_seed=1, infra_at=3, run_id="x"))
    assert [t.kind for t, _ in out] == ["pass", "pass", "infra"]
    last = out[-1][1]
    assert "FLAKEBOT-ITERATION-START" in last[0] and not any("ITERATION-END" in l for l in last)
    assert out[-1][0].rc is None


def test_waits_follow_the_systemd_steps():
    ts = truths(NVME, SHA, 600, behaviour=Behaviour(0.2, 0.4), rng_seed=11)
    for t in ts:
        first, second = t.shutdowns
        assert first.call_site == "vfio_user_restart_vm.sh@36" and 2.0 <= first.waited_s <= 7.0
        assert second.call_site == "vfio_user_restart_vm.sh@54"
        if t.kind == "pass":
            assert 2.0 <= second.waited_s <= 7.0 and not second.timed_out
        elif t.kind == "near_miss":
            assert 70.0 <= second.waited_s < 90.0 and not second.timed_out
        else:
            assert t.kind == "hang" and second.timed_out and 90.0 <= second.waited_s <= 93.0
    nm = [t.shutdowns[1].waited_s for t in ts if t.kind == "near_miss"]
    assert any(w < 80 for w in nm) and any(w >= 80 for w in nm)  # both 10 s steps occur


# ------------------------------------------------------------------ format shape


@pytest.mark.parametrize("fmt", sim.FORMATS)
@pytest.mark.parametrize("era", sim.ERAS)
@pytest.mark.parametrize("test", [NVME, BLK, SCSI])
def test_line_shapes(fmt, era, test):
    lines = _lines(test=test, n=4, b=Behaviour(0.3, 0.3, 0.2), fmt=fmt, era=era, run_id="rid-1")
    pre = re.compile(PREFIX[fmt])
    xt = re.compile(PREFIX[fmt] + XTRACE[era])
    n_x = 0
    for line in lines:
        assert pre.match(line), line
        assert "\n" not in line and "\r" not in line
        m = xt.fullmatch(line)
        if m:
            n_x += 1
            if era != "2023":
                assert m.group(3) == test
    assert n_x > 50
    body = [pre.sub("", l, count=1) for l in lines]
    assert body[0] == f"FLAKEBOT-ITERATION-START test={test} iteration=1 run_id=rid-1"
    assert re.fullmatch(rf"FLAKEBOT-ITERATION-END test={test} iteration=4 rc=[01]", body[-1])
    starts = [b for b in body if b.startswith("START TEST")]
    ends = [b for b in body if b.startswith("END TEST")]
    assert len(starts) == 4
    if era == "2025":
        assert starts[0] == f"START TEST \x1b[1;34m{test}\x1b[0m"
    else:
        assert starts[0] == f"START TEST {test}"
    for e in ends:
        if era in ("2023", "2024"):
            assert e == f"END TEST {test}"
        else:
            assert re.fullmatch(rf"END TEST (\x1b\[1;34m)?{test}(\x1b\[0m)? \(in \d+s\)", e), e
    if era in ("2023", "2024"):
        assert sum(1 for b in body if re.fullmatch(r"real\t\dm\d\d\.\d{3}s", b)) == len(ends)
    assert "local timeo=90" in "\n".join(body)


def test_markers_off():
    lines = _lines(markers=False)
    assert not any("FLAKEBOT-" in l for l in lines)


def test_timeout_shapes_per_era():
    for era in ("2024", "2026"):
        body = "\n".join(_lines(b=Behaviour(1.0, 0.0), n=1, era=era, fmt="plain"))
        assert "WARN: Not all VMs were shut down. Leftovers: 1" in body
        assert "A stop job is running for Monitoring of LVM2 mirrors" in body
        assert ("Backtrace start:" if era == "2024" else "BACKTRACE START: (caught in") in body
        assert "END TEST" not in body
        second = body.rsplit("INFO: Waiting for VMs to shutdown...", 1)[1]
        assert second.count("(( timeo-- > 0 && 1 > 0 ))") == 90  # as in the Jenkins sample
    body = "\n".join(_lines(b=Behaviour(1.0, 0.0), n=1, era="2023", fmt="plain"))
    assert "WARN: Not all VMs" not in body
    assert "vhost/common.sh@508 -- # (( timeo -= 1 ))" in body
    assert "err_clean vm_shutdown_all 508" in body
    assert "========== Backtrace start: ==========" in body


def test_clocks_agree_and_waits_match_the_prefix():
    for t, lines in simulate(NVME, SHA, 20, behaviour=Behaviour(0.2, 0.4), rng_seed=5, fmt="jenkins"):
        waits, start = [], None
        for line in lines:
            if line.endswith("INFO: Waiting for VMs to shutdown..."):
                start = _elapsed(line)
            elif start is not None and (line.endswith("INFO: All VMs successfully shut down")
                                        or line.endswith("WARN: Not all VMs were shut down. Leftovers: 1")):
                waits.append(_elapsed(line) - start)
                start = None
        assert len(waits) == len(t.shutdowns)
        assert all(abs(w - s.waited_s) < 0.003 for w, s in zip(waits, t.shutdowns))  # ms prefix
        # the xtrace wall clock moves with the elapsed prefix
        offsets = set()
        for line in lines:
            m = re.match(r"(\d\d:\d\d:\d\d\.\d{3})   ?(\d\d):(\d\d):(\d\d) ", line)
            if m:
                wall = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + int(m.group(4))
                offsets.add(round((wall - _elapsed(line)) % 86400) % 86400)
        assert len(offsets) <= 2, offsets  # same second, give or take the boundary


def test_midnight_wraps_xtrace_clock_not_elapsed():
    midnight = dt.datetime(2024, 9, 3, tzinfo=dt.timezone.utc).timestamp()
    clock = SimClock(elapsed=3600.0, wall0=midnight - 3600 - 30)
    lines = list(console_lines(NVME, SHA, 1, behaviour=sim.HEALTHY, rng_seed=1, fmt="gha", clock=clock))
    assert lines[0].startswith("2024-09-02T23:59:30")
    assert lines[-1].startswith("2024-09-03T00:")
    walls = [m.group(1) for l in lines if (m := re.search(r"Z  (\d\d):\d\d:\d\d ", l))]
    assert walls[0] == "23" and walls[-1] == "00"
    clock = SimClock(elapsed=3600.0, wall0=midnight - 3600 - 30)
    jl = list(console_lines(NVME, SHA, 1, behaviour=sim.HEALTHY, rng_seed=1, fmt="jenkins", clock=clock))
    assert jl[0].startswith("01:00:00") and _elapsed(jl[-1]) > 3600 + 30


# ------------------------------------------------------------------ Scenario


def test_behaviour_validates():
    with pytest.raises(ValueError):
        Behaviour(0.7, 0.5)
    with pytest.raises(ValueError):
        Behaviour(-0.1, 0.0)


def test_by_culprit():
    commits = ["a", "b", "c", "d"]
    bad, good = Behaviour(0.2, 0.3), Behaviour(0.01, 0.02)
    s = Scenario.by_culprit(commits, "c", good, bad)
    assert [s.behaviour(NVME, c) for c in commits] == [good, good, bad, bad]
    s = Scenario.by_culprit(commits, "c", good, bad, tests=[NVME])
    assert s.behaviour(BLK, "d") == good and s.behaviour(NVME, "d") == bad
    s = Scenario.by_culprit(commits, None, good, bad)
    assert {s.behaviour(NVME, c) for c in commits} == {good}
    assert s.behaviour(NVME, "zzz") == good  # outside the range: the old side
    s = Scenario.by_culprit([Commit(c) for c in commits], Commit("b"), good, bad, unknown="error")
    assert s.behaviour(NVME, "b") == bad and s.behaviour(NVME, "a") == good
    with pytest.raises(KeyError):
        s.behaviour(NVME, "zzz")
    with pytest.raises(ValueError):
        Scenario.by_culprit(commits, "x", good, bad)


NS = "rpc_cmd nvmf_subsystem_remove_ns nqn.2019-07.io.spdk:cnode1 1\n"
LISTENER = "rpc_cmd nvmf_subsystem_remove_listener nqn.2019-07.io.spdk:cnode1 -t vfiouser -a /var/run/vfio-user -s 0\n"


def test_nvme_script_rule():
    assert sim.nvme_script_is_healthy("x\n" + NS + LISTENER)
    assert not sim.nvme_script_is_healthy("x\n" + LISTENER)
    assert not sim.nvme_script_is_healthy(LISTENER + NS)
    assert not sim.nvme_script_is_healthy("# " + NS + LISTENER)
    assert sim.nvme_script_is_healthy("vm_shutdown_all\n")


def test_from_tree_on_a_git_repo(tmp_path):
    git = pytest.importorskip("git")
    repo = git.Repo.init(tmp_path)
    script = tmp_path / sim.NVME_SCRIPT
    script.parent.mkdir(parents=True)
    shas = []
    for body in ("vm_shutdown_all\n" + NS + LISTENER + "vm_shutdown_all\n",  # healthy
                 "vm_shutdown_all\n" + NS + LISTENER + "vm_shutdown_all\n# tweak\n",  # healthy
                 "vm_shutdown_all\n" + LISTENER + "vm_shutdown_all\n# tweak\n"):  # remove_ns deleted
        script.write_text(body)
        repo.index.add([sim.NVME_SCRIPT])
        shas.append(repo.index.commit("step", author=git.Actor("t", "t@x"), committer=git.Actor("t", "t@x")).hexsha)

    def show(sha, path):
        try:
            return repo.git.show(f"{sha}:{path}")
        except git.GitCommandError:
            return None

    prone = Behaviour(0.15, 0.30)
    healthy = Behaviour(0.0, 0.01, p_fail=0.01)
    s = Scenario.from_tree(show, healthy=healthy, prone=prone)
    assert [s.behaviour(NVME, c) for c in shas] == [healthy, healthy, prone]
    assert {s.behaviour(t, c) for t in (BLK, SCSI) for c in shas} == {healthy}
    s2 = Scenario.from_repo(str(tmp_path))
    assert s2.behaviour(NVME, shas[2]) == Behaviour(0.15, 0.30)
    assert s2.behaviour(NVME, shas[0]) == sim.HEALTHY
    assert s2.behaviour(NVME, "0" * 40).p_fail == 1.0  # no script there: the test cannot run
    # ... and the host says so before running anything (the host script's infra line)
    assert s2.cannot_test("0" * 40).reason == f"no {sim.NVME_SCRIPT} at this commit"
    assert s2.cannot_test(shas[0]) is None and s2.cannot_test("0" * 40, (BLK,)) is None


# ------------------------------------------------------------------ CLI


def test_cli(capsys):
    assert sim.main(["--outcome", "timeout", "--rc"]) == 1
    out = capsys.readouterr().out
    assert "WARN: Not all VMs were shut down" in out and "FLAKEBOT-" not in out
    assert sim.main(["--outcome", "slow", "--rc", "--markers", "--test", BLK]) == 0
    out = capsys.readouterr().out
    assert "FLAKEBOT-ITERATION-END test=vfio_user_virtio_blk_restart_vm iteration=1 rc=0" in out


# ------------------------------------------------------------------ SimExecutor


def _req(run_id, commit=SHA, tests=(NVME,), n=3):
    return RunRequest(run_id, commit, tuple(tests), n)


def test_executor_basics():
    ex = SimExecutor(Scenario.constant(Behaviour(0.2, 0.3)), hosts=2, seed=1, build_minutes=10, run_minutes=2)
    assert ex.slots() == 2
    h1 = ex.submit(_req("r1"))
    st = ex.poll(h1)
    assert st.state is BuildState.DONE and st.host == "sim-host-1" and st.url == "sim://sim-host-1/r1"
    assert st.host_minutes == 10 + 3 * 2
    truth = ex.truth(h1)
    assert st.rc == (1 if any(t.rc for t in truth) else 0)
    lines = list(ex.console(h1))
    assert lines == list(ex.console(h1))  # stable
    assert sum("FLAKEBOT-ITERATION-END" in l for l in lines) == 3
    # least loaded host next; then back to host 1 which has the commit built
    h2 = ex.submit(_req("r2", tests=(NVME, BLK), n=2))
    assert ex.poll(h2).host == "sim-host-2" and ex.poll(h2).host_minutes == 10 + 4 * 2
    h3 = ex.submit(_req("r3"))
    assert ex.poll(h3).host == "sim-host-1" and ex.poll(h3).host_minutes == 3 * 2
    assert ex.submit(_req("r1")) == "r1"  # idempotent
    assert ex.host_minutes == {"sim-host-1": 16 + 6, "sim-host-2": 18}
    body = list(ex.console(h2))
    assert [l.split("test=")[1].split()[0] for l in body if "ITERATION-START" in l] == [NVME, NVME, BLK, BLK]


def test_executor_deterministic_and_truthful():
    mk = lambda: SimExecutor(Scenario.constant(Behaviour(0.3, 0.3, 0.1)), seed=4)  # noqa: E731
    a, b = mk(), mk()
    for ex in (a, b):
        ex.submit(_req("x", n=10))
    assert list(a.console("x")) == list(b.console("x"))
    rcs = [int(l.rsplit("rc=", 1)[1]) for l in a.console("x") if "ITERATION-END" in l]
    assert rcs == [t.rc for t in a.truth("x")]


def test_executor_infra_faults():
    ex = SimExecutor(Scenario.constant(), seed=2)
    ex.fail_next()
    h = ex.submit(_req("bad", n=4))
    st = ex.poll(h)
    assert st.state is BuildState.LOST and st.rc is None
    assert ex.truth(h)[-1].outcome is Outcome.INFRA
    lines = list(ex.console(h))
    assert sum("ITERATION-START" in l for l in lines) == sum("ITERATION-END" in l for l in lines) + 1
    assert ex.poll(ex.submit(_req("good"))).state is BuildState.DONE
    hooked = SimExecutor(Scenario.constant(), infra_hook=lambda r: r.run_id.endswith("!"))
    assert hooked.poll(hooked.submit(_req("a!"))).state is BuildState.LOST
    assert hooked.poll(hooked.submit(_req("b"))).state is BuildState.DONE
    p = SimExecutor(Scenario.constant(Behaviour(0.0, 0.0, p_infra=1.0)))
    assert p.poll(p.submit(_req("c"))).state is BuildState.LOST


def test_executor_polling_and_cancel():
    ex = SimExecutor(polls_until_done=2)
    h = ex.submit(_req("p"))
    assert [ex.poll(h).state for _ in range(3)] == [BuildState.QUEUED, BuildState.RUNNING, BuildState.DONE]
    h2 = ex.submit(_req("q"))
    ex.poll(h2)
    ex.cancel(h2)
    assert ex.poll(h2).state is BuildState.LOST and list(ex.console(h2)) == []
    with pytest.raises(ExecutorError):
        ex.poll("nope")
    with pytest.raises(ExecutorError):
        ex.submit(_req("z", tests=("no_such_test",)))


def test_executor_scenario_from_commit():
    commits = ["1" * 40, "2" * 40]
    ex = SimExecutor(Scenario.by_culprit(commits, commits[1], sim.HEALTHY, Behaviour(1.0, 0.0)), seed=3)
    assert ex.poll(ex.submit(_req("g", commit=commits[0]))).rc == 0
    assert ex.poll(ex.submit(_req("b", commit=commits[1]))).rc == 1


def test_make_executor_registry(tmp_path):
    ex = make_executor("sim", hosts=3, fmt="gha", era="2026")
    assert isinstance(ex, SimExecutor) and ex.slots() == 3
    with pytest.raises(ExecutorError, match="unknown executor 'nope'"):
        make_executor("nope")
    with pytest.raises(ExecutorError, match="bad options"):
        make_executor("sim", no_such_option=1)
    assert set(EXECUTORS) >= {"sim", "local"}
    register("sim2", "flakebot.executors.sim:SimExecutor")
    try:
        assert make_executor("sim2").name == "sim"
    finally:
        EXECUTORS.pop("sim2")


# ------------------------------------------------------------------ round trip through the parser

KINDS_BEHAVIOUR = Behaviour(0.25, 0.25, 0.15)


@pytest.mark.parametrize("fmt", sim.FORMATS)
@pytest.mark.parametrize("era", sim.ERAS)
@pytest.mark.parametrize("markers", [True, False])
def test_parser_recovers_the_truth(fmt, era, markers):
    spdklog = pytest.importorskip("flakebot.evidence.spdklog")
    for test in KNOWN_TESTS:
        sims = list(simulate(test, SHA, 12, behaviour=KINDS_BEHAVIOUR, rng_seed=21, fmt=fmt, era=era,
                             markers=markers, run_id="rt"))
        truth = [t for t, _ in sims]
        assert {t.kind for t in truth} >= {"pass", "hang"}, "seed should give a mix"
        lines = [l for _, ls in sims for l in ls]
        runs = list(spdklog.parse_lines(iter(lines), slow_threshold_s=60.0))
        assert len(runs) == len(truth), (fmt, era, markers, test)
        for run, t in zip(runs, truth):
            where = (fmt, era, markers, test, t.iteration, t.kind)
            assert run.test == test, where
            assert run.outcome is t.outcome, where
            if markers:
                assert run.iteration == t.iteration and run.rc == t.rc, where
            if t.outcome is Outcome.INFRA:
                continue
            assert [s.call_site for s in run.shutdowns] == [s.call_site for s in t.shutdowns], where
            for got, want in zip(run.shutdowns, t.shutdowns):
                assert got.timed_out == want.timed_out, where
                assert got.limit_s == want.limit_s, where
                assert got.waited_s is not None and abs(got.waited_s - want.waited_s) <= 1.0, (where, got, want)


def test_parser_sees_an_infra_cut():
    spdklog = pytest.importorskip("flakebot.evidence.spdklog")
    sims = list(simulate(NVME, SHA, 4, behaviour=sim.HEALTHY, rng_seed=1, infra_at=3, run_id="cut"))
    runs = list(spdklog.parse_lines(iter(l for _, ls in sims for l in ls), slow_threshold_s=60.0))
    assert [r.outcome for r in runs] == [Outcome.PASS, Outcome.PASS, Outcome.INFRA]
