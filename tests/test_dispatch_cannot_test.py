"""A host that cannot test a commit says so in one `flakebot: infra: <reason>`
line and exits 3: its runs are stored as infra carrying that reason (marked
"cannot test here"), never as failures; a lost host keeps its own reason."""
from __future__ import annotations

import stat

from flakebot.campaigns.dispatch import CANNOT_TEST, Dispatcher, is_cannot_test
from flakebot.executors.local import LocalExecutor
from flakebot.executors.sim import SimExecutor
from flakebot.model import RunRequest
from flakebot.demo.hosts import CannotTest, Scenario
from flakebot.store import Store

SHA = "ab" * 20
TEST = "vfio_user_nvme_restart_vm"


def _ingest(tmp_path, executor, iterations=3):
    with Store(tmp_path / "f.db") as store:
        d = Dispatcher(store, executor, slow_threshold_s=60.0)
        item = d.submit(RunRequest("r1", SHA, (TEST,), iterations))
        if hasattr(executor, "wait"):  # the script has ended before the first poll
            executor.wait(item.handle)
        while d.in_flight:
            d.collect(wait=True)
        return store.runs()


def test_sim_host_that_cannot_test_leaves_infra_runs_with_its_reason(tmp_path):
    why = CannotTest("no NVMe drive for this commit's test (get_nvme_bdfs found none)")
    runs = _ingest(tmp_path, SimExecutor(Scenario.constant().with_untestable({SHA: why}), hosts=1))
    assert [r["outcome"] for r in runs] == ["infra"] * 3
    assert {r["reason"] for r in runs} == {CANNOT_TEST + why.reason}


def test_lost_host_is_not_cannot_test(tmp_path):
    ex = SimExecutor(Scenario.constant(), hosts=1)
    ex.fail_next()
    runs = _ingest(tmp_path, ex)
    infra = [r for r in runs if r["outcome"] == "infra"]
    assert infra and not any(is_cannot_test(r["reason"]) for r in infra)


def test_local_host_script_exit_3_with_its_line(tmp_path):
    job = tmp_path / "job.sh"
    job.write_text("#!/bin/sh\necho 'checking out'\n"
                   "printf 'flakebot: infra: %s\\n' 'VFIO_QEMU_BIN is upstream QEMU; this commit needs the "
                   "vfio-user fork' >&2\nexit 3\n")
    job.chmod(job.stat().st_mode | stat.S_IXUSR)
    runs = _ingest(tmp_path, LocalExecutor(str(job), spdk_dir=str(tmp_path), workdir=tmp_path / "w"), iterations=2)
    assert [r["outcome"] for r in runs] == ["infra"] * 2
    assert {r["reason"] for r in runs} == {
        CANNOT_TEST + "VFIO_QEMU_BIN is upstream QEMU; this commit needs the vfio-user fork"}
