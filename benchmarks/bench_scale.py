"""The daemon at size: many instances, many leases. What one request costs, and `status`.

Issue 22's goals: a fresh connection's acquire+release must not cost more because the
daemon supervises 1,000 instances (it took 24-48 ms instead of 1-2 ms: each new
connection read every instance's cgroup.procs), and with 3,000 leases and 1,000
instances root's `status` and `top` must work and answer within 50 ms.

One daemon is started per size (by default 10 instances, then `--instances`), each
supervising that many instances of `sleep` in their own cgroups (when the host can make
them). Against each, measured from this process over raw sockets (so any reply size is
read, whatever the daemon's version):

- `fresh`: connect, acquire, release, close; p50/p99 of the whole, over `--fresh` rounds;
- `heartbeat`: one heartbeat on an open connection (it credits the peer's instance);

then, once `--leases` leases are held (16 per connection, each with a 256-character job
name), the status requests the CLI and `top` send, p50/p99 and reply bytes: the summary;
the one page `top` asks for; every page of the full lists, as `supervisord-batt status`
reads them (the whole, and each request of it: the slowest is a page of 500 leases and
500 instances); and the daemon's RSS.

`--checkout` runs the daemon of another checkout (its own `status` is measured as it
answers: a daemon from before paged status answers the lists in one reply, and refuses
the paged requests, shown as `n/a`). Run it for two checkouts one after the other in
the same session to compare them on the same machine.

    python benchmarks/bench_scale.py [--small 10] [--instances 1000] [--leases 3000]
        [--checkout DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PER_CONNECTION = 16  # the daemon's MAX_LEASES_PER_CONNECTION
JOB = "j" * 256  # the longest job name the protocol accepts (protocol.MAX_CHARS["job"])
PAGE = 500  # the largest page a status request may ask for


class Client:
    """One blocking connection: one request line out, one reply line in (any length)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.buf = b""

    def ask(self, request: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The reply and its size in bytes."""
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line), len(line) + 1

    def close(self) -> None:
        self.sock.close()


def start_daemon(workdir: Path, checkout: Path, instances: int) -> subprocess.Popen[bytes]:
    sock = workdir / "d.sock"
    programs = ""
    if instances:
        programs = (
            "programs:\n  sleeper:\n    command: [sleep, '100000']\n"
            f"    numprocs: {instances}\n    output: {{mode: daemon}}\n"
        )
    (workdir / "c.yaml").write_text(
        f"daemon:\n  socket: {sock}\n  log_format: json\n  log_file: {workdir / 'd.log'}\n"
        "  log_level: info\n  max_connections: 1024\n  sample_interval: 1s\n"
        "  scan_interval: 10s\n"
        "budget:\n  cpu_cap: 64\n  max_per_lease: 8\n"
        "  pressure: {cpu_high: 99, cpu_extreme: 100, memory_high: 99, memory_extreme: 100}\n"
        + programs
    )
    env = dict(os.environ, PYTHONPATH=str(checkout))
    env.pop("SUPERVISORD_BATT_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisord_batt", "run", "-c", str(workdir / "c.yaml")],
        env=env,
        cwd=checkout,  # `-m` puts the working directory first on the path
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            c = Client(sock)
        except OSError:
            time.sleep(0.05)
            continue
        try:
            while time.monotonic() < deadline:
                if running(c) >= instances:
                    return proc
                time.sleep(0.2)
        finally:
            c.close()
    stop(proc)
    raise RuntimeError(f"daemon did not start {instances} instances; see {workdir / 'd.log'}")


def running(c: Client) -> int:
    """Instances RUNNING, from the summary's counts or (a daemon from before the paged
    status) the full list of programs and their instances."""
    reply, _ = c.ask({"op": "status"})
    if "counts" in reply:
        return int(reply["counts"]["states"].get("RUNNING", 0))
    return sum(
        1 for p in reply.get("programs", []) for i in p["instances"] if i["state"] == "RUNNING"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def figures(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples) * 1e3, 3),
        "p99_ms": round(samples[max(0, int(len(samples) * 0.99) - 1)] * 1e3, 3),
    }


def fresh_rounds(path: Path, rounds: int) -> dict[str, float]:
    """connect, acquire, release, close: the cost a new job pays."""
    took = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        c = Client(path)
        grant, _ = c.ask({"op": "acquire", "want": 1, "job": "fresh"})
        c.ask({"op": "release", "lease": grant["lease"]})
        c.close()
        took.append(time.perf_counter() - t0)
    return figures(took)


def heartbeat_rounds(path: Path, rounds: int) -> dict[str, float]:
    c = Client(path)
    took = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            c.ask({"op": "heartbeat", "progress": 1})
            took.append(time.perf_counter() - t0)
    finally:
        c.close()
    return figures(took)


def hold_leases(path: Path, leases: int) -> list[Client]:
    held = []
    for start in range(0, leases, PER_CONNECTION):
        c = Client(path)
        held.append(c)
        for _ in range(min(PER_CONNECTION, leases - start)):
            reply, _ = c.ask({"op": "acquire", "want": 1, "job": JOB})
            if not reply.get("ok"):
                raise RuntimeError(f"acquire refused: {reply}")
    return held


def timed(c: Client, request: dict[str, Any], rounds: int) -> dict[str, Any]:
    took, size = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        reply, size = c.ask(request)
        took.append(time.perf_counter() - t0)
        if not reply.get("ok"):
            return {"n/a": reply["error"]["code"]}
    return {**figures(took), "bytes": size}


def all_pages(c: Client) -> tuple[list[float], int]:
    """Every page of leases and instances, as `supervisord-batt status` reads them: the
    seconds each request took, and the bytes of all."""
    offset: int | None = 0
    took, size = [], 0
    while offset is not None:
        request = {"op": "status", "leases": True, "instances": True, "offset": offset}
        t0 = time.perf_counter()
        reply, n = c.ask({**request, "limit": PAGE})
        took.append(time.perf_counter() - t0)
        size += n
        if not reply.get("ok"):
            raise RuntimeError(reply)
        offset = reply["page"]["next_offset"]
    return took, size


def status_figures(path: Path, rounds: int) -> dict[str, Any]:
    c = Client(path)
    try:
        out: dict[str, Any] = {"summary": timed(c, {"op": "status"}, rounds)}
        top = {"op": "status", "leases": True, "instances": True, "events": True, "limit": 24}
        out["top"] = timed(c, top, rounds)
        if "n/a" in out["top"]:
            return out
        pages = [all_pages(c) for _ in range(max(3, rounds // 10))]
        whole = [sum(took) for took, _ in pages]
        requests, size = len(pages[0][0]), pages[0][1]
        out["every_page"] = {**figures(whole), "requests": requests, "bytes": size}
        # one request of those: the slowest is a full page (500 leases and 500 instances)
        out["one_page"] = {**figures([s for took, _ in pages for s in took]), "bytes": size}
        out["one_page"]["max_ms"] = round(max(max(took) for took, _ in pages) * 1e3, 3)
        return out
    finally:
        c.close()


def measure(checkout: Path, instances: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sbs-", dir="/tmp"))
    t0 = time.monotonic()
    proc = start_daemon(workdir, checkout, instances)
    held: list[Client] = []
    try:
        row: dict[str, Any] = {"instances": instances, "start_s": round(time.monotonic() - t0, 1)}
        path = workdir / "d.sock"
        row["fresh"] = fresh_rounds(path, args.fresh)
        row["heartbeat"] = heartbeat_rounds(path, args.fresh)
        if args.leases:
            rss = rss_mib(proc.pid)
            held = hold_leases(path, args.leases)
            row["leases"] = args.leases
            row["status"] = status_figures(path, args.rounds)
            row["rss_mib"] = {"before_leases": round(rss, 1), "after": round(rss_mib(proc.pid), 1)}
        return row
    finally:
        for c in held:
            c.close()
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def show(row: dict[str, Any]) -> None:
    fresh, beat = row["fresh"], row["heartbeat"]
    print(
        f"{row['instances']:>6} instances (started in {row['start_s']}s): fresh acquire+release "
        f"p50 {fresh['p50_ms']:.2f} ms p99 {fresh['p99_ms']:.2f} ms; heartbeat p50 "
        f"{beat['p50_ms']:.3f} ms p99 {beat['p99_ms']:.3f} ms"
    )
    for name, cell in row.get("status", {}).items():
        if "n/a" in cell:
            print(f"        status {name:<10} n/a ({cell['n/a']})")
            continue
        extra = f"{cell['bytes']} bytes"
        if "requests" in cell:
            extra += f" in {cell['requests']} requests"
        if "max_ms" in cell:
            extra = f"the slowest {cell['max_ms']:.2f} ms"
        print(
            f"        status {name:<10} p50 {cell['p50_ms']:.2f} ms p99 {cell['p99_ms']:.2f} ms, "
            + extra
        )
    if "rss_mib" in row:
        rss = row["rss_mib"]
        print(f"        daemon RSS {rss['before_leases']} MiB, {rss['after']} MiB with the leases")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=10, help="instances of the baseline daemon")
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--leases", type=int, default=3000)
    ap.add_argument("--fresh", type=int, default=200, help="fresh-connection rounds per size")
    ap.add_argument("--rounds", type=int, default=50, help="status requests per kind")
    ap.add_argument("--checkout", type=Path, default=REPO, help="the checkout whose daemon runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(
        f"checkout {args.checkout}: {args.leases} leases, sizes {args.small} and {args.instances}"
    )
    rows = []
    for instances in (args.small, args.instances):
        row = measure(args.checkout.resolve(), instances, args)
        rows.append(row)
        show(row)
    base, big = rows[0]["fresh"]["p50_ms"], rows[-1]["fresh"]["p50_ms"]
    print(
        f"fresh acquire+release p50 at {args.instances} instances / at {args.small}:"
        f" {big / base:.2f}x"
    )
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
