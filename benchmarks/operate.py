"""Jobs run through the daemon's routine operations: how many are lost, how much slower.

Eight jobs lease 2 workers each and run a fixed amount of work: `--tasks` tasks of 50 ms
of sleep on a thread pool sized by the grant, renewing between tasks (a job that lost its
lease runs sequential: slower, and counted). Two runs of the same jobs, in this order:

- baseline: the daemon is left alone;
- operated: every `--every` seconds the next of reload (SIGHUP), reexec (the CLI), and a
  crash (SIGKILL, then a new daemon started on the same config as systemd would after
  RestartSec) is done to the daemon, until the jobs finish.

Prints per run: jobs finished, leases lost (a job that ran sequential afterwards),
resumes, the jobs' mean wall time, and the operated/baseline ratio. Goal: 0 lost, the
time within 5%. Needs root (the daemon's default checks); the daemon is started here.

    python benchmarks/operate.py [--tasks 400] [--every 5] [--jobs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CALM = {"cpu_high": 99, "cpu_extreme": 100, "memory_high": 99, "memory_extreme": 100}

JOB = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from supervisord_batt.client.leases import acquire
socket, tasks = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
grant = acquire(2, job="bench", socket_path=socket)
lost = 0
done = 0
while done < tasks:
    size = max(1, grant.size)
    with ThreadPoolExecutor(size) as pool:
        list(pool.map(lambda _: time.sleep(0.05), range(size)))
    done += size
    before = grant.degraded
    grant.renew(workers_in_use=0 if grant.kind == "sequential" else grant.size)
    lost += grant.degraded and not before
grant.release()
print(json.dumps({"wall": time.monotonic() - start, "lost": lost}))
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def _start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisord_batt", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    return proc


def _wait_socket(sock: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        ok = subprocess.run(
            [sys.executable, "-m", "supervisord_batt", "status", "--socket", str(sock)],
            check=False,
            capture_output=True,
            env=_env(),
        )
        if ok.returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit("the daemon did not answer")


def _run(workdir: Path, args: argparse.Namespace, operate: bool) -> dict[str, Any]:
    sock = workdir / "s.sock"
    config = workdir / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "daemon": {"socket": str(sock), "log_format": "json"},
                "budget": {"pressure": CALM, "lease_ttl": "20s", "cpu_cap": 2 * args.jobs},
            }
        )
    )
    log = workdir / f"daemon-{'operated' if operate else 'baseline'}.log"
    daemon = _start_daemon(config, log)
    _wait_socket(sock, time.monotonic() + 30)
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, str(sock), str(args.tasks)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        for _ in range(args.jobs)
    ]
    ops = {"reload": 0, "reexec": 0, "crash": 0}
    order = list(ops)
    next_op = time.monotonic() + args.every
    n = 0
    try:
        while any(job.poll() is None for job in jobs):
            time.sleep(0.05)
            if not operate or time.monotonic() < next_op:
                continue
            op = order[n % len(order)]
            n += 1
            if op == "reload":
                daemon.send_signal(signal.SIGHUP)
            elif op == "reexec":
                subprocess.run(
                    [sys.executable, "-m", "supervisord_batt", "reexec", "--socket", str(sock)],
                    capture_output=True,
                    env=_env(),
                    check=True,
                )
            else:
                daemon.kill()
                daemon.wait()
                daemon = _start_daemon(config, log)  # as systemd's Restart=on-failure
            ops[op] += 1
            next_op = time.monotonic() + args.every
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        for job in jobs:
            if job.poll() is None:
                job.kill()
    results = []
    for job in jobs:
        out, _ = job.communicate()
        line = out.decode().strip().splitlines()
        results.append(json.loads(line[-1]) if job.returncode == 0 and line else None)
    resumed = sum('"lease_resumed"' in line for line in log.read_text().splitlines())
    finished = [r for r in results if r is not None]
    return {
        "finished": len(finished),
        "lost": sum(r["lost"] for r in finished) + len(results) - len(finished),
        "resumed": resumed,
        "wall": sum(r["wall"] for r in finished) / max(1, len(finished)),
        "ops": ops,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sbt-op-", dir="/tmp"))
    try:
        base = _run(workdir, args, operate=False)
        operated = _run(workdir, args, operate=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'run':10} {'finished':>8} {'lost':>5} {'resumed':>8} {'mean wall s':>12}  ops")
    for name, r in (("baseline", base), ("operated", operated)):
        ops = ", ".join(f"{k} {v}" for k, v in r["ops"].items())
        print(
            f"{name:10} {r['finished']:>8} {r['lost']:>5} {r['resumed']:>8} "
            f"{r['wall']:>12.2f}  {ops}"
        )
    print(f"operated/baseline wall time: {operated['wall'] / base['wall']:.3f} (goal <= 1.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
