"""The operator's views attached to a running daemon, for the benchmarks that check they
cost it nothing that matters: a Prometheus-like scraper of the metrics endpoint, a
`logs -f` on its log file, and `top` in a real terminal (tmux, 80x24).

    with attached_views(socket, log_file, port, scrape_every=1.0) as views:
        ...  # measure
        views.alive()  # the names of the views still running at the end
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# a scrape as Prometheus 3 makes it: a new connection each time, OpenMetrics asked first
SCRAPER = """
import sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
accept = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
          "application/openmetrics-text;version=0.0.1;q=0.5,"
          "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
          "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
request = urllib.request.Request(url, headers={"Accept": accept})
while True:
    try:
        urllib.request.urlopen(request, timeout=5).read()
    except OSError:
        pass
    time.sleep(every)
"""


ALL = ("scrape", "textfile", "top", "logs")  # the views, each of which can run alone


def metrics_config(port: int, textfile: Path, views: tuple[str, ...] = ALL) -> str:
    """The YAML of a metrics section with the outputs that `views` use on ("" for none)."""
    lines = [f"  listen: 127.0.0.1:{port}\n"] if "scrape" in views else []
    lines += [f"  textfile: {textfile}\n"] if "textfile" in views else []
    return "metrics:\n" + "".join(lines) if lines else ""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Views:
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tmux: str | None = None
    server: str = field(default_factory=lambda: f"sbv-{uuid.uuid4().hex[:8]}")

    def alive(self) -> list[str]:
        names = [name for name, proc in self.procs.items() if proc.poll() is None]
        if self.tmux is not None:
            probe = [self.tmux, "-L", self.server, "has-session"]
            if subprocess.run(probe, check=False, capture_output=True).returncode == 0:
                names.append("top (tmux 80x24)")
        return names


@contextlib.contextmanager
def attached_views(
    socket: Path,
    log_file: Path,
    port: int,
    scrape_every: float = 1.0,
    views_on: tuple[str, ...] = ALL,
) -> Iterator[Views]:
    """Start the views in `views_on` (the textfile is the daemon's own: nothing to start);
    stop each one we started, whatever happens."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    views = Views(tmux=shutil.which("tmux") if "top" in views_on else None)
    if "top" in views_on and views.tmux is None:
        raise RuntimeError("top runs in tmux, and tmux is not installed")
    procs, tmux, server = views.procs, views.tmux, views.server
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        if "scrape" in views_on:
            procs[f"scraper every {scrape_every:g}s"] = subprocess.Popen(
                [sys.executable, "-c", SCRAPER, url, str(scrape_every)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        if "logs" in views_on:
            procs["logs -f"] = subprocess.Popen(
                [sys.executable, "-m", "supervisord_batt", "logs", "-f", "--file", str(log_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        if tmux:
            top = f"{sys.executable} -m supervisord_batt top --socket {socket}"
            subprocess.run(
                [tmux, "-L", server, "new-session", "-d", "-x", "80", "-y", "24", top],
                check=True,
                env=env,
            )
        yield views
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
        if tmux:
            subprocess.run([tmux, "-L", server, "kill-server"], check=False, capture_output=True)
