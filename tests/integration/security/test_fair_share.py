"""Issue 22: a fair share per user, not per lease.

Each peer is a real process of a real user (useradd) holding leases over the real
socket, renewing them as a job would, with a stdlib-only client (a test user cannot run
our interpreter). The budget's CPUs are set by `cpu_cap`, so the host's own count and
load decide nothing; memory and pressure cannot bind either (thread pools, CALM).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests import helpers
from tests.helpers import CALM, drop_to, interpreter_for_others, killing, wait_until

# Holds N leases (16 to a connection, the most one may hold), then renews them all every
# EVERY seconds; prints one JSON line after the acquires and after each round of renews.
# `ack`: each renew says how many workers it runs, following a shrink as the client does
# (and the renew grows it toward its share); `keep`: it never gives a worker back.
HOLD = textwrap.dedent(
    """
    import json, socket, sys, time
    path, mode, kinds = sys.argv[1], sys.argv[5], sys.argv[6].split(",")
    n, want, every = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    def ask(c, msg):
        c[0].sendall(json.dumps(msg).encode() + b"\\n")
        reply = json.loads(c[1].readline())
        if not reply.get("ok"):
            print(json.dumps({"error": reply}), flush=True)
            sys.exit(1)
        return reply
    leases = []
    for i in range(n):
        if i % 16 == 0:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            c = (s, s.makefile("rb"))
        g = ask(c, {"op": "acquire", "want": want, "kinds": kinds, "job": "j%d" % i})
        leases.append([c, g])
    def show(r):
        grants = [g for _, g in leases]
        print(json.dumps({"round": r, "grants": grants}), flush=True)
    show(0)
    r = 0
    while True:
        time.sleep(every)
        r += 1
        for lease in leases:
            c, g = lease
            msg = {"op": "renew", "lease": g["lease"]}
            if mode == "ack" and g["kind"] != "sequential":
                msg["workers_in_use"] = min(g["workers"], g["target"])
            lease[1] = ask(c, msg)
        show(r)
    """
)


class Holder:
    """A HOLD process of a test user, and the lines it printed so far."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.rounds: list[list[dict[str, Any]]] = []  # the grants after each round
        self._buf = b""
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)

    def read(self) -> list[list[dict[str, Any]]]:
        """The rounds printed so far (fails on a refused request or an exit)."""
        assert self.proc.stdout is not None
        with contextlib.suppress(BlockingIOError, TypeError):
            self._buf += self.proc.stdout.read() or b""
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            out = json.loads(line)
            assert "error" not in out, out
            self.rounds.append(out["grants"])
        assert self.proc.poll() is None, f"the holder exited with {self.proc.returncode}"
        return self.rounds

    def workers(self) -> list[int]:
        """Each lease's pool after the last round (0: sequential)."""
        last = self.read()[-1]
        return [0 if g["kind"] == "sequential" else g["workers"] for g in last]


@contextlib.contextmanager
def holding(
    sock: Path,
    user: helpers.TestUser,
    leases: int,
    want: int,
    *,
    mode: str = "ack",
    kinds: str = "thread",
) -> Iterator[Holder]:
    """A user holding `leases` leases that ask for `want` workers of `kinds`, renewed
    every 0.2 s; killed (by pid) at the end."""
    args = [interpreter_for_others(), "-c", HOLD, str(sock), str(leases), str(want), "0.2"]
    args += [mode, kinds]
    proc = subprocess.Popen(args, preexec_fn=drop_to(user), stdout=subprocess.PIPE)
    with killing(proc):
        holder = Holder(proc)
        wait_until(holder.read, timeout=30, what=f"{leases} leases of uid {user.uid}")
        yield holder


def fair_daemon(daemon: Callable[..., Any], users: list[helpers.TestUser], **budget: Any) -> Any:
    d = daemon(
        {
            "daemon": {"socket_mode": "0666", "allowed_uids": [u.uid for u in users]},
            "budget": {"pressure": CALM, "memory_per_slot": "1MiB"} | budget,
        }
    )
    d.workdir.chmod(0o755)  # the socket's directory: others may reach the socket in it
    return d


def root_grant(d: Any, want: int) -> dict[str, Any]:
    with d.client() as c:
        grant: dict[str, Any] = c.request("acquire", want=want, kinds=["thread"])
    assert grant["ok"], grant
    return grant


