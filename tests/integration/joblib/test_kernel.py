"""A real IPython kernel (jupyter_client): after `%load_ext supervisord_batt` an unchanged
`Parallel(n_jobs=-1)` cell leases from the daemon and runs on the granted workers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, wait_until
from tests.support.daemons import DaemonHandle
from tests.support.pools import BUDGET, Kernel, loky_workers

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")


@pytest.fixture
def kernel(daemon: Callable[..., DaemonHandle]) -> Iterator[tuple[Kernel, DaemonHandle]]:
    d = daemon({"budget": BUDGET})
    env = dict(os.environ, PYTHONPATH=str(REPO), SUPERVISORD_BATT_SOCKET=str(d.socket))
    env.pop("SUPERVISORD_BATT_FALLBACK", None)
    env.pop("SUPERVISORD_BATT_NOTEBOOK", None)
    k = Kernel(env)
    try:
        yield k, d
    finally:
        k.close()


def test_load_ext_then_an_unchanged_parallel_cell_leases(
    kernel: tuple[Kernel, DaemonHandle], tmp_path: Path
) -> None:
    k, d = kernel
    pid = int(k.run("import os; pid = os.getpid(); print(pid)"))
    loaded = k.run("%load_ext supervisord_batt")
    want = min(len(os.sched_getaffinity(0)), 3)
    assert loaded.count("\n") == 1 and f"gets process:{want} now" in loaded, loaded

    flag, started = tmp_path / "go", tmp_path / "started"
    started.mkdir()
    # each task says which worker took it, then waits for the flag: once every worker
    # holds one, all of them run tasks (on a busy host a worker still starting found
    # the first one had run all eight)
    k.run(
        "import os, time, joblib\n"
        "def gated(x):\n"
        f"    open(os.path.join({str(started)!r}, str(os.getpid())), 'w').close()\n"
        "    end = time.monotonic() + 30\n"
        f"    while not os.path.exists({str(flag)!r}) and time.monotonic() < end:\n"
        "        time.sleep(0.01)\n"
        "    return x * x, os.getpid()\n"
        "gen = joblib.Parallel(n_jobs=-1, return_as='generator')("
        "joblib.delayed(gated)(x) for x in range(8))\n"
    )
    try:

        def kernel_lease() -> list[dict[str, Any]]:
            return [x for x in d.status()["leases"] if x["pid"] == pid]

        (held,) = wait_until(kernel_lease, timeout=10, what="the kernel's lease")
        assert (held["kind"], held["workers"], held["job"]) == ("process", want, "notebook")
        assert len(loky_workers(pid)) == want
        wait_until(
            lambda: len(list(started.iterdir())) == want, timeout=30, what="a task in each worker"
        )
        shown = k.run("%batt")
        assert f"lease {held['lease']}: process:{want}" in shown, shown
    finally:
        flag.touch()
    out = k.run(
        "out = list(gen); print(len({p for _, p in out} - {os.getpid()}), [r for r, _ in out])"
    )
    assert out.split(None, 1) == [str(want), str([x * x for x in range(8)]) + "\n"], out
    wait_until(lambda: d.status()["leases"] == [], timeout=10, what="the lease given back")
    assert loky_workers(pid) == []
    assert "no lease held now" in k.run("%batt")


def test_opt_out_leaves_joblib_alone(daemon: Callable[..., DaemonHandle]) -> None:
    d = daemon({"budget": BUDGET})
    env = dict(os.environ, PYTHONPATH=str(REPO), SUPERVISORD_BATT_SOCKET=str(d.socket))
    env["SUPERVISORD_BATT_NOTEBOOK"] = "0"
    k = Kernel(env)
    try:
        assert "off" in k.run("%load_ext supervisord_batt")
        backend = k.run(
            "import joblib\n"
            "with joblib.Parallel(n_jobs=2) as p:\n"
            "    print(type(p._backend).__name__)\n"
        )
        assert backend.strip() == "LokyBackend"
        assert [e for e in d.events("grant") if e.get("job") == "notebook"] == []
    finally:
        k.close()


def test_ipython_config_loads_it_for_every_kernel(
    daemon: Callable[..., DaemonHandle], tmp_path: Path
) -> None:
    """The operator's line (docs/NOTEBOOKS.md), here in a private IPYTHONDIR profile: a
    kernel leases with no %load_ext in the notebook."""
    d = daemon({"budget": BUDGET})
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        'c.InteractiveShellApp.extensions.append("supervisord_batt")\n'
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), SUPERVISORD_BATT_SOCKET=str(d.socket))
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    env.pop("SUPERVISORD_BATT_NOTEBOOK", None)
    k = Kernel(env)
    try:
        out = k.run(
            "import os, joblib\n"
            "pids = joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(9))\n"
            "print(os.getpid() in pids)"
        )
        want = min(len(os.sched_getaffinity(0)), 3)
        assert out.strip() == "False"  # ran in the pool's workers
        grants = [e for e in d.events("grant") if e.get("job") == "notebook"]
        assert [(e["kind"], e["workers"]) for e in grants][-1:] == [("process", want)], grants
    finally:
        k.close()
