"""Builder for synthetic SPDK console logs, in the shapes of the samples in
tests/fixtures/spdk-logs/, for tests and the parse benchmark.

    b = LogBuilder(era="2024", prefix="jenkins")
    b.iteration("vfio_user_nvme_restart_vm", waits=(4.0, 83.0))
    text = b.text()

era: "pre2024" (` 14:23:14<TAB>-- vhost/common.sh@408 -- # cmd`),
     "2024"    (` 14:12:40 vfio_user_qemu.<test> -- vhost/common.sh@496 -- # cmd`),
     "2025"    (`+ 14:12:40 vfio_user_qemu.<test> -- test/vhost/common.sh@496: cmd`).
prefix: "jenkins" (elapsed `00:09:03.952  `), "gha" (`2026-09-17T03:25:48.5680391Z `), "plain".
"""
from __future__ import annotations

from typing import Optional, Sequence

SCRIPTS = {
    # test -> (script path under test/, [call line of each vm_shutdown_all])
    "vfio_user_nvme_restart_vm": ("vfio_user/nvme/vfio_user_restart_vm.sh", (36, 54)),
    "vfio_user_virtio_blk_restart_vm": ("vfio_user/virtio/fio_restart_vm.sh", (78, 97)),
    "vfio_user_virtio_scsi_restart_vm": ("vfio_user/virtio/fio_restart_vm.sh", (78, 97)),
}
STARS = "*" * 36


