"""The joblib and notebook tests' budget, the loky workers a process runs, and a real
IPython kernel with a blocking client (`Kernel`)."""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any, cast

import psutil

from tests.helpers import CALM

# a daemon's budget that grants up to 3 workers, whatever the host's load
BUDGET = {
    "cpu_cap": 3,
    "memory_per_slot": "1MiB",
    "reserve_tasks": 0,
    "reserve_percent": 0,
    "max_per_lease": 8,
    "pressure": CALM,
}
CELL_TIMEOUT = 30.0


def loky_workers(pid: int | None = None) -> list[int]:
    """The loky worker processes among the children of `pid` (this process by default)."""
    out = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if any("popen_loky_posix" in part for part in child.cmdline()):
                out.append(child.pid)
    return out


class Kernel:
    """A kernel of this interpreter and a blocking client; every cell's text output.
    (jupyter_client is imported here: a test module skips first when it is missing.)"""

    def __init__(self, env: dict[str, str]) -> None:
        from jupyter_client.manager import KernelManager

        self.km: Any = cast(Any, KernelManager(kernel_name="python3"))
        self.km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=CELL_TIMEOUT)

    def run(self, code: str) -> str:
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        reply = self.kc.execute_interactive(code, timeout=CELL_TIMEOUT, output_hook=hook)
        text = "".join(out)
        assert reply["content"]["status"] == "ok", text
        return text

    def close(self) -> None:
        pid = self.pid()
        tree = []
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                tree = psutil.Process(pid).children(recursive=True)
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
        for proc in tree:  # the kernel's loky workers and trackers, if it left any
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(tree, timeout=10)

    def pid(self) -> int | None:
        proc = getattr(self.km.provisioner, "process", None)
        return None if proc is None else int(proc.pid)
