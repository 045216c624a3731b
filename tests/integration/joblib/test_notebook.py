"""Issue 24 in real kernels (jupyter_client, ipykernel): a config-loaded extension's
warning reaches the first cell that calls joblib, `%batt` reads leased of all there is,
and loops of short calls run on one kept pool."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisord_batt import paths
from tests.helpers import CALM, REPO, wait_until
from tests.support.daemons import DaemonHandle

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from tests.support.pools import Kernel, loky_workers

CALL = "out = joblib.Parallel(n_jobs=-1)(joblib.delayed(abs)(-x) for x in range(8))\n"


def _env(socket: Path, ipythondir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env[paths.SOCKET_ENV] = str(socket)
    for name in (paths.FALLBACK_ENV, paths.KEEP_ALIVE_ENV, "SUPERVISORD_BATT_NOTEBOOK"):
        env.pop(name, None)
    if ipythondir is not None:  # the operator's line (docs/NOTEBOOKS.md), in a private profile
        profile = ipythondir / "profile_default"
        profile.mkdir(parents=True)
        (profile / "ipython_kernel_config.py").write_text(
            'c.InteractiveShellApp.extensions.append("supervisord_batt")\n'
        )
        env["IPYTHONDIR"] = str(ipythondir)
    return env


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "not reachable" in line]


def test_issue_24_config_loaded_with_the_daemon_down_the_first_joblib_cell_warns_once(
    tmp_path: Path,
) -> None:
    k = Kernel(_env(tmp_path / "no-daemon.sock", tmp_path / "ipython"))
    try:
        assert k.run("import joblib\nx = 1\n") == ""  # a cell that calls no joblib
        first = k.run(CALL + CALL + "print(out)")
        (warning,) = _warnings(first)  # one, though the cell made two calls
        assert warning.startswith("supervisord-batt: daemon not reachable at ")
        assert "joblib runs sequential until it answers" in warning
        assert "[0, 1, 2, 3, 4, 5, 6, 7]" in first
        assert _warnings(k.run(CALL)) == []  # not per call
    finally:
        k.close()


def test_issue_24_load_ext_in_a_cell_is_the_warning_itself(tmp_path: Path) -> None:
    k = Kernel(_env(tmp_path / "no-daemon.sock"))
    try:
        (loaded,) = _warnings(k.run("%load_ext supervisord_batt"))
        assert "until it answers Parallel calls run sequential" in loaded
        assert _warnings(k.run("import joblib\n" + CALL)) == []  # said already
    finally:
        k.close()


def test_issue_24_batt_reads_workers_leased_of_all_there_are(
    daemon: Callable[..., DaemonHandle],
) -> None:
    """A budget of 2 workers, both leased by the kernel's call: `2/2`, as documented (the
    second number was what a new lease could get now: `2/0`)."""
    budget = {"cpu_cap": 2, "max_per_lease": 2, "memory_per_slot": "1MiB", "pressure": CALM}
    budget |= {"reserve_tasks": 0, "reserve_percent": 0}
    d = daemon({"budget": budget})
    k = Kernel(_env(d.socket))
    try:
        pid = int(k.run("import os; print(os.getpid())"))
        k.run("%load_ext supervisord_batt\nimport joblib\n" + CALL)
        (held,) = [x for x in d.status()["leases"] if x["pid"] == pid]
        assert (held["kind"], held["workers"]) == ("process", 2)
        shown = k.run("%batt").splitlines()
        assert f"lease {held['lease']}: process:2" in shown[0], shown
        assert shown[0].endswith("; its pool kept idle for the next call"), shown
        assert shown[-1] == (
            f"daemon: level normal, 2/2 workers leased; this kernel's leases: "
            f"{held['lease']} process:2"
        ), shown
        k.run("%unload_ext supervisord_batt")
        k.run("import supervisord_batt.joblib as b; b.KEEPER.close()")
        wait_until(lambda: d.status()["leases"] == [], timeout=10, what="the lease given back")
        assert k.run("%load_ext supervisord_batt\n%batt").splitlines()[-1] == (
            "daemon: level normal, 0/2 workers leased; this kernel's leases: none"
        )
    finally:
        k.close()


def test_issue_24_a_loop_of_cells_runs_on_one_kept_pool(
    daemon: Callable[..., DaemonHandle], tmp_path: Path
) -> None:
    budget = {"cpu_cap": 2, "memory_per_slot": "1MiB", "pressure": CALM}
    d = daemon({"budget": budget})
    k = Kernel(_env(d.socket, tmp_path / "ipython"))
    try:
        pid = int(k.run("import json, os, joblib; print(os.getpid())"))

        def grants() -> list[tuple[str, int]]:
            return [(e["kind"], e["workers"]) for e in d.events("grant") if e["pid"] == pid]

        at_start = grants()  # the extension's probe at start-up
        ran_on: set[int] = set()
        for _ in range(6):
            out = k.run(
                CALL + "print(json.dumps(joblib.Parallel(n_jobs=-1)("
                "joblib.delayed(os.getpid)() for _ in range(8))))"
            )
            ran_on |= set(json.loads(out))
        workers = loky_workers(pid)
        assert len(workers) == 2 and ran_on <= set(workers)
        assert grants()[len(at_start) :] == [("process", 2)]  # 12 calls, one lease
    finally:
        k.close()


def test_issue_24_a_kernels_joblib_calls_are_not_held_for_a_burst_after_its_probe(
    daemon: Callable[..., DaemonHandle], tmp_path: Path
) -> None:
    """With the burst window on, the extension's probe at load is the kernel's one held
    ask (it waits the hold out before the kernel takes a cell); no one followed it, so
    the kernel's calls, each a new lease here (keep-alive 0, as after an idle pool), get
    their pool at once: the first cell no longer pays the window."""
    budget = {"burst_window": 0.25, "cpu_cap": 2, "memory_per_slot": "1MiB", "pressure": CALM}
    d = daemon({"budget": budget})
    env = _env(d.socket, tmp_path / "ipython")
    env[paths.KEEP_ALIVE_ENV] = "0"
    k = Kernel(env)
    try:
        pid = int(k.run("import os, joblib; print(os.getpid())"))
        for _ in range(2):
            k.run(CALL)
        mine = [(e["event"], e["kind"], e["reason"]) for e in d.events() if e.get("pid") == pid]
        asks = [x[:2] for x in mine if x[0] in ("grant", "deny")]
        assert asks == [("deny", "sequential"), ("grant", "process"), ("grant", "process")], mine
        (held,) = [e for e in d.events("deny") if e["pid"] == pid]
        assert held["reason"] == "burst: the first to ask, others may follow"  # the probe
    finally:
        k.close()