class LogBuilder:
    def __init__(self, era: str = "2024", prefix: str = "jenkins", *, crlf: bool = False,
                 ansi: bool = False, stderr: bool = False, wall0: float = 14 * 3600 + 10 * 60,
                 elapsed0: float = 420.0, day0: int = 17, wrapper: Optional[str] = None):
        assert era in ("pre2024", "2024", "2025") and prefix in ("jenkins", "gha", "plain")
        self.era, self.prefix = era, prefix
        self.crlf, self.ansi, self.stderr = crlf, ansi, stderr
        self.wall0, self.elapsed0, self.day0 = wall0, elapsed0, day0
        self.t = 0.0
        self.lines: list[str] = []
        self.domain = "vfio_user_qemu"
        self._noise = 0
        self.wrapper = wrapper
        if wrapper:
            self.banner("START", wrapper)

    # ------------------------------------------------------------ rendering
    def _prefix(self) -> str:
        if self.prefix == "jenkins":
            ms = int(round((self.elapsed0 + self.t) * 1000))
            return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}  "
        if self.prefix == "gha":
            w = self.wall0 + self.t
            day = self.day0 + int(w // 86400)
            w %= 86400
            hs = int(round(w * 1e7))
            s, frac = divmod(hs, 10 ** 7)
            return f"2026-09-{day:02d}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{frac:07d}Z "
        return ""

    def _wall(self) -> str:
        w = int(self.wall0 + self.t) % 86400
        return f"{w // 3600:02d}:{w // 60 % 60:02d}:{w % 60:02d}"

    def _put(self, body: str) -> None:
        self.lines.append(self._prefix() + body)
        if self.stderr:
            self._noise += 1
            if self._noise % 7 == 0:
                self.lines.append(self._prefix() + "WARN: stderr noise: something odd happened")
            if self._noise % 11 == 0:
                self.lines.append(self._prefix() + "[2026-09-17 03:20:01.1] nvmf.c: 123:*ERROR*: noise from the target")

    def msg(self, text: str) -> None:
        if self.ansi and text.startswith(("INFO:", "WARN:")):
            label, rest = text.split(":", 1)
            text = f"\x1b[0;32m{label}:\x1b[0m{rest}"
        self._put(text)

    def x(self, src: str, line: int, cmd: str, depth: int = 1, test: str = "") -> None:
        """One xtrace line; src is the path under test/ (e.g. vhost/common.sh)."""
        dom = f"{self.domain}.{test}" if test else self.domain
        if self.era == "pre2024":
            self._put(f"{' ' * depth}{self._wall()}\t-- {src}@{line} -- # {cmd}")
        elif self.era == "2024":
            self._put(f"{' ' * depth}{self._wall()} {dom} -- {src}@{line} -- # {cmd}")
        else:
            self._put(f"{'+' * depth} {self._wall()} {dom} -- test/{src}@{line}: {cmd}")

    def adv(self, dt: float) -> None:
        self.t += dt

    def banner(self, what: str, name: str, secs: Optional[float] = None) -> None:
        shown = f"\x1b[1;33m{name}\x1b[0m" if self.ansi else name
        if what == "END" and self.era != "2025":
            self._put("")
            self._put(f"real\t{int(secs or 0) // 60}m{(secs or 0) % 60:06.3f}s")
            self._put("user\t0m4.812s")
            self._put("sys\t0m2.377s")
        self._put(STARS)
        if what == "END" and self.era == "2025":
            self._put(f"END TEST {shown} (in {int(round(secs or 0))}s)")
        else:
            self._put(f"{what} TEST {shown}")
        self._put(STARS)

    def marker(self, what: str, test: str, iteration: int, rc: Optional[int] = None,
               run_id: str = "r1") -> None:
        if what == "START":
            self._put(f"FLAKEBOT-ITERATION-START test={test} iteration={iteration} run_id={run_id}")
        else:
            self._put(f"FLAKEBOT-ITERATION-END test={test} iteration={iteration} rc={rc}")

    # ---------------------------------------------------------------- shapes
    def shutdown(self, test: str, script: str, call_line: int, wait: float, *,
                 outcome: str = "done", limit: int = 90, arg: Optional[int] = None,
                 cut_after: Optional[float] = None) -> None:
        """One vm_shutdown_all call. outcome: done | timeout (WARN, 2024-06+) |
        timeout_old (pre-June 2024: (( timeo -= 1 )) under errexit) | cut."""
        c = "vhost/common.sh"
        self.x(script, call_line, "vm_shutdown_all" + (f" {arg}" if arg else ""), test=test)
        self.adv(0.002)
        old = outcome == "timeout_old"
        if not old:
            self.x(c, 487, f"local timeo={limit} vms vm", test=test)
        self.x(c, 489, "vm_list_all", depth=2, test=test)
        self.x(c, 492, "vm_shutdown 1", test=test)
        self.x(c, 424, "notice 'Shutting down virtual machine /root/vhost_test/vms/1'", test=test)
        self.msg("INFO: Shutting down virtual machine /root/vhost_test/vms/1")
        self.adv(0.3)
        self.msg("Warning: Permanently added '[127.0.0.1]:10100' (ED25519) to the list of known hosts.")
        self.msg("INFO: VM1 is shutting down - wait a while to complete")
        self.msg("INFO: Waiting for VMs to shutdown...")
        t0 = self.t
        if old:
            self.x(c, 495, f"local timeo={limit}", test=test)
        end = t0 + (limit + 1.2 if outcome.startswith("timeout") else wait)
        if cut_after is not None:
            end = t0 + cut_after
        k = 0
        while True:
            nxt = t0 + k
            if nxt >= end - 1e-9 and not (outcome.startswith("timeout") and k <= limit):
                break
            self.t = nxt + 0.001
            if old:
                self.x(c, 496, f"[[ {limit - k} -gt 0 ]]", test=test)
                self.x(c, 499, "vm_is_running 1", test=test)
                self.x(c, 373, "return 0", depth=2, test=test)
                self.x(c, 508, "(( timeo -= 1 ))", test=test)
                if k == limit - 1:
                    break
                self.x(c, 509, "sleep 1", test=test)
            else:
                self.x(c, 496, "(( timeo-- > 0 && 1 > 0 ))", test=test)
                self.x(c, 498, "vm_is_running 1", test=test)
                self.x(c, 373, "return 0", depth=2, test=test)
                self.x(c, 500, "sleep 1", test=test)
                if outcome == "timeout" and k == limit:
                    break
            k += 1
        if outcome == "cut":
            return
        self.t = end
        if outcome == "done":
            self.x(c, 496, "(( timeo-- > 0 && 0 > 0 ))", test=test)
            self.x(c, 503, "(( 0 == 0 ))", test=test)
            self.msg("INFO: All VMs successfully shut down")
            self.x(c, 505, "return 0", test=test)
        elif outcome == "timeout":
            self.x(c, 503, "(( 1 == 0 ))", test=test)
            self.x(c, 508, "warning 'Not all VMs were shut down. Leftovers: 1'", test=test)
            self.msg("WARN: Not all VMs were shut down. Leftovers: 1")
            self.msg("WARN: ================")
            self.msg("WARN: QEMU LOG:")
            self.msg("qemu-system-x86_64: terminating on signal 15 from pid 2371601")
            self.msg("WARN: ================")
            self.x(c, 512, "return 1", test=test)
            self.backtrace(script, call_line)
        else:  # timeout_old
            self.x(script, 1, "err_clean vm_shutdown_all 508", test=test)
            self._put("===========")
            self._put("ERROR: Error on vm_shutdown_all 508")
            self._put("===========")
            self.backtrace(script, call_line, frame="vm_shutdown_all")

    def backtrace(self, script: str, line: int, frame: str = "main") -> None:
        if self.era == "2025":
            self._put(f"========== BACKTRACE START: (caught in {script.rsplit('/', 1)[-1]}) ==========")
        else:
            self._put("========== Backtrace start: ==========")
        self._put("")
        if frame != "main":
            self._put(f"in /var/jenkins/workspace/job/spdk/test/vhost/common.sh:508 -> {frame}([])")
        self._put(f"in /var/jenkins/workspace/job/spdk/test/{script}:{line} -> main([])")
        self._put("========== Backtrace end ==========")

    def iteration(self, test: str = "vfio_user_nvme_restart_vm", waits: Sequence[float] = (4.05, 3.05),
                  outcome: str = "pass", *, marker: Optional[int] = None, rc: Optional[int] = None,
                  limit: int = 90, arg: Optional[int] = None, banner: bool = True) -> None:
        """One iteration. outcome: pass (waits as given; a wait >= 60 makes it slow),
        timeout | timeout_old (the last call times out), fail (an rpc fails after the
        first shutdown), cut (log ends inside the last wait), cut_marker (END marker
        missing, log continues), infra125 (host script gives up with rc 125)."""
        script, calls = SCRIPTS[test]
        if marker is not None:
            self.marker("START", test, marker)
        t_start = self.t
        if outcome == "infra125":
            self.msg("ERROR: VM image /path/to/fedora.qcow2 missing")
            if marker is not None:
                self.marker("END", test, marker, 125 if rc is None else rc)
            self.adv(1.0)
            return
        if banner:
            self.banner("START", test)
        self.x(script, 12, "vhosttestinit", test=test)
        self.msg("INFO: Testing vfio-user restart VM")
        for i, call in enumerate(calls):
            self.adv(20.0)
            self.x(script, call - 8, "vm_run 1", test=test)
            self.msg("INFO: running /root/vhost_test/vms/1/run.sh")
            last = i == len(calls) - 1
            how = "done"
            if last and outcome in ("timeout", "timeout_old", "cut"):
                how = outcome
            self.shutdown(test, script, call, waits[i], outcome=how, limit=limit, arg=arg,
                          cut_after=waits[i] if how == "cut" else None)
            if how == "cut":
                return
            if how.startswith("timeout"):
                break
            if outcome == "fail" and i == 0:
                self.adv(2.0)
                self.x(script, 48, "rpc_cmd nvmf_subsystem_remove_listener nqn.2019-07.io.spdk:cnode1", test=test)
                self._put("===========")
                self._put("ERROR: rpc nvmf_subsystem_remove_listener failed")
                self._put("===========")
                self.backtrace(script, 48)
                break
        else:
            self.adv(0.5)
            self.x(script, calls[-1] + 4, "vhosttestfini", test=test)
            self.msg("INFO: killing vhost (PID 2369876) app")
            self.adv(0.5)
            if banner:
                self.banner("END", test, secs=self.t - t_start)
        if marker is not None and outcome != "cut_marker":
            ok = outcome in ("pass",)
            self.marker("END", test, marker, rc if rc is not None else (0 if ok else 1))
        self.adv(5.0)

    def text(self) -> str:
        lines = list(self.lines)
        if self.wrapper:
            lines += [self._prefix() + STARS, self._prefix() + f"END TEST {self.wrapper}", self._prefix() + STARS]
        nl = "\r\n" if self.crlf else "\n"
        return nl.join(lines) + nl
