"""Benchmark flakebot.evidence.spdklog.parse_file against a bare line loop.

    .venv/bin/python benchmarks/parse_bench.py --mb 200

Writes a Jenkins-format log (--prefix: or GitHub Actions, or no prefix, where
only the 1 s xtrace clock is left) of about --mb MB to a temp file, made of
restart-test iterations in the shapes of tests/fixtures/spdk-logs/
(tests/logfixtures.py): per 20
iterations 15 passes, 3 near misses (83 s), 2 timeouts (WARN style), nvme and
virtio_blk alternating. Then, each in a fresh child process (best of --repeat):
  bare:  for line in open(f, 'rb'): pass
  parse: for run in parse_file(f): ...
and prints a markdown table: CPU and wall seconds (CPU time is the figure to
trust on a shared host), MiB/s, ratio, and the parse's peak RSS
(ru_maxrss of the child via resource.getrusage(RUSAGE_CHILDREN); the generator's
memory is in this process and does not count).

    .venv/bin/python benchmarks/parse_bench.py --mb 5 --instructions

--scanner find times the bytes.find line finder that runs where hyperscan is not
installed (same Runs).

counts instructions instead (valgrind --tool=cachegrind, user space, minus the
same child with nothing to do): slow (~50x), so use a few MB, but it does not
move with the load on a shared host the way CPU seconds do.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.logfixtures import LogBuilder  # noqa: E402

PLAN = ["pass"] * 6 + ["slow"] + ["pass"] * 4 + ["timeout"] + ["pass"] * 5 + ["slow", "slow", "timeout"]
TESTS = ["vfio_user_nvme_restart_vm", "vfio_user_virtio_blk_restart_vm"]

BARE = """
import sys, time
t, c = time.perf_counter(), time.process_time()
for line in open(sys.argv[1], 'rb'):
    pass
print(time.perf_counter() - t, time.process_time() - c, 0)
"""

# what BARE and PARSE do besides the loop (start-up, imports): subtracted
BARE_BASE = """
import sys, time
print(0, 0, 0)
"""

PARSE_BASE = """
import sys, time
sys.path.insert(0, sys.argv[2])
import flakebot.evidence.spdklog
from flakebot.evidence.spdklog import parse_file
print(0, 0, 0)
"""

# argv[3] == "find": force the bytes.find scanner (what runs without hyperscan)
PARSE = """
import sys, time
sys.path.insert(0, sys.argv[2])
import flakebot.evidence.spdklog
from flakebot.evidence.spdklog import parse_file
if sys.argv[3] == "find":
    flakebot.evidence.spdklog._HS = False
t, c = time.perf_counter(), time.process_time()
n = 0
for run in parse_file(sys.argv[1]):
    n += 1
print(time.perf_counter() - t, time.process_time() - c, n)
"""


def generate(path: Path, mb: float, prefix: str = "jenkins") -> tuple[int, int]:
    """Write about mb MB; return (bytes, iterations)."""
    target = int(mb * 1024 * 1024)
    b = LogBuilder("2024", prefix)
    n = size = 0
    with open(path, "w", newline="\n") as f:
        while size < target:
            kind = PLAN[n % len(PLAN)]
            test = TESTS[n % len(TESTS)]
            if kind == "pass":
                b.iteration(test, (3.0 + (n % 5) * 0.25, 3.05))
            elif kind == "slow":
                b.iteration(test, (83.2, 3.05))
            else:
                b.iteration(test, (4.05, 0), "timeout")
            chunk = "\n".join(b.lines) + "\n"
            b.lines.clear()
            f.write(chunk)
            size += len(chunk)
            n += 1
    return path.stat().st_size, n


def child(code: str, path: Path, scanner: str = "") -> tuple[float, float, int]:
    """Run code in a child; return (wall seconds, CPU seconds, runs)."""
    out = subprocess.run([sys.executable, "-c", code, str(path), str(ROOT), scanner],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def instructions(code: str, path: Path, scanner: str = "") -> int:
    """User-space instructions of a child running code (valgrind cachegrind)."""
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                          "--cachegrind-out-file=/dev/null", sys.executable, "-c", code,
                          str(path), str(ROOT), scanner], check=True, capture_output=True, text=True).stderr
    for line in out.splitlines():
        if "I   refs:" in line or "I refs:" in line:
            return int(line.split(":")[-1].replace(",", "").strip())
    raise RuntimeError("no instruction count in valgrind output:\n" + out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="write the log here instead of a temp file")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions under valgrind instead of timing")
    ap.add_argument("--prefix", choices=("jenkins", "gha", "plain"), default="jenkins",
                    help="the log's line prefix (plain: none, only the xtrace clock)")
    ap.add_argument("--scanner", choices=("auto", "find"), default="auto",
                    help="find: force the bytes.find line finder (the fallback without hyperscan)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from flakebot.evidence import spdklog_scan
    scanner = "hyperscan" if spdklog_scan.AVAILABLE and args.scanner == "auto" else "bytes.find"
    if args.instructions and not shutil.which("valgrind"):
        ap.error("--instructions needs valgrind")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "bench.log"
        t = time.perf_counter()
        size, iters = generate(path, args.mb, args.prefix)
        gen_s = time.perf_counter() - t
        mb = size / 1024 / 1024
        if args.instructions:
            ib = instructions(BARE, path) - instructions(BARE_BASE, path)
            ip = instructions(PARSE, path, args.scanner) - instructions(PARSE_BASE, path)
            print(f"log: {mb:.1f} MiB, {iters} iterations, prefix {args.prefix}; Python {platform.python_version()}, "
                  f"{platform.machine()}; line finder: {scanner}; valgrind cachegrind, minus the same child "
                  f"without the loop\n")
            print("| loop | instructions (M) | per byte | ratio to bare |")
            print("|---|---:|---:|---:|")
            print(f"| bare `for line in open(f, 'rb'): pass` | {ib / 1e6:.1f} | {ib / size:.1f} | 1.00 |")
            print(f"| `parse_file(f)` | {ip / 1e6:.1f} | {ip / size:.1f} | {ip / ib:.2f} |")
            return
        # parse first: ru_maxrss of children is a running max over all children
        parse = [child(PARSE, path, args.scanner) for _ in range(args.repeat)]
        rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        bare = [child(BARE, path) for _ in range(args.repeat)]
        wb, cb = min(x[0] for x in bare), min(x[1] for x in bare)
        wp, cp = min(x[0] for x in parse), min(x[1] for x in parse)
        runs = parse[0][2]
    print(f"log: {mb:.1f} MiB, {iters} iterations, prefix {args.prefix}, {runs} runs parsed "
          f"(generated in {gen_s:.1f} s); Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; line finder: {scanner}; best of {args.repeat}\n")
    print("| loop | CPU s | wall s | MiB/s (CPU) | ratio to bare (CPU) | ratio (wall) | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| bare `for line in open(f, 'rb'): pass` | {cb:.3f} | {wb:.3f} | {mb / cb:.0f} | 1.00 | 1.00 | |")
    print(f"| `parse_file(f)` | {cp:.3f} | {wp:.3f} | {mb / cp:.0f} | {cp / cb:.2f} | {wp / wb:.2f} "
          f"| {rss_kib / 1024:.1f} MiB |")
    ok = cp / cb <= 2.0 and rss_kib / 1024 <= 64
    print(f"\ntarget (ratio <= 2, RSS <= 64 MiB): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