def test_leases_of_zero_workers_renewed_leave_root_its_pool(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    """The measured attack: one user holding two leases that asked for 0 workers,
    renewed, made every other job on a 2-CPU host, root's included, sequential ("cpu cap:
    2 CPUs, 2 in use"). They ask for nothing, and hold no CPU."""
    user = test_user()
    d = fair_daemon(daemon, [user], cpu_cap=2, lease_ttl="2s")
    with holding(d.socket, user, leases=2, want=0) as zero:
        # renewed past three TTLs: the leases stay, and hold what they did
        wait_until(lambda: len(zero.read()) > 30, timeout=60, what="30 rounds of renews")
        grant = root_grant(d, 2)
        assert (grant["kind"], grant["workers"]) == ("thread", 2), grant
        assert len(zero.read()[-1]) == 2 and zero.workers() == [0, 0]


def test_a_user_with_60_jobs_leaves_one_with_4_an_equal_split(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    """60 jobs of one user against 4 of another on 32 CPUs got 60 shares against 4, so
    the 4 ran sequential. Now each user has 16: the 4 jobs grow to pools of 4 as they
    renew, whatever the 60 do."""
    many, few = test_user(), test_user()
    d = fair_daemon(daemon, [many, few], cpu_cap=32, max_per_lease=8)
    with holding(d.socket, many, leases=60, want=8), holding(d.socket, few, leases=4, want=8) as f:
        wait_until(lambda: f.workers() == [4, 4, 4, 4], timeout=30, what="4 pools of 4")
        grant = root_grant(d, 8)  # a third user: 32 CPUs over 3 is 10, it asks for 8
        assert (grant["kind"], grant["workers"]) == ("thread", 8), grant


def test_pools_never_given_back_hold_no_other_user_below_its_split(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    """A user that took the whole budget first and never acknowledges a shrink keeps its
    pools (the budget cannot take workers back), but they count against its own share:
    another user still gets its half at once, not after the first one's jobs end."""
    first, second = test_user(), test_user()
    d = fair_daemon(daemon, [first, second], cpu_cap=16, max_per_lease=8)
    with holding(d.socket, first, leases=2, want=8, mode="keep") as greedy:
        assert greedy.workers() == [8, 8]
        with holding(d.socket, second, leases=2, want=8) as fair:
            wait_until(lambda: fair.workers() == [4, 4], timeout=30, what="2 pools of 4")
        assert greedy.workers() == [8, 8]


def test_cpu_pressure_one_users_jobs_cause_leaves_another_its_process_pools(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    """60 sequential jobs on 32 CPUs keep CPU pressure high or extreme, and at level high
    no new process pool was granted to anyone: the other user's jobs ran sequential for
    as long as the 60 ran. With cpu_high 0 the level is high whatever the host does; the
    user over its part gets it, the other the level of the other signals (normal)."""
    many, few = test_user(), test_user()
    pressure = {**CALM, "cpu_high": 0}
    d = fair_daemon(daemon, [many, few], cpu_cap=32, max_per_lease=8, pressure=pressure)
    with (
        holding(d.socket, many, leases=40, want=1),
        holding(d.socket, few, leases=1, want=8, kinds="process") as f,
    ):
        wait_until(lambda: f.workers() == [8], timeout=30, what="a process pool of 8")
        assert f.read()[-1][0]["kind"] == "process"
        assert d.status()["level"] == "high"


def test_a_groups_weight_in_the_config_gives_its_users_a_larger_part(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    """budget.group_weights: a user of a group of weight 3 gets 3 parts against another's
    1 (useradd gave each test user a group of its own name); a reload that drops the
    weight splits evenly again, the leases kept."""
    heavy, light = test_user(), test_user()
    d = fair_daemon(
        daemon, [heavy, light], cpu_cap=16, max_per_lease=8, group_weights={heavy.name: 3}
    )
    with holding(d.socket, heavy, leases=2, want=8) as h, holding(d.socket, light, 2, 8) as li:
        wait_until(lambda: (h.workers(), li.workers()) == ([6, 6], [2, 2]), timeout=30)
        config = yaml.safe_load(d.config_path.read_text())
        del config["budget"]["group_weights"]
        d.config_path.write_text(yaml.safe_dump(config))
        with d.client() as c:
            assert c.request("reload")["ok"]
        wait_until(lambda: (h.workers(), li.workers()) == ([4, 4], [4, 4]), timeout=30)
